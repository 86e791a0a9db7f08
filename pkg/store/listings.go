package store

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Levels of a table listing (table_listings, migration 0050): how much of
// a table Duet knows to be complete, beyond what happens to be cached.
const (
	// ListingNone: not known to be complete. Something may be cached
	// under the table (one Get of one parameter puts a row there), but
	// an instance missing from the cache may exist on the device.
	ListingNone = 0
	// ListingInstances: every instance is known and cached with its
	// unique keys; other parameters may not be.
	ListingInstances = 1
	// ListingFull: every instance was read with every parameter.
	ListingFull = 2
)

// RecordTableListings records that every path in paths (object paths, a
// table or any ancestor of tables) was listed completely at `at`, with
// level ListingInstances or ListingFull: from a Get of the path with no
// depth limit, a GetInstances of it, or what the device reported of it.
// A listing observed before the one already held changes nothing; rows
// below a path, older than this listing, are dropped (this one covers
// them). A full listing also drops the cached parameters under its paths
// older than `at`: the read did not return them, so the device no longer
// has them (`at` is when the read was sent, before its values were
// cached).
func (s *Store) RecordTableListings(ctx context.Context, deviceID string, paths []string, level int, at time.Time) error {
	if len(paths) == 0 {
		return nil
	}
	if level != ListingInstances && level != ListingFull {
		return fmt.Errorf("store: record table listings: level %d is not a complete listing", level)
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if level == ListingFull {
			// What was cached under a path read whole, before the read,
			// and not refreshed by it, is no longer on the device.
			if _, err := tx.Exec(ctx, `DELETE FROM device_parameters c USING unnest($2::text[]) p(path)
				WHERE c.device_id = $1 AND starts_with(c.path, p.path) AND c.updated_at < $3`, deviceID, paths, at); err != nil {
				return err
			}
		}
		return recordListings(ctx, tx, deviceID, paths, level, at)
	})
	if err != nil {
		return fmt.Errorf("store: record table listings: %w", err)
	}
	return nil
}

// RecordInstanceListing records, from a GetInstances of table answered
// at `at` with every instance under it (nested ones included), that the
// table's instances are known (ListingInstances), when the cache shows
// every one of them (with a unique key, or any parameter read before); it
// reports whether it did. A CWMP GetParameterNames lists instance numbers
// only: an instance Duet never read would be invisible in the cache, so
// such an answer lists nothing. Cached rows of the table's own instances
// that the answer did not list, older than it, are dropped: those
// instances are gone.
func (s *Store) RecordInstanceListing(ctx context.Context, deviceID, table string, instances []string, at time.Time) (bool, error) {
	recorded := false
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var unseen int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM unnest($2::text[]) i WHERE NOT EXISTS
			(SELECT 1 FROM device_parameters c WHERE c.device_id = $1 AND starts_with(c.path, i))`, deviceID, instances).Scan(&unseen); err != nil {
			return err
		}
		if unseen > 0 {
			return nil
		}
		if _, err := tx.Exec(ctx, `DELETE FROM device_parameters c WHERE c.device_id = $1 AND starts_with(c.path, $2)
			AND c.updated_at < $4 AND substr(c.path, length($2) + 1) ~ '^[0-9]+\.'
			AND NOT EXISTS (SELECT 1 FROM unnest($3::text[]) i WHERE starts_with(c.path, i))`, deviceID, table, instances, at); err != nil {
			return err
		}
		if err := recordListings(ctx, tx, deviceID, []string{table}, ListingInstances, at); err != nil {
			return err
		}
		recorded = true
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("store: record instance listing: %w", err)
	}
	return recorded, nil
}

// recordListings writes listing rows for paths at `at`, in tx: older rows
// below them go (these cover them), and an older row of the same path is
// replaced.
func recordListings(ctx context.Context, tx pgx.Tx, deviceID string, paths []string, level int, at time.Time) error {
	if _, err := tx.Exec(ctx, `DELETE FROM table_listings l USING unnest($2::text[]) p(path)
		WHERE l.device_id = $1 AND starts_with(l.table_path, p.path) AND l.table_path <> p.path AND l.listed_at <= $3`,
		deviceID, paths, at); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `INSERT INTO table_listings AS l (device_id, table_path, level, listed_at)
		SELECT $1, p.path, $3, $4 FROM (SELECT DISTINCT unnest($2::text[]) AS path) p
		WHERE EXISTS (SELECT 1 FROM devices WHERE id = $1)
		ON CONFLICT (device_id, table_path) DO UPDATE SET level = excluded.level, listed_at = excluded.listed_at
		WHERE l.listed_at <= excluded.listed_at`, deviceID, paths, level, at)
	return err
}

// CreatedInstance is an instance that appeared on a device (Duet's own Add,
// or a USP ObjectCreation notification).
type CreatedInstance struct {
	// Path is the instance's path, "Device.NAT.PortMapping.3.".
	Path string
	// Cached says the instance is now in the parameter cache (with its
	// unique keys or the parameters it was added with); an instance the
	// cache cannot show makes its table's listing incomplete.
	Cached bool
}

// NoteInstancesCreated keeps one device's listings true when instances
// appear at `at`: a table listed completely before then stays complete
// (ListingInstances: the new instance's other parameters are not known)
// when the instance is cached, and becomes incomplete when it is not. A
// listing newer than `at` already holds the instance and is left alone.
// Policies that read the table since forget it (policy_status.refreshed),
// so they read it again rather than decide on what they read before.
func (s *Store) NoteInstancesCreated(ctx context.Context, deviceID string, insts []CreatedInstance, at time.Time) error {
	var tables []string
	var levels []int16
	for _, in := range insts {
		t, ok := tableOf(in.Path)
		if !ok {
			continue
		}
		lv := int16(ListingInstances)
		if !in.Cached {
			lv = ListingNone
		}
		tables, levels = append(tables, t), append(levels, lv)
	}
	if len(tables) == 0 {
		return nil
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// Each table takes the lowest level its instances give it, capped
		// by the most specific listing covering it, if that one is
		// complete and older than the creation.
		if _, err := tx.Exec(ctx, `INSERT INTO table_listings AS l (device_id, table_path, level, listed_at)
			SELECT $1, n.t, LEAST(min(n.lv), min(c.level)), $4
			FROM unnest($2::text[], $3::smallint[]) n(t, lv)
			CROSS JOIN LATERAL (SELECT level, listed_at FROM table_listings
				WHERE device_id = $1 AND starts_with(n.t, table_path)
				ORDER BY length(table_path) DESC LIMIT 1) c
			WHERE c.level > 0 AND c.listed_at < $4
			GROUP BY n.t
			ON CONFLICT (device_id, table_path) DO UPDATE SET level = LEAST(l.level, excluded.level), listed_at = excluded.listed_at
			WHERE l.listed_at < excluded.listed_at`, deviceID, tables, levels, at); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE policy_status SET refreshed = (SELECT coalesce(array_agg(r), '{}') FROM unnest(refreshed) r
				WHERE r <> ALL($2::text[]))
			WHERE device_id = $1 AND refreshed && $2::text[]`, deviceID, tables)
		return err
	})
	if err != nil {
		return fmt.Errorf("store: note created instances: %w", err)
	}
	return nil
}

// DropTableListings forgets one device's listings of tables under the
// given object paths (instances it deleted: their tables are gone, and a
// new instance with the same number must be read anew).
func (s *Store) DropTableListings(ctx context.Context, deviceID string, objPaths []string) error {
	if len(objPaths) == 0 {
		return nil
	}
	if _, err := s.pool.Exec(ctx, `DELETE FROM table_listings l USING unnest($2::text[]) p(path)
		WHERE l.device_id = $1 AND starts_with(l.table_path, p.path)`, deviceID, objPaths); err != nil {
		return fmt.Errorf("store: drop table listings: %w", err)
	}
	return nil
}

// TableListing is one listed path of a device: its level and when it was
// listed (the time of the observation).
type TableListing struct {
	Level    int
	ListedAt time.Time
}

// UnlistTables records that one device's paths are no longer known to
// be complete as of `at` (the device answered a read of them with an
// error): a level-0 row for each overrides a listing of an ancestor, and
// older rows below them go.
func (s *Store) UnlistTables(ctx context.Context, deviceID string, paths []string, at time.Time) error {
	if len(paths) == 0 {
		return nil
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM table_listings l USING unnest($2::text[]) p(path)
			WHERE l.device_id = $1 AND starts_with(l.table_path, p.path) AND l.table_path <> p.path AND l.listed_at <= $3`,
			deviceID, paths, at); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO table_listings AS l (device_id, table_path, level, listed_at)
			SELECT $1, p.path, 0, $3 FROM (SELECT DISTINCT unnest($2::text[]) AS path) p
			WHERE EXISTS (SELECT 1 FROM devices WHERE id = $1)
			ON CONFLICT (device_id, table_path) DO UPDATE SET level = 0, listed_at = excluded.listed_at
			WHERE l.listed_at <= excluded.listed_at`, deviceID, paths, at)
		return err
	})
	if err != nil {
		return fmt.Errorf("store: unlist tables: %w", err)
	}
	return nil
}

// FindTableListings returns, for each of the devices, the listings that
// cover any of the tables: device ID -> listed path -> listing. A table's
// listing is its most specific covering path's (see policy.Listings).
func (s *Store) FindTableListings(ctx context.Context, deviceIDs, tables []string) (map[string]map[string]TableListing, error) {
	out := map[string]map[string]TableListing{}
	if len(deviceIDs) == 0 || len(tables) == 0 {
		return out, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT device_id, table_path, level, listed_at FROM table_listings l
		WHERE device_id = ANY($1::text[]) AND EXISTS (SELECT 1 FROM unnest($2::text[]) t WHERE starts_with(t, l.table_path))`,
		deviceIDs, tables)
	if err != nil {
		return nil, fmt.Errorf("store: find table listings: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var d, p string
		var lv int16
		var at time.Time
		if err := rows.Scan(&d, &p, &lv, &at); err != nil {
			return nil, fmt.Errorf("store: find table listings: %w", err)
		}
		if out[d] == nil {
			out[d] = map[string]TableListing{}
		}
		out[d][p] = TableListing{Level: int(lv), ListedAt: at}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: find table listings: %w", err)
	}
	return out, nil
}

// forgetTableListings drops, in ForgetDeviceState's transaction, the
// listings of bootstrapped devices taken before their bootstrap: a
// factory-reset device's tables are not what they were.
func forgetTableListings(ctx context.Context, tx pgx.Tx, ids []string, ats []time.Time) error {
	_, err := tx.Exec(ctx, `DELETE FROM table_listings l USING unnest($1::text[], $2::timestamptz[]) b(d, at)
		WHERE l.device_id = b.d AND l.listed_at < b.at`, ids, ats)
	return err
}

// tableOf is the table an instance path belongs to: "Device.X.3." ->
// "Device.X.".
func tableOf(inst string) (string, bool) {
	body, ok := strings.CutSuffix(inst, ".")
	if !ok {
		return "", false
	}
	i := strings.LastIndexByte(body, '.')
	if i < 0 {
		return "", false
	}
	return body[:i+1], true
}
