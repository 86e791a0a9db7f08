package store

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Indexed parameter search (migrations/0100_param_search.sql): the values
// of a few configured paths are copied into device_parameter_search, with
// indexes on the value and on the value as a number, so a param condition
// on one of them starts from the devices it matches. A condition on any
// other path probes device_parameters' key for each candidate device, as
// before. docs/search.md says which to configure and what each costs.

// DefaultSearchPaths are the search paths of DUET_SEARCH_PATHS by
// default: what operators pick a part of the fleet by that the registry's
// own columns (manufacturer, product class, software version) do not
// hold, in both root data models (TR-181 Device., TR-098
// InternetGatewayDevice.). Each is written at most once per Inform and
// changes rarely.
const DefaultSearchPaths = "Device.DeviceInfo.ModelName,Device.DeviceInfo.HardwareVersion,Device.DeviceInfo.ProvisioningCode," +
	"Device.ManagementServer.PeriodicInformInterval," +
	"InternetGatewayDevice.DeviceInfo.ModelName,InternetGatewayDevice.DeviceInfo.HardwareVersion," +
	"InternetGatewayDevice.DeviceInfo.ProvisioningCode,InternetGatewayDevice.ManagementServer.PeriodicInformInterval"

// SetSearchPaths makes paths the set whose values device searches find
// through device_parameter_search: a new path is added with its own
// partition, not ready (searches on it use the cache until
// BackfillSearchPaths has copied its cached values), and a path no longer
// listed is taken out, its partition dropped once every write that could
// still see it has ended. Each must be a parameter path
// (CodeInvalidPath otherwise). Every replica must be given the same list.
func (s *Store) SetSearchPaths(ctx context.Context, paths []string) error {
	for _, p := range paths {
		if err := (ParamCondition{Path: p, Op: ParamEq}).Check(); err != nil {
			return fmt.Errorf("search path %q: %w", p, err)
		}
	}
	if paths == nil {
		paths = []string{}
	}
	var xid string
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// One replica at a time; the cache's writes only read this table.
		if _, err := tx.Exec(ctx, `LOCK TABLE parameter_search_paths IN EXCLUSIVE MODE`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM parameter_search_paths WHERE NOT (path = ANY($1::text[]))`, paths); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `INSERT INTO parameter_search_paths (path) SELECT DISTINCT unnest($1::text[])
			ON CONFLICT DO NOTHING RETURNING id, path`, paths)
		if err != nil {
			return err
		}
		added, err := pgx.CollectRows(rows, pgx.RowToStructByPos[searchPartition])
		if err != nil {
			return err
		}
		for _, a := range added {
			if _, err := tx.Exec(ctx, fmt.Sprintf(`CREATE TABLE %s PARTITION OF device_parameter_search FOR VALUES IN (%s)`,
				a.table(), quoteLiteral(a.Path))); err != nil {
				return err
			}
		}
		return tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&xid)
	})
	if err != nil {
		return fmt.Errorf("store: set search paths: %w", err)
	}
	return s.dropOrphanPartitions(ctx, xid)
}

// searchPartition is a configured path and its partition's number.
type searchPartition struct {
	ID   int
	Path string
}

func (p searchPartition) table() string { return fmt.Sprintf("device_parameter_search_%d", p.ID) }

// quoteLiteral quotes s as an SQL string literal (standard_conforming_strings).
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// dropOrphanPartitions drops the partitions of paths no longer configured,
// once every transaction older than xid (the change that removed them;
// such a write may still route a value to them) has ended.
func (s *Store) dropOrphanPartitions(ctx context.Context, xid string) error {
	const q = `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'device_parameter_search'::regclass
		AND NOT EXISTS (SELECT 1 FROM parameter_search_paths p WHERE c.relname = 'device_parameter_search_' || p.id)`
	rows, err := s.pool.Query(ctx, q)
	if err != nil {
		return fmt.Errorf("store: search partitions: %w", err)
	}
	orphans, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(orphans) == 0 {
		return err
	}
	if err := s.waitOlderTransactions(ctx, xid); err != nil {
		return err
	}
	for _, t := range orphans {
		if _, err := s.pool.Exec(ctx, "DROP TABLE IF EXISTS "+pgx.Identifier{t}.Sanitize()); err != nil {
			return fmt.Errorf("store: drop search partition %s: %w", t, err)
		}
	}
	s.log.Info("search paths dropped", "partitions", orphans)
	return nil
}

// backfillBatch is how many devices one backfill statement covers: a
// probe of the cache's key per device and path, a short transaction.
const backfillBatch = 1000

// BackfillSearchPaths copies the cached values of every path that is not
// ready yet into device_parameter_search, then marks those paths ready.
// It first waits for every transaction older than the paths' addition to
// end (a cache write that began before a path was added does not copy
// its value), then walks the registry in batches. It is idempotent and
// safe beside live writes and other replicas doing the same.
func (s *Store) BackfillSearchPaths(ctx context.Context) error {
	var paths []string
	var newest string
	err := s.pool.QueryRow(ctx, `SELECT coalesce(array_agg(path ORDER BY path), '{}'), coalesce(max(added_xid)::text, '0')
		FROM parameter_search_paths WHERE NOT ready`).Scan(&paths, &newest)
	if err != nil {
		return fmt.Errorf("store: backfill search paths: %w", err)
	}
	if len(paths) == 0 {
		return nil
	}
	if err := s.waitOlderTransactions(ctx, newest); err != nil {
		return err
	}
	start, after, n := time.Now(), "", 0
	for {
		last, err := s.backfillBatch(ctx, paths, after)
		if err != nil {
			return err
		}
		if last == "" {
			break
		}
		after, n = last, n+1
	}
	if _, err := s.pool.Exec(ctx, `UPDATE parameter_search_paths SET ready = true WHERE path = ANY($1::text[])`, paths); err != nil {
		return fmt.Errorf("store: backfill search paths: %w", err)
	}
	if _, err := s.pool.Exec(ctx, `ANALYZE device_parameter_search`); err != nil {
		return fmt.Errorf("store: backfill search paths: %w", err)
	}
	s.log.Info("search paths indexed", "paths", paths, "batches", n, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// waitOlderTransactions returns once the oldest running transaction is
// newer than xid.
func (s *Store) waitOlderTransactions(ctx context.Context, xid string) error {
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		var done bool
		if err := s.pool.QueryRow(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot()) > $1::xid8`, xid).Scan(&done); err != nil {
			return fmt.Errorf("store: wait for older transactions: %w", err)
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// backfillBatch copies paths' cached values of the backfillBatch devices
// after after, and returns the last of those devices ("" when none was
// left). A value the write path changes meanwhile is right either way:
// the write's copy, if first, is kept (DO NOTHING); if second, it waits
// for this one and replaces it. FOR KEY SHARE keeps a cache row from
// being deleted until its copy is committed, so the delete's trigger
// (0100) removes the copy; a row deleted first is skipped.
func (s *Store) backfillBatch(ctx context.Context, paths []string, after string) (string, error) {
	const q = `WITH d AS (SELECT id FROM devices WHERE id > $1 ORDER BY id LIMIT $3),
		ins AS (INSERT INTO device_parameter_search (path, device_id, value)
			SELECT p.path, p.device_id, p.value FROM d CROSS JOIN unnest($2::text[]) AS sp(path)
			JOIN device_parameters p ON p.device_id = d.id AND p.path = sp.path
			FOR KEY SHARE OF p
			ON CONFLICT (path, device_id) DO NOTHING)
		SELECT coalesce(max(id), '') FROM d`
	var last string
	if err := s.pool.QueryRow(ctx, q, after, paths, backfillBatch).Scan(&last); err != nil {
		return "", fmt.Errorf("store: backfill search paths after %q: %w", after, err)
	}
	return last, nil
}

// indexedPaths returns, for those of conds' paths device searches can
// answer from device_parameter_search (configured and backfilled), the
// partition holding the path's values. Searches name the partition, not
// the partitioned table: the planner proves a device's value unique only
// on a table's own unique index, and with that proof it reads an eq
// condition's matches in device order and stops at the page's end; on
// the partitioned table it collected and sorted every match.
func (s *Store) indexedPaths(ctx context.Context, conds []ParamCondition) (map[string]string, error) {
	if len(conds) == 0 {
		return nil, nil
	}
	paths := make([]string, len(conds))
	for i, c := range conds {
		paths[i] = c.Path
	}
	rows, err := s.pool.Query(ctx, `SELECT id, path FROM parameter_search_paths WHERE ready AND path = ANY($1::text[])`, paths)
	if err != nil {
		return nil, fmt.Errorf("store: search paths: %w", err)
	}
	ready, err := pgx.CollectRows(rows, pgx.RowToStructByPos[searchPartition])
	if err != nil {
		return nil, fmt.Errorf("store: search paths: %w", err)
	}
	out := make(map[string]string, len(ready))
	for _, p := range ready {
		out[p.Path] = p.table()
	}
	return out, nil
}

// SearchPath is one configured searchable path and whether searches use
// its index yet.
type SearchPath struct {
	Path  string
	Ready bool
}

// SearchPaths lists the configured searchable paths, by path.
func (s *Store) SearchPaths(ctx context.Context) ([]SearchPath, error) {
	rows, err := s.pool.Query(ctx, `SELECT path, ready FROM parameter_search_paths ORDER BY path`)
	if err != nil {
		return nil, fmt.Errorf("store: search paths: %w", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[SearchPath])
	if err != nil {
		return nil, fmt.Errorf("store: search paths: %w", err)
	}
	return out, nil
}

// indexedPrefixLen is the number of characters of a value the value index
// holds (left(value, 200) in 0100).
const indexedPrefixLen = 200
