package store

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/duet-dm/duet/pkg/devicemodel"
)

// Observation is what one device event tells the registry.
type Observation struct {
	EventID   string
	Kind      string
	Time      time.Time
	StreamSeq uint64
	Payload   []byte
	// Device carries the identity facts the event knew; empty fields are
	// unknown and never overwrite known ones. ID and Protocol are required.
	Device devicemodel.Device
	// Online is the state the event implies (false only for "offline").
	Online bool
	// Passive: the event is about the device but did not come from it (a
	// connection request Duet sent): it goes to the history only and
	// leaves last_seen, online and the facts alone.
	Passive bool
	// Params are the values the event taught (inform parameters, value
	// changes, Get results); they are cached in the same transaction.
	Params []Parameter
	// SkipHistory: the event is not stored in device_events (a routine
	// kind kept for no time); it still updates the registry.
	SkipHistory bool
	// CountsAsInform: the event is one of the device's Informs (CWMP
	// Inform, USP Periodic!), counted in informs_total / last_inform_at.
	CountsAsInform bool
}

// deviceUpdate is the merge of every observation of one device in a batch.
type deviceUpdate struct {
	d         devicemodel.Device
	firstSeen time.Time
	lastSeen  time.Time
	factsAt   time.Time
	online    bool
	onlineAt  time.Time
	reachAt   time.Time
}

// ApplyObservations records a batch of events in one transaction and two
// statements, whatever the batch size: the events go to device_events
// (ignoring IDs already stored), and the registry is upserted with one row
// per device, merged here first (ON CONFLICT cannot touch a row twice in
// one statement).
//
// It is idempotent: applying the same batch twice, or an older event after
// a newer one, changes nothing. Facts, online state and reachability only
// move forward in event time.
func (s *Store) ApplyObservations(ctx context.Context, obs []Observation) error {
	if len(obs) == 0 {
		return nil
	}
	obs = sanitizeObservations(obs)
	// Merge per device in event-time order.
	sorted := make([]Observation, len(obs))
	copy(sorted, obs)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Time.Before(sorted[j].Time) })
	byID := map[string]*deviceUpdate{}
	var order []string
	for _, o := range sorted {
		if err := devicemodel.ValidateDeviceID(o.Device.ID); err != nil {
			return err
		}
		if o.Device.Protocol != devicemodel.ProtocolCWMP && o.Device.Protocol != devicemodel.ProtocolUSP {
			return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "device %s: unknown protocol %q", o.Device.ID, o.Device.Protocol)
		}
		if o.Passive {
			continue
		}
		u, ok := byID[o.Device.ID]
		if !ok {
			u = &deviceUpdate{d: devicemodel.Device{ID: o.Device.ID, Protocol: o.Device.Protocol}, firstSeen: o.Time}
			byID[o.Device.ID] = u
			order = append(order, o.Device.ID)
		}
		u.lastSeen = o.Time
		u.online = o.Online
		u.onlineAt = o.Time
		if mergeFacts(&u.d, o.Device) {
			u.factsAt = o.Time
		}
		if mergeReach(&u.d, o.Device) {
			u.reachAt = o.Time
		}
	}
	cols := struct {
		id, protocol, manufacturer, oui, productClass, serial, model, sw, hw, prov, dm, transport, address, crURL []string
		firstSeen, lastSeen, factsAt, onlineAt, reachAt                                                           []time.Time
		online                                                                                                    []bool
	}{}
	for _, id := range order {
		u := byID[id]
		cols.id = append(cols.id, u.d.ID)
		cols.protocol = append(cols.protocol, string(u.d.Protocol))
		cols.manufacturer = append(cols.manufacturer, u.d.Manufacturer)
		cols.oui = append(cols.oui, u.d.OUI)
		cols.productClass = append(cols.productClass, u.d.ProductClass)
		cols.serial = append(cols.serial, u.d.SerialNumber)
		cols.model = append(cols.model, u.d.ModelName)
		cols.sw = append(cols.sw, u.d.SoftwareVersion)
		cols.hw = append(cols.hw, u.d.HardwareVersion)
		cols.prov = append(cols.prov, u.d.ProvisioningCode)
		cols.dm = append(cols.dm, u.d.DataModel)
		cols.transport = append(cols.transport, u.d.Transport)
		cols.address = append(cols.address, u.d.Address)
		cols.crURL = append(cols.crURL, u.d.ConnectionRequestURL)
		cols.firstSeen = append(cols.firstSeen, u.firstSeen)
		cols.lastSeen = append(cols.lastSeen, u.lastSeen)
		// A zero time never wins the "newer than" comparisons below.
		cols.factsAt = append(cols.factsAt, orEpoch(u.factsAt))
		cols.reachAt = append(cols.reachAt, orEpoch(u.reachAt))
		cols.onlineAt = append(cols.onlineAt, u.onlineAt)
		cols.online = append(cols.online, u.online)
	}
	evID := make([]string, 0, len(obs))
	evDev := make([]string, 0, len(obs))
	evKind := make([]string, 0, len(obs))
	evTime := make([]time.Time, 0, len(obs))
	evSeq := make([]int64, 0, len(obs))
	evPayload := make([][]byte, 0, len(obs))
	var infDev []string
	var infAt []time.Time
	for _, o := range obs {
		if o.CountsAsInform && !o.Passive {
			infDev, infAt = append(infDev, o.Device.ID), append(infAt, o.Time)
		}
		if o.SkipHistory {
			continue
		}
		evID = append(evID, o.EventID)
		evDev = append(evDev, o.Device.ID)
		evKind = append(evKind, o.Kind)
		evTime = append(evTime, o.Time)
		evSeq = append(evSeq, int64(o.StreamSeq))
		evPayload = append(evPayload, o.Payload)
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		b.Queue(`INSERT INTO device_events (id, device_id, kind, time, stream_seq, payload)
			SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::bigint[], $6::bytea[])
			ON CONFLICT (id) DO NOTHING`, evID, evDev, evKind, evTime, evSeq, evPayload)
		if len(cols.id) > 0 {
			b.Queue(upsertDevicesSQL,
				cols.id, cols.protocol, cols.manufacturer, cols.oui, cols.productClass, cols.serial, cols.model,
				cols.sw, cols.hw, cols.prov, cols.dm, cols.transport, cols.address, cols.crURL,
				cols.firstSeen, cols.lastSeen, cols.factsAt, cols.onlineAt, cols.reachAt, cols.online)
		}
		if len(infDev) > 0 {
			b.Queue(countInformsSQL, infDev, infAt)
		}
		// After the registry upsert in the same batch: a new device's row
		// exists when its parameters are written.
		var ps []Parameter
		for _, o := range obs {
			ps = append(ps, o.Params...)
		}
		if sql, args := upsertParametersStatement(ps); sql != "" {
			b.Queue(sql, args...)
		}
		return tx.SendBatch(ctx, b).Close()
	})
}

// upsertDevicesSQL inserts or merges one row per device. Each group of
// columns moves forward only when its event time is not older than what the
// row already holds, so replays and reordering are harmless.
const upsertDevicesSQL = `
INSERT INTO devices AS d (id, protocol, manufacturer, oui, product_class, serial_number, model_name,
	software_version, hardware_version, provisioning_code, data_model, transport, address,
	connection_request_url, first_seen, last_seen, facts_updated_at, online_changed_at, online)
SELECT u.id, u.protocol, u.manufacturer, u.oui, u.product_class, u.serial, u.model, u.sw, u.hw, u.prov, u.dm,
	u.transport, u.address, u.cr_url, u.first_seen, u.last_seen, u.facts_at, u.online_at, u.online
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
	$9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::timestamptz[],
	$16::timestamptz[], $17::timestamptz[], $18::timestamptz[], $19::timestamptz[], $20::bool[])
	AS u(id, protocol, manufacturer, oui, product_class, serial, model, sw, hw, prov, dm, transport, address,
	cr_url, first_seen, last_seen, facts_at, online_at, reach_at, online)
ON CONFLICT (id) DO UPDATE SET
	manufacturer      = CASE WHEN excluded.facts_updated_at >= d.facts_updated_at AND excluded.manufacturer <> '' THEN excluded.manufacturer ELSE d.manufacturer END,
	oui               = CASE WHEN excluded.facts_updated_at >= d.facts_updated_at AND excluded.oui <> '' THEN excluded.oui ELSE d.oui END,
	product_class     = CASE WHEN excluded.facts_updated_at >= d.facts_updated_at AND excluded.product_class <> '' THEN excluded.product_class ELSE d.product_class END,
	serial_number     = CASE WHEN excluded.facts_updated_at >= d.facts_updated_at AND excluded.serial_number <> '' THEN excluded.serial_number ELSE d.serial_number END,
	model_name        = CASE WHEN excluded.facts_updated_at >= d.facts_updated_at AND excluded.model_name <> '' THEN excluded.model_name ELSE d.model_name END,
	software_version  = CASE WHEN excluded.facts_updated_at >= d.facts_updated_at AND excluded.software_version <> '' THEN excluded.software_version ELSE d.software_version END,
	hardware_version  = CASE WHEN excluded.facts_updated_at >= d.facts_updated_at AND excluded.hardware_version <> '' THEN excluded.hardware_version ELSE d.hardware_version END,
	provisioning_code = CASE WHEN excluded.facts_updated_at >= d.facts_updated_at AND excluded.provisioning_code <> '' THEN excluded.provisioning_code ELSE d.provisioning_code END,
	data_model        = CASE WHEN excluded.facts_updated_at >= d.facts_updated_at AND excluded.data_model <> '' THEN excluded.data_model ELSE d.data_model END,
	facts_updated_at  = GREATEST(d.facts_updated_at, excluded.facts_updated_at),
	transport         = CASE WHEN excluded.last_seen >= d.last_seen AND excluded.transport <> '' THEN excluded.transport ELSE d.transport END,
	address           = CASE WHEN excluded.last_seen >= d.last_seen AND excluded.address <> '' THEN excluded.address ELSE d.address END,
	connection_request_url = CASE WHEN excluded.last_seen >= d.last_seen AND excluded.connection_request_url <> '' THEN excluded.connection_request_url ELSE d.connection_request_url END,
	online            = CASE WHEN excluded.online_changed_at >= d.online_changed_at THEN excluded.online ELSE d.online END,
	online_changed_at = GREATEST(d.online_changed_at, excluded.online_changed_at),
	first_seen        = LEAST(d.first_seen, excluded.first_seen),
	last_seen         = GREATEST(d.last_seen, excluded.last_seen)`

// countInformsSQL counts a batch's Informs on their devices. With no row
// per Inform to de-duplicate on, an Inform counts only if it is newer
// than the last one counted: a redelivered batch (or an older Inform
// applied late) changes nothing.
const countInformsSQL = `
UPDATE devices d SET informs_total = d.informs_total + x.n, last_inform_at = x.last
FROM (SELECT u.dev, count(*) AS n, max(u.at) AS last
	FROM unnest($1::text[], $2::timestamptz[]) AS u(dev, at)
	JOIN devices d2 ON d2.id = u.dev
	WHERE d2.last_inform_at IS NULL OR u.at > d2.last_inform_at
	GROUP BY u.dev) x
WHERE d.id = x.dev`

var epoch = time.Unix(0, 0).UTC()

func orEpoch(t time.Time) time.Time {
	if t.IsZero() {
		return epoch
	}
	return t
}

// mergeFacts copies the non-empty identity facts of src into dst and
// reports whether src had any.
func mergeFacts(dst *devicemodel.Device, src devicemodel.Device) bool {
	any := false
	set := func(d *string, s string) {
		if s != "" {
			*d = s
			any = true
		}
	}
	set(&dst.Manufacturer, src.Manufacturer)
	set(&dst.OUI, src.OUI)
	set(&dst.ProductClass, src.ProductClass)
	set(&dst.SerialNumber, src.SerialNumber)
	set(&dst.ModelName, src.ModelName)
	set(&dst.SoftwareVersion, src.SoftwareVersion)
	set(&dst.HardwareVersion, src.HardwareVersion)
	set(&dst.ProvisioningCode, src.ProvisioningCode)
	set(&dst.DataModel, src.DataModel)
	return any
}

func mergeReach(dst *devicemodel.Device, src devicemodel.Device) bool {
	any := false
	set := func(d *string, s string) {
		if s != "" {
			*d = s
			any = true
		}
	}
	set(&dst.Transport, src.Transport)
	set(&dst.Address, src.Address)
	set(&dst.ConnectionRequestURL, src.ConnectionRequestURL)
	return any
}

// DeviceFilter selects devices for FindDevices. Empty fields do not filter.
type DeviceFilter struct {
	Protocol        devicemodel.Protocol
	Online          *bool
	Manufacturer    string
	ProductClass    string
	SoftwareVersion string
	// LastSeenAfter / LastSeenBefore bound last_seen (inclusive / exclusive).
	LastSeenAfter, LastSeenBefore time.Time
	// Tag: devices carrying this operator tag (device_tags).
	Tag string
	// Query: devices whose ID, serial number, manufacturer, OUI, product
	// class, model name or software version contains it, ignoring case
	// (CheckQuery validates it).
	Query string
	// Params: devices whose cached parameters meet every condition.
	Params []ParamCondition
	// IDs: only these devices (a selection made in the console).
	IDs []string
	// Count, when set, receives the number of devices matching the
	// filters (one more query).
	Count *int64
	// Sort orders FindDevices (ScanDevices is always by ID); default ID
	// ascending.
	Sort DeviceSort
	// After is the cursor: the last ID of the previous page.
	After string
	// AfterKey is, under a Sort other than ID, the previous page's last
	// sort key (DecodeDeviceCursor gives both).
	AfterKey string
	// Limit of the page; default 100.
	Limit int
}

// MaxPageSize bounds a page of FindDevices.
const MaxPageSize = 1000

// EncodeCursor and DecodeCursor make the page cursor opaque to clients.
func EncodeCursor(lastID string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(lastID))
}

// DecodeCursor reverses EncodeCursor.
func DecodeCursor(c string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || len(b) == 0 {
		return "", devicemodel.Errorf(devicemodel.CodeInvalidArgument, "malformed cursor")
	}
	return string(b), nil
}

const deviceColumns = `id, protocol, manufacturer, oui, product_class, serial_number, model_name,
	software_version, hardware_version, provisioning_code, data_model, first_seen, last_seen, online,
	transport, address, connection_request_url, rebooting_task <> '', informs_total, last_inform_at`

func scanDevice(row pgx.Row) (devicemodel.Device, error) {
	var d devicemodel.Device
	var p string
	var lastInform *time.Time
	err := row.Scan(&d.ID, &p, &d.Manufacturer, &d.OUI, &d.ProductClass, &d.SerialNumber, &d.ModelName,
		&d.SoftwareVersion, &d.HardwareVersion, &d.ProvisioningCode, &d.DataModel, &d.FirstSeen, &d.LastSeen,
		&d.Online, &d.Transport, &d.Address, &d.ConnectionRequestURL, &d.Rebooting, &d.InformsTotal, &lastInform)
	d.Protocol = devicemodel.Protocol(p)
	if lastInform != nil {
		d.LastInformAt = *lastInform
	}
	return d, err
}

// deviceConditions turns f's filters (not its cursor, limit, sort or
// count) into WHERE conditions numbered after args. 0006_search.sql lists
// the index serving each; a param condition on a path of indexed
// (Store.indexedPaths: path to partition) uses 0100's.
func deviceConditions(f DeviceFilter, indexed map[string]string, args []any) (where []string, _ []any) {
	add := func(cond string, v any) {
		args = append(args, v)
		where = append(where, fmt.Sprintf(cond, len(args)))
	}
	if f.Protocol != "" {
		add("protocol = $%d", string(f.Protocol))
	}
	if f.Online != nil {
		// A rebooting device is not online whatever its connection says
		// (issue 11 §1): online=true means reachable now.
		if *f.Online {
			add("online = $%d AND rebooting_task = ''", true)
		} else {
			add("(online = $%d OR rebooting_task <> '')", false)
		}
	}
	if f.Manufacturer != "" {
		add("manufacturer = $%d", f.Manufacturer)
	}
	if f.ProductClass != "" {
		add("product_class = $%d", f.ProductClass)
	}
	if f.SoftwareVersion != "" {
		add("software_version = $%d", f.SoftwareVersion)
	}
	if !f.LastSeenAfter.IsZero() {
		add("last_seen >= $%d", f.LastSeenAfter)
	}
	if !f.LastSeenBefore.IsZero() {
		add("last_seen < $%d", f.LastSeenBefore)
	}
	if f.Tag != "" {
		add("id IN (SELECT device_id FROM device_tags WHERE tag = $%d)", f.Tag)
	}
	if f.Query != "" {
		// Lower-cased by PostgreSQL, as the indexed expression is, so both
		// sides fold case the same way whatever the characters.
		add(searchExpr+" LIKE ('%%' || lower($%d::text) || '%%')", likeEscape(f.Query))
	}
	if len(f.IDs) > 0 {
		add("id = ANY($%d)", f.IDs)
	}
	for _, c := range f.Params {
		var cond string
		cond, args = c.sql(args, indexed[c.Path])
		where = append(where, cond)
	}
	return where, args
}

// customPlan makes a search plan with its arguments' values every time.
// A cached prepared statement switches to a generic plan after five runs,
// and a generic plan cannot tell "Model7" (1% of the fleet) from "Up"
// (90%) or use the trigram index well for an unknown pattern: measured on
// 100k devices, a parameter condition went from 70 ms to 600 ms and a rare
// serial from 2 ms to 90 ms (BenchmarkDeviceSearchParams100k). Planning
// each search costs well under a millisecond.
const customPlan = pgx.QueryExecModeExec

// FindDevices returns one page of devices in f.Sort's order (by ID by
// default), and the cursor of the next page ("" when this is the last;
// DecodeDeviceCursor reads it). CodeInvalidArgument for a malformed
// AfterKey.
func (s *Store) FindDevices(ctx context.Context, f DeviceFilter) ([]devicemodel.Device, string, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	if limit > MaxPageSize {
		limit = MaxPageSize
	}
	indexed, err := s.indexedPaths(ctx, f.Params)
	if err != nil {
		return nil, "", err
	}
	where, args := deviceConditions(f, indexed, nil)
	if f.Count != nil {
		// The total ignores the cursor: it is the size of the whole result.
		cq := "SELECT count(*) FROM devices"
		if len(where) > 0 {
			cq += " WHERE " + strings.Join(where, " AND ")
		}
		if err := s.pool.QueryRow(ctx, cq, append([]any{customPlan}, args...)...).Scan(f.Count); err != nil {
			return nil, "", fmt.Errorf("store: count devices: %w", err)
		}
	}
	cond, order, args, err := f.Sort.keysetSQL(f.After, f.AfterKey, args)
	if err != nil {
		return nil, "", err
	}
	if cond != "" {
		where = append(where, cond)
	}
	q := "SELECT " + deviceColumns + " FROM devices"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	args = append(args, limit+1)
	q += fmt.Sprintf(" ORDER BY %s LIMIT $%d", order, len(args))
	rows, err := s.pool.Query(ctx, q, append([]any{customPlan}, args...)...)
	if err != nil {
		return nil, "", fmt.Errorf("store: find devices: %w", err)
	}
	defer rows.Close()
	var out []devicemodel.Device
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, "", err
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, "", err
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		next = EncodeDeviceCursor(f.Sort, out[limit-1])
	}
	return out, next, nil
}

// FindDeviceByID returns one device or a CodeNotFound error.
func (s *Store) FindDeviceByID(ctx context.Context, id string) (devicemodel.Device, error) {
	d, err := scanDevice(s.pool.QueryRow(ctx, "SELECT "+deviceColumns+" FROM devices WHERE id = $1", id))
	if errors.Is(err, pgx.ErrNoRows) {
		return d, devicemodel.Errorf(devicemodel.CodeNotFound, "device %q not found", id)
	}
	if err != nil {
		return d, fmt.Errorf("store: find device: %w", err)
	}
	return d, nil
}

// CountDeviceEvents returns how many events are stored for a device.
func (s *Store) CountDeviceEvents(ctx context.Context, deviceID string) (int, error) {
	var n int
	err := s.pool.QueryRow(ctx, "SELECT count(*) FROM device_events WHERE device_id = $1", deviceID).Scan(&n)
	return n, err
}

// AuditDeviceTags is the audit log's object type for a device's tags; the
// object ID is the device ID.
const AuditDeviceTags = "device_tags"

// deviceTagsJSON is how the audit log records a device's tags.
type deviceTagsJSON struct {
	Tags []string `json:"tags"`
}

// AddDeviceTag tags a device; adding a tag it has changes nothing.
// Returns the device's tags afterwards. A change is recorded in the audit
// log with actor, in the same transaction. Errors: CodeInvalidArgument
// (CheckTag, or no actor), CodeNotFound for an unknown device.
func (s *Store) AddDeviceTag(ctx context.Context, actor, deviceID, tag string) ([]string, error) {
	return s.changeDeviceTag(ctx, actor, deviceID, tag, true)
}

// RemoveDeviceTag removes a tag from a device; removing one it does not
// have changes nothing. Otherwise as AddDeviceTag.
func (s *Store) RemoveDeviceTag(ctx context.Context, actor, deviceID, tag string) ([]string, error) {
	return s.changeDeviceTag(ctx, actor, deviceID, tag, false)
}

func (s *Store) changeDeviceTag(ctx context.Context, actor, deviceID, tag string, add bool) ([]string, error) {
	if err := checkActor(actor); err != nil {
		return nil, err
	}
	if err := CheckTag(tag); err != nil {
		return nil, err
	}
	var after []string
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// Lock the device row: concurrent changes of one device's tags
		// then record before/after states that follow each other.
		var id string
		err := tx.QueryRow(ctx, "SELECT id FROM devices WHERE id = $1 FOR UPDATE", deviceID).Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			return devicemodel.Errorf(devicemodel.CodeNotFound, "device %q not found", deviceID)
		}
		if err != nil {
			return err
		}
		before, err := deviceTags(ctx, tx, deviceID)
		if err != nil {
			return err
		}
		var tag2 pgconn.CommandTag
		if add {
			tag2, err = tx.Exec(ctx, "INSERT INTO device_tags (device_id, tag) VALUES ($1, $2) ON CONFLICT DO NOTHING", deviceID, tag)
		} else {
			tag2, err = tx.Exec(ctx, "DELETE FROM device_tags WHERE device_id = $1 AND tag = $2", deviceID, tag)
		}
		if err != nil {
			return err
		}
		if tag2.RowsAffected() == 0 {
			after = before
			return nil // idempotent: nothing changed, nothing to audit
		}
		if after, err = deviceTags(ctx, tx, deviceID); err != nil {
			return err
		}
		return audit(ctx, tx, actor, AuditUpdate, AuditDeviceTags, deviceID, deviceTagsJSON{before}, deviceTagsJSON{after})
	})
	if err != nil {
		return nil, pgError("change device tags", err)
	}
	return after, nil
}

func deviceTags(ctx context.Context, tx pgx.Tx, deviceID string) ([]string, error) {
	rows, err := tx.Query(ctx, "SELECT tag FROM device_tags WHERE device_id = $1 ORDER BY tag", deviceID)
	if err != nil {
		return nil, err
	}
	tags, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if tags == nil {
		tags = []string{}
	}
	return tags, err
}

// FindTagsOfDevices returns the tags of each listed device that has any,
// sorted, in one query.
func (s *Store) FindTagsOfDevices(ctx context.Context, ids []string) (map[string][]string, error) {
	out := map[string][]string{}
	if len(ids) == 0 {
		return out, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT device_id, array_agg(tag ORDER BY tag) FROM device_tags
		WHERE device_id = ANY($1::text[]) GROUP BY device_id`, ids)
	if err != nil {
		return nil, fmt.Errorf("store: find tags: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var tags []string
		if err := rows.Scan(&id, &tags); err != nil {
			return nil, fmt.Errorf("store: find tags: %w", err)
		}
		out[id] = tags
	}
	return out, rows.Err()
}
