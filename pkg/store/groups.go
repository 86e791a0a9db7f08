package store

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/duet-dm/duet/pkg/devicemodel"
)

// Group is a named CEL filter over device facts. The store keeps the
// filter as text; controller/policy checks it before it gets here.
type Group struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Filter    string    `json:"filter"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Policy is desired state for the devices of a group. Spec is the
// kind-specific document (JSON), validated by the controller.
type Policy struct {
	ID       string          `json:"id"`
	GroupID  string          `json:"group_id"`
	Name     string          `json:"name"`
	Priority int             `json:"priority"`
	Kind     string          `json:"kind"`
	Spec     json.RawMessage `json:"spec"`
	Enabled  bool            `json:"enabled"`
	// Revision grows with every change that can change what the policy
	// wants of a device: its spec, kind or priority, or its group's
	// filter. Statuses name the revision they judged.
	Revision  int       `json:"revision"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// AuditEntry records one change: who (the API token's owner), when, and
// the object before and after (null for a create's before and a delete's
// after).
type AuditEntry struct {
	ID         int64           `json:"id"`
	At         time.Time       `json:"at"`
	Actor      string          `json:"actor"`
	Action     string          `json:"action"`
	ObjectType string          `json:"object_type"`
	ObjectID   string          `json:"object_id"`
	Before     json.RawMessage `json:"before"`
	After      json.RawMessage `json:"after"`
}

// Audit actions and object types.
const (
	AuditCreate = "create"
	AuditUpdate = "update"
	AuditDelete = "delete"

	AuditGroup  = "group"
	AuditPolicy = "policy"
)

// MaxNameLen bounds group and policy names.
const MaxNameLen = 200

func newID(prefix string) string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return fmt.Sprintf("%s_%x", prefix, b)
}

func checkName(what, name string) error {
	if strings.TrimSpace(name) == "" {
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "a %s needs a name", what)
	}
	if len(name) > MaxNameLen {
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s name is longer than %d bytes", what, MaxNameLen)
	}
	return nil
}

func checkActor(actor string) error {
	if actor == "" {
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "a change needs an actor for the audit log")
	}
	return nil
}

// audit writes one audit row inside tx. before/after nil means SQL NULL.
func audit(ctx context.Context, tx pgx.Tx, actor, action, objType, objID string, before, after any) error {
	args, err := auditArgs(actor, action, objType, objID, before, after)
	if err != nil {
		return err
	}
	if _, err = tx.Exec(ctx, auditInsert, args...); err != nil {
		return fmt.Errorf("store: audit: %w", err)
	}
	return nil
}

// auditInsert writes one audit row; auditArgs are its arguments.
const auditInsert = `INSERT INTO audit_log (actor, action, object_type, object_id, before, after)
	VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb)`

func auditArgs(actor, action, objType, objID string, before, after any) ([]any, error) {
	enc := func(v any) ([]byte, error) {
		if v == nil {
			return nil, nil
		}
		return json.Marshal(v)
	}
	b, err := enc(before)
	if err != nil {
		return nil, fmt.Errorf("store: audit: %w", err)
	}
	a, err := enc(after)
	if err != nil {
		return nil, fmt.Errorf("store: audit: %w", err)
	}
	return []any{actor, action, objType, objID, b, a}, nil
}

// pgError maps constraint violations to domain errors.
func pgError(op string, err error) error {
	if err == nil {
		return nil
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "23505": // unique_violation
			return devicemodel.Errorf(devicemodel.CodeConflict, "%s: %s", op, uniqueMessage(pe))
		case "23503": // foreign_key_violation
			return devicemodel.Errorf(devicemodel.CodeConflict, "%s: %s", op, fkMessage(op, pe))
		case "23514": // check_violation
			return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s: %s", op, pe.ConstraintName)
		}
	}
	var de *devicemodel.Error
	if errors.As(err, &de) {
		return err
	}
	return fmt.Errorf("store: %s: %w", op, err)
}

func uniqueMessage(pe *pgconn.PgError) string {
	switch pe.ConstraintName {
	case "groups_name_key":
		return "a group with that name exists"
	case "policies_group_id_name_key":
		return "the group already has a policy with that name"
	}
	return "duplicate " + pe.ConstraintName
}

func fkMessage(op string, pe *pgconn.PgError) string {
	switch pe.ConstraintName {
	case "policies_group_id_fkey":
		// PostgreSQL names the referencing table in both directions; only
		// deleting a group can violate it from the referenced side.
		if op == "delete group" {
			return "the group still has policies; delete them first"
		}
		return "no such group"
	case "device_tags_device_id_fkey":
		return "no such device"
	}
	return "reference " + pe.ConstraintName
}

const groupColumns = "id, name, filter, created_at, updated_at"

func scanGroup(row pgx.Row) (Group, error) {
	var g Group
	err := row.Scan(&g.ID, &g.Name, &g.Filter, &g.CreatedAt, &g.UpdatedAt)
	return g, err
}

// CreateGroup stores a new group and its audit row in one transaction. It
// returns CodeInvalidArgument for a missing name or actor and CodeConflict
// for a name in use.
func (s *Store) CreateGroup(ctx context.Context, actor string, g Group) (Group, error) {
	if err := checkActor(actor); err != nil {
		return Group{}, err
	}
	if err := checkName("group", g.Name); err != nil {
		return Group{}, err
	}
	var out Group
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		out, err = scanGroup(tx.QueryRow(ctx, `INSERT INTO groups (id, name, filter) VALUES ($1, $2, $3)
			RETURNING `+groupColumns, newID("grp"), g.Name, g.Filter))
		if err != nil {
			return err
		}
		return audit(ctx, tx, actor, AuditCreate, AuditGroup, out.ID, nil, out)
	})
	if err != nil {
		return Group{}, pgError("create group", err)
	}
	return out, nil
}

// UpdateGroup replaces a group's name and filter. CodeNotFound if it does
// not exist, CodeConflict for a name in use.
func (s *Store) UpdateGroup(ctx context.Context, actor string, g Group) (Group, error) {
	if err := checkActor(actor); err != nil {
		return Group{}, err
	}
	if err := checkName("group", g.Name); err != nil {
		return Group{}, err
	}
	var out Group
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		before, err := scanGroup(tx.QueryRow(ctx, "SELECT "+groupColumns+" FROM groups WHERE id = $1 FOR UPDATE", g.ID))
		if errors.Is(err, pgx.ErrNoRows) {
			return devicemodel.Errorf(devicemodel.CodeNotFound, "group %q not found", g.ID)
		}
		if err != nil {
			return err
		}
		out, err = scanGroup(tx.QueryRow(ctx, `UPDATE groups SET name = $2, filter = $3, updated_at = now()
			WHERE id = $1 RETURNING `+groupColumns, g.ID, g.Name, g.Filter))
		if err != nil {
			return err
		}
		if out.Filter != before.Filter {
			// Other members: every policy of the group is judged again,
			// and rolled out again in stages.
			rows, err := tx.Query(ctx, "UPDATE policies SET revision = revision + 1, updated_at = now() WHERE group_id = $1 RETURNING id", g.ID)
			if err != nil {
				return err
			}
			ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return err
			}
			if err := restartRollouts(ctx, tx, ids); err != nil {
				return err
			}
		}
		return audit(ctx, tx, actor, AuditUpdate, AuditGroup, out.ID, before, out)
	})
	if err != nil {
		return Group{}, pgError("update group", err)
	}
	return out, nil
}

// DeleteGroup removes a group. CodeNotFound if it does not exist,
// CodeConflict while policies still use it.
func (s *Store) DeleteGroup(ctx context.Context, actor, id string) error {
	if err := checkActor(actor); err != nil {
		return err
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		before, err := scanGroup(tx.QueryRow(ctx, "DELETE FROM groups WHERE id = $1 RETURNING "+groupColumns, id))
		if errors.Is(err, pgx.ErrNoRows) {
			return devicemodel.Errorf(devicemodel.CodeNotFound, "group %q not found", id)
		}
		if err != nil {
			return err
		}
		return audit(ctx, tx, actor, AuditDelete, AuditGroup, id, before, nil)
	})
	return pgError("delete group", err)
}

// FindGroupByID returns one group or CodeNotFound.
func (s *Store) FindGroupByID(ctx context.Context, id string) (Group, error) {
	g, err := scanGroup(s.pool.QueryRow(ctx, "SELECT "+groupColumns+" FROM groups WHERE id = $1", id))
	if errors.Is(err, pgx.ErrNoRows) {
		return g, devicemodel.Errorf(devicemodel.CodeNotFound, "group %q not found", id)
	}
	if err != nil {
		return g, fmt.Errorf("store: find group: %w", err)
	}
	return g, nil
}

// PageFilter pages a list ordered by ID.
type PageFilter struct {
	// After is the last ID of the previous page (DecodeCursor of the
	// client's cursor).
	After string
	// Limit of the page; default 100, at most MaxPageSize.
	Limit int
}

func (f PageFilter) limit() int {
	switch {
	case f.Limit <= 0:
		return 100
	case f.Limit > MaxPageSize:
		return MaxPageSize
	}
	return f.Limit
}

// FindGroups returns one page of groups ordered by ID and the next cursor
// ("" on the last page).
func (s *Store) FindGroups(ctx context.Context, f PageFilter) ([]Group, string, error) {
	limit := f.limit()
	rows, err := s.pool.Query(ctx, "SELECT "+groupColumns+" FROM groups WHERE id > $1 ORDER BY id LIMIT $2", f.After, limit+1)
	if err != nil {
		return nil, "", fmt.Errorf("store: find groups: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Group, error) { return scanGroup(r) })
	if err != nil {
		return nil, "", fmt.Errorf("store: find groups: %w", err)
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		next = EncodeCursor(out[limit-1].ID)
	}
	return out, next, nil
}

const policyColumns = "id, group_id, name, priority, kind, spec, enabled, revision, created_at, updated_at"

func scanPolicy(row pgx.Row) (Policy, error) {
	var p Policy
	var spec []byte
	err := row.Scan(&p.ID, &p.GroupID, &p.Name, &p.Priority, &p.Kind, &spec, &p.Enabled, &p.Revision, &p.CreatedAt, &p.UpdatedAt)
	p.Spec = spec
	return p, err
}

func checkPolicy(p Policy) error {
	if err := checkName("policy", p.Name); err != nil {
		return err
	}
	if p.Kind == "" {
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "a policy needs a kind")
	}
	if len(p.Spec) == 0 || !json.Valid(p.Spec) {
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "a policy's spec must be a JSON document")
	}
	return nil
}

// CreatePolicy stores a new policy and its audit row in one transaction.
// CodeConflict for an unknown group or a name the group already uses.
func (s *Store) CreatePolicy(ctx context.Context, actor string, p Policy) (Policy, error) {
	if err := checkActor(actor); err != nil {
		return Policy{}, err
	}
	if err := checkPolicy(p); err != nil {
		return Policy{}, err
	}
	var out Policy
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		out, err = scanPolicy(tx.QueryRow(ctx, `INSERT INTO policies (id, group_id, name, priority, kind, spec, enabled)
			VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7) RETURNING `+policyColumns,
			newID("pol"), p.GroupID, p.Name, p.Priority, p.Kind, []byte(p.Spec), p.Enabled))
		if err != nil {
			return err
		}
		return audit(ctx, tx, actor, AuditCreate, AuditPolicy, out.ID, nil, out)
	})
	if err != nil {
		return Policy{}, pgError("create policy", err)
	}
	return out, nil
}

// UpdatePolicy replaces a policy's name, priority, kind and spec (not its
// group, nor whether it is enabled: that goes with a rollout, see
// EnablePolicy). A change of what the policy wants bumps its revision, so
// reconciliation judges every member again. CodeNotFound if it does not
// exist.
func (s *Store) UpdatePolicy(ctx context.Context, actor string, p Policy) (Policy, error) {
	if err := checkActor(actor); err != nil {
		return Policy{}, err
	}
	if err := checkPolicy(p); err != nil {
		return Policy{}, err
	}
	var out Policy
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		before, err := scanPolicy(tx.QueryRow(ctx, "SELECT "+policyColumns+" FROM policies WHERE id = $1 FOR UPDATE", p.ID))
		if errors.Is(err, pgx.ErrNoRows) {
			return devicemodel.Errorf(devicemodel.CodeNotFound, "policy %q not found", p.ID)
		}
		if err != nil {
			return err
		}
		out, err = scanPolicy(tx.QueryRow(ctx, `UPDATE policies SET name = $2, priority = $3, kind = $4, spec = $5::jsonb,
			revision = revision + CASE WHEN (priority, kind, spec) IS DISTINCT FROM ($3, $4, $5::jsonb) THEN 1 ELSE 0 END,
			updated_at = now() WHERE id = $1 RETURNING `+policyColumns,
			p.ID, p.Name, p.Priority, p.Kind, []byte(p.Spec)))
		if err != nil {
			return err
		}
		if out.Revision != before.Revision {
			if err := restartRollouts(ctx, tx, []string{out.ID}); err != nil {
				return err
			}
		}
		return audit(ctx, tx, actor, AuditUpdate, AuditPolicy, out.ID, before, out)
	})
	if err != nil {
		return Policy{}, pgError("update policy", err)
	}
	return out, nil
}

// DeletePolicy removes a policy. CodeNotFound if it does not exist.
func (s *Store) DeletePolicy(ctx context.Context, actor, id string) error {
	if err := checkActor(actor); err != nil {
		return err
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// Work the policy queued and no device started goes with it.
		if _, err := tx.Exec(ctx, `UPDATE tasks SET state = 'cancelled', error_code = 'cancelled',
			error_message = 'policy deleted', finished_at = now(), updated_at = now()
			WHERE state = 'queued' AND id IN (SELECT task_id FROM policy_tasks WHERE policy_id = $1)`, id); err != nil {
			return err
		}
		before, err := scanPolicy(tx.QueryRow(ctx, "DELETE FROM policies WHERE id = $1 RETURNING "+policyColumns, id))
		if errors.Is(err, pgx.ErrNoRows) {
			return devicemodel.Errorf(devicemodel.CodeNotFound, "policy %q not found", id)
		}
		if err != nil {
			return err
		}
		return audit(ctx, tx, actor, AuditDelete, AuditPolicy, id, before, nil)
	})
	return pgError("delete policy", err)
}

// FindPolicyByID returns one policy or CodeNotFound.
func (s *Store) FindPolicyByID(ctx context.Context, id string) (Policy, error) {
	p, err := scanPolicy(s.pool.QueryRow(ctx, "SELECT "+policyColumns+" FROM policies WHERE id = $1", id))
	if errors.Is(err, pgx.ErrNoRows) {
		return p, devicemodel.Errorf(devicemodel.CodeNotFound, "policy %q not found", id)
	}
	if err != nil {
		return p, fmt.Errorf("store: find policy: %w", err)
	}
	return p, nil
}

// FindPolicies returns the policies of a group, highest priority first
// (the order in which conflicts are resolved).
func (s *Store) FindPolicies(ctx context.Context, groupID string) ([]Policy, error) {
	rows, err := s.pool.Query(ctx, "SELECT "+policyColumns+" FROM policies WHERE group_id = $1 ORDER BY priority DESC, id", groupID)
	if err != nil {
		return nil, fmt.Errorf("store: find policies: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Policy, error) { return scanPolicy(r) })
	if err != nil {
		return nil, fmt.Errorf("store: find policies: %w", err)
	}
	return out, nil
}

// AuditFilter selects audit entries, newest first. Empty fields do not
// filter.
type AuditFilter struct {
	ObjectType string
	ObjectID   string
	// DeviceID: the entries about one device, its tags, its credentials
	// and its single-device tasks.
	DeviceID string
	// Actor: the entries of one actor ("alice (user)", "name (tok_…)").
	Actor string
	// Since and Until bound the entries' time (inclusive, exclusive);
	// zero is no bound.
	Since, Until time.Time
	// Before is the cursor: entries with a smaller ID than this one.
	Before int64
	Limit  int
}

// FindAudit returns one page of audit entries, newest first, and the
// cursor of the next (older) page, "" on the last.
func (s *Store) FindAudit(ctx context.Context, f AuditFilter) ([]AuditEntry, string, error) {
	limit := PageFilter{Limit: f.Limit}.limit()
	var where []string
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		where = append(where, fmt.Sprintf(cond, len(args)))
	}
	if f.ObjectType != "" {
		add("object_type = $%d", f.ObjectType)
	}
	if f.ObjectID != "" {
		add("object_id = $%d", f.ObjectID)
	}
	if f.DeviceID != "" {
		add(`((object_type IN ('`+AuditDeviceTags+`', '`+AuditDeviceCredentials+`') AND object_id = $%[1]d)
			OR (object_type = '`+AuditTask+`' AND after ->> 'device_id' = $%[1]d))`, f.DeviceID)
	}
	if f.Actor != "" {
		add("actor = $%d", f.Actor)
	}
	if !f.Since.IsZero() {
		add("at >= $%d", f.Since)
	}
	if !f.Until.IsZero() {
		add("at < $%d", f.Until)
	}
	if f.Before > 0 {
		add("id < $%d", f.Before)
	}
	q := "SELECT id, at, actor, action, object_type, object_id, before, after FROM audit_log"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	args = append(args, limit+1)
	q += fmt.Sprintf(" ORDER BY id DESC LIMIT $%d", len(args))
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, "", fmt.Errorf("store: find audit: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (AuditEntry, error) {
		var e AuditEntry
		var b, a []byte
		err := r.Scan(&e.ID, &e.At, &e.Actor, &e.Action, &e.ObjectType, &e.ObjectID, &b, &a)
		e.Before, e.After = b, a
		return e, err
	})
	if err != nil {
		return nil, "", fmt.Errorf("store: find audit: %w", err)
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		next = EncodeCursor(strconv.FormatInt(out[limit-1].ID, 10))
	}
	return out, next, nil
}

// SetDeviceTags replaces a device's tags. CodeConflict for an unknown
// device.
func (s *Store) SetDeviceTags(ctx context.Context, deviceID string, tags []string) error {
	for _, t := range tags {
		if t == "" || len(t) > 128 {
			return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "tag %q: must be 1 to 128 bytes", t)
		}
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "DELETE FROM device_tags WHERE device_id = $1", deviceID); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO device_tags (device_id, tag) SELECT $1, t FROM unnest($2::text[]) AS t
			ON CONFLICT DO NOTHING`, deviceID, tags)
		return err
	})
	return pgError("set device tags", err)
}

// DeviceWithTags is a registry row with its tags, as group filters see it.
type DeviceWithTags struct {
	Device devicemodel.Device
	Tags   []string
}

// ScanDevices returns one keyset page of the registry in ID order, each
// device with its tags, for evaluating group filters in bounded batches:
// devices after f.After, at most f.Limit, narrowed by f's other fields
// (which use the same indexes as FindDevices).
func (s *Store) ScanDevices(ctx context.Context, f DeviceFilter) ([]DeviceWithTags, error) {
	limit := PageFilter{Limit: f.Limit}.limit()
	indexed, err := s.indexedPaths(ctx, f.Params)
	if err != nil {
		return nil, err
	}
	where, args := deviceConditions(f, indexed, []any{f.After})
	where = append(where, "id > $1")
	args = append(args, limit)
	return s.scanDevices(ctx, strings.Join(where, " AND ")+fmt.Sprintf(" ORDER BY id LIMIT $%d", len(args)), args, limit)
}

// DevicesByID returns the listed devices that exist, with their tags, in
// ID order.
func (s *Store) DevicesByID(ctx context.Context, ids []string) ([]DeviceWithTags, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	return s.scanDevices(ctx, "id = ANY($1::text[]) ORDER BY id", []any{ids}, len(ids))
}

func (s *Store) scanDevices(ctx context.Context, where string, args []any, limit int) ([]DeviceWithTags, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+deviceColumns+`,
		COALESCE((SELECT array_agg(t.tag ORDER BY t.tag) FROM device_tags t WHERE t.device_id = devices.id), '{}')
		FROM devices WHERE `+where, args...)
	if err != nil {
		return nil, fmt.Errorf("store: scan devices: %w", err)
	}
	defer rows.Close()
	out := make([]DeviceWithTags, 0, min(limit, 1000))
	for rows.Next() {
		var d devicemodel.Device
		var p string
		var tags []string
		var lastInform *time.Time
		if err := rows.Scan(&d.ID, &p, &d.Manufacturer, &d.OUI, &d.ProductClass, &d.SerialNumber, &d.ModelName,
			&d.SoftwareVersion, &d.HardwareVersion, &d.ProvisioningCode, &d.DataModel, &d.FirstSeen, &d.LastSeen,
			&d.Online, &d.Transport, &d.Address, &d.ConnectionRequestURL, &d.Rebooting, &d.InformsTotal, &lastInform, &tags); err != nil {
			return nil, fmt.Errorf("store: scan devices: %w", err)
		}
		d.Protocol = devicemodel.Protocol(p)
		if lastInform != nil {
			d.LastInformAt = *lastInform
		}
		out = append(out, DeviceWithTags{Device: d, Tags: tags})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: scan devices: %w", err)
	}
	return out, nil
}

// FindParameterValues returns cached parameter values of the given
// devices, by device then path: only the listed paths and every parameter
// under the listed prefixes (subtrees such as "Device.LocalAgent.
// Subscription."), or every cached parameter when all is set. Group
// filters, policy previews and reconciliation call it once per page of
// devices, with the paths their expressions and policies read.
func (s *Store) FindParameterValues(ctx context.Context, deviceIDs, paths []string, all bool, prefixes ...string) (map[string]map[string]string, error) {
	values, _, err := s.findParameterValues(ctx, deviceIDs, paths, all, prefixes, false)
	return values, err
}

// FindParameterValuesAndTypes is FindParameterValues with, for each
// value, its TR-106 type ("" when never learned): reconciliation sets
// values with the type the device reported.
func (s *Store) FindParameterValuesAndTypes(ctx context.Context, deviceIDs, paths []string, all bool, prefixes ...string) (values, types map[string]map[string]string, err error) {
	return s.findParameterValues(ctx, deviceIDs, paths, all, prefixes, true)
}

func (s *Store) findParameterValues(ctx context.Context, deviceIDs, paths []string, all bool, prefixes []string, withTypes bool) (values, types map[string]map[string]string, _ error) {
	values, types = map[string]map[string]string{}, map[string]map[string]string{}
	if len(deviceIDs) == 0 || !all && len(paths) == 0 && len(prefixes) == 0 {
		return values, types, nil
	}
	const cols = "SELECT device_id, path, value, type FROM device_parameters"
	q := cols + " WHERE device_id = ANY($1::text[])"
	args := []any{deviceIDs}
	if !all {
		// Each branch is an index condition on both key columns: an OR
		// of the two, or LIKE ANY, would make PostgreSQL read every
		// cached parameter of every device and filter (500 devices x 500
		// parameters: 250k rows for 1000; BenchmarkParameterCache100kx500).
		var parts []string
		if len(paths) > 0 {
			args = append(args, paths)
			parts = append(parts, cols+" WHERE device_id = ANY($1::text[]) AND path = ANY($2::text[])")
		}
		if len(prefixes) > 0 {
			// path is COLLATE "C" (0004_parameters.sql): a prefix is the
			// range [prefix, prefix + U+10FFFF) of the primary key.
			args = append(args, prefixes)
			parts = append(parts, fmt.Sprintf(`SELECT p.device_id, p.path, p.value, p.type FROM unnest($%d::text[]) AS pre(x),
				LATERAL (`+cols+` WHERE device_id = ANY($1::text[]) AND path >= pre.x AND path < pre.x || chr(1114111)
				AND starts_with(path, pre.x)) AS p`, len(args)))
		}
		// A path under a listed prefix comes twice; the map keeps one.
		q = strings.Join(parts, " UNION ALL ")
	}
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, nil, fmt.Errorf("store: find parameter values: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var d, p, v, t string
		if err := rows.Scan(&d, &p, &v, &t); err != nil {
			return nil, nil, fmt.Errorf("store: find parameter values: %w", err)
		}
		m := values[d]
		if m == nil {
			m = map[string]string{}
			values[d] = m
		}
		m[p] = v
		if withTypes && t != "" {
			tm := types[d]
			if tm == nil {
				tm = map[string]string{}
				types[d] = tm
			}
			tm[p] = t
		}
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("store: find parameter values: %w", err)
	}
	return values, types, nil
}

// likeEscape escapes LIKE's wildcards (and its escape character) in s.
func likeEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, "%", `\%`, "_", `\_`).Replace(s)
}

// restartRollouts sends a changed policy through its rollout again: a
// new revision could misconfigure every member at once, so it is staged
// like the first (batches start over; a paused or stopped rollout stays
// so until resumed; a completed one runs again).
func restartRollouts(ctx context.Context, tx pgx.Tx, policyIDs []string) error {
	if len(policyIDs) == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, `UPDATE rollouts SET batch = 0, batch_started_at = NULL, batch_done_at = NULL,
		state = CASE WHEN state = 'completed' THEN 'running' ELSE state END, updated_at = now()
		WHERE policy_id = ANY($1::text[]) AND state <> 'aborted'`, policyIDs); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, "UPDATE policy_status SET batch = NULL WHERE policy_id = ANY($1::text[])", policyIDs)
	return err
}
