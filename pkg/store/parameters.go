package store

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Parameter is one cached value.
type Parameter struct {
	DeviceID  string
	Path      string
	Value     string
	Type      string // TR-106 name, "" unknown
	Writable  int16  // 0 unknown, 1 read-only, 2 read-write, 3 write-only
	UpdatedAt time.Time
}

// UpsertParameters stores learned values in one statement. For the same
// (device, path) only the newest (UpdatedAt) wins, in the batch and
// against the table, so replays and reordering are harmless; an unknown
// type or writability never overwrites a known one. A value observed
// before a deletion that covers its path (DeleteParameterSubtreesAt,
// ForgetDeviceState) is not stored: it was read before the delete and
// must not outlive it, however late it arrives. Values learned from
// events go through ApplyObservations instead, in the events' transaction.
//
// One narrow row per (device, path) rather than a JSONB document per
// device (issue 5 §3): a Get result or value change rewrites only the rows
// it carries, where a document would be rewritten and re-toasted whole
// (~500 values) every time, and reads are ranges of the primary key (a
// device's subtree, a few paths of a page of devices). The cost is size.
// BenchmarkParameterCache100kx500 (paramcache_bench_test.go), 100k devices
// x 500 parameters on a shared 2-core VM: 7.2 GB (heap 4.7, key 2.5),
// 155 bytes a parameter; p50/p95 2.4/3.6 ms for 100 values of one device
// here, 1.9/2.9 ms for an Inform of 25 through ApplyObservations, 0.3/0.8
// ms for a Device.WiFi. subtree, 62/74 ms for 2 paths of 500 devices.
func (s *Store) UpsertParameters(ctx context.Context, ps []Parameter) error {
	sql, args := upsertParametersStatement(ps)
	if sql == "" {
		return nil
	}
	if _, err := s.pool.Exec(ctx, sql, args...); err != nil {
		return fmt.Errorf("store: upsert parameters: %w", err)
	}
	return nil
}

// upsertParametersStatement merges ps (newest per device and path) into one
// unnest statement; "" when there is nothing to write.
func upsertParametersStatement(ps []Parameter) (string, []any) {
	if len(ps) == 0 {
		return "", nil
	}
	type key struct{ d, p string }
	latest := make(map[key]Parameter, len(ps))
	for _, p := range ps {
		// The last line against texts PostgreSQL cannot hold (sanitize.go).
		p.Path, p.Value, p.Type = storable(p.Path), storable(p.Value), storable(p.Type)
		k := key{p.DeviceID, p.Path}
		cur, ok := latest[k]
		if !ok {
			latest[k] = p
			continue
		}
		newer, other := p, cur
		if p.UpdatedAt.Before(cur.UpdatedAt) {
			newer, other = cur, p
		}
		// Within a batch too, unknown type or writability takes the known one.
		if newer.Type == "" {
			newer.Type = other.Type
		}
		if newer.Writable == 0 {
			newer.Writable = other.Writable
		}
		latest[k] = newer
	}
	keys := make([]key, 0, len(latest))
	for k := range latest {
		keys = append(keys, k)
	}
	// A stable order keeps concurrent batches from deadlocking on row locks.
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].d != keys[j].d {
			return keys[i].d < keys[j].d
		}
		return keys[i].p < keys[j].p
	})
	var dev, path, val, typ []string
	var wr []int16
	var at []time.Time
	for _, k := range keys {
		p := latest[k]
		dev, path, val, typ = append(dev, p.DeviceID), append(path, p.Path), append(val, p.Value), append(typ, p.Type)
		wr, at = append(wr, p.Writable), append(at, p.UpdatedAt)
	}
	return upsertParametersSQL, []any{dev, path, val, typ, wr, at}
}

// upsertParametersSQL also copies each value it stores of a path in
// parameter_search_paths into device_parameter_search (0100): from the
// rows the upsert returns, so the copy holds exactly what the cache does,
// and in the same statement, so it costs no round trip. An Inform with no
// such path pays for the empty join only.
const upsertParametersSQL = `WITH stored AS (
		INSERT INTO device_parameters AS c (device_id, path, value, type, writable, updated_at)
		SELECT u.d, u.p, u.v, u.t, u.w, u.a
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::smallint[], $6::timestamptz[]) AS u(d, p, v, t, w, a)
		WHERE EXISTS (SELECT 1 FROM devices WHERE id = u.d)
			AND NOT EXISTS (SELECT 1 FROM device_parameter_tombstones t
				WHERE t.device_id = u.d AND starts_with(u.p, t.prefix) AND t.deleted_at > u.a)
		ON CONFLICT (device_id, path) DO UPDATE SET
			value = excluded.value,
			type = CASE WHEN excluded.type <> '' THEN excluded.type ELSE c.type END,
			writable = CASE WHEN excluded.writable <> 0 THEN excluded.writable ELSE c.writable END,
			updated_at = excluded.updated_at
		WHERE c.updated_at <= excluded.updated_at
		RETURNING c.device_id, c.path, c.value)
	INSERT INTO device_parameter_search AS s (device_id, path, value)
		SELECT st.device_id, st.path, st.value FROM stored st JOIN parameter_search_paths sp ON sp.path = st.path
		ON CONFLICT (device_id, path) DO UPDATE SET value = excluded.value
		WHERE s.value <> excluded.value`

// ParameterFilter selects cached parameters of one device.
type ParameterFilter struct {
	DeviceID string
	// Prefix: a partial path ("Device.WiFi.") or a full one; "" for all.
	Prefix string
	// After is the cursor: the last path of the previous page.
	After string
	Limit int
}

// FindParameters returns one page of a device's cached parameters ordered
// by path, and the next page's cursor ("" on the last).
func (s *Store) FindParameters(ctx context.Context, f ParameterFilter) ([]Parameter, string, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = MaxPageSize
	}
	limit = min(limit, MaxPageSize)
	// A partial path ("….") is a subtree, a full path one parameter.
	match, pattern := "path LIKE $2", likeEscape(f.Prefix)+"%"
	if f.Prefix != "" && !strings.HasSuffix(f.Prefix, ".") {
		match, pattern = "path = $2", f.Prefix
	}
	rows, err := s.pool.Query(ctx, `SELECT device_id, path, value, type, writable, updated_at FROM device_parameters
		WHERE device_id = $1 AND `+match+` AND path > $3 ORDER BY path LIMIT $4`,
		f.DeviceID, pattern, f.After, limit+1)
	if err != nil {
		return nil, "", fmt.Errorf("store: find parameters: %w", err)
	}
	defer rows.Close()
	var out []Parameter
	for rows.Next() {
		var p Parameter
		if err := rows.Scan(&p.DeviceID, &p.Path, &p.Value, &p.Type, &p.Writable, &p.UpdatedAt); err != nil {
			return nil, "", err
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, "", err
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		next = EncodeCursor(out[limit-1].Path)
	}
	return out, next, nil
}
