// Package store is Duet's PostgreSQL persistence, through pgx/v5.
package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/duet-dm/duet/migrations"
)

// Store is a PostgreSQL connection pool with Duet's queries.
type Store struct {
	pool *pgxpool.Pool
	log  *slog.Logger
}

// Options configure Open.
type Options struct {
	// URL is a PostgreSQL connection string (URL or key=value). Required.
	URL string
	// MaxConns bounds the pool. Default 16.
	MaxConns int32
	// StatementTimeout, when set, makes PostgreSQL cancel any statement of
	// this pool that runs longer (statement_timeout); such an error
	// satisfies IsQueryTimeout. The API opens its own pool with one, so
	// a costly search cannot hold connections the hot path needs.
	StatementTimeout time.Duration
	// Tracer, when set, sees every statement, batch and prepare of the
	// pool (the benchmarks count PostgreSQL round trips with it).
	Tracer pgx.QueryTracer
	Logger *slog.Logger
}

// Open connects a pool and checks that the server answers.
func Open(ctx context.Context, o Options) (*Store, error) {
	if o.URL == "" {
		return nil, fmt.Errorf("store: database URL is empty")
	}
	cfg, err := pgxpool.ParseConfig(o.URL)
	if err != nil {
		return nil, fmt.Errorf("store: bad database URL: %w", err)
	}
	if o.MaxConns == 0 {
		o.MaxConns = 16
	}
	cfg.MaxConns = o.MaxConns
	cfg.ConnConfig.RuntimeParams["application_name"] = "duet"
	if o.StatementTimeout > 0 {
		cfg.ConnConfig.RuntimeParams["statement_timeout"] = strconv.FormatInt(max(o.StatementTimeout.Milliseconds(), 1), 10)
	}
	if o.Tracer != nil {
		cfg.ConnConfig.Tracer = o.Tracer
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("store: cannot reach PostgreSQL: %w", err)
	}
	return &Store{pool: pool, log: o.Logger.With("component", "store")}, nil
}

// Close closes the pool.
func (s *Store) Close() { s.pool.Close() }

// Pool exposes the pool for tests and benchmarks.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Ping checks the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.pool.Ping(ctx) }

// migrationLockKey is the advisory lock held while migrating, so that two
// processes starting at once never both apply a migration.
const migrationLockKey int64 = 0x6475657400000001 // "duet" + 1

type migration struct {
	version  int
	name     string
	sql      string
	checksum string
}

func loadMigrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrations.FS, ".")
	if err != nil {
		return nil, err
	}
	var out []migration
	seen := map[int]string{}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".sql") {
			continue
		}
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("store: migration %q is not named NNNN_name.sql", name)
		}
		if prev, dup := seen[v]; dup {
			return nil, fmt.Errorf("store: migrations %q and %q share version %d", prev, name, v)
		}
		seen[v] = name
		b, err := fs.ReadFile(migrations.FS, name)
		if err != nil {
			return nil, err
		}
		sum := sha256.Sum256(b)
		out = append(out, migration{version: v, name: name, sql: string(b), checksum: hex.EncodeToString(sum[:])})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	return out, nil
}

// LatestMigration is the highest migration version in the binary.
func LatestMigration() int {
	ms, err := loadMigrations()
	if err != nil || len(ms) == 0 {
		return 0
	}
	return ms[len(ms)-1].version
}

// Migrate applies every pending migration under an advisory lock, each in
// its own transaction, and returns how many it applied. It refuses to run
// when the database has a migration this binary does not know (a newer
// Duet migrated it) or an applied migration's file changed.
func (s *Store) Migrate(ctx context.Context) (int, error) {
	ms, err := loadMigrations()
	if err != nil {
		return 0, err
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return 0, fmt.Errorf("store: migrate: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", migrationLockKey); err != nil {
		return 0, fmt.Errorf("store: migration lock: %w", err)
	}
	defer func() {
		// Use a fresh context: the caller's may be cancelled by now.
		uctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _ = conn.Exec(uctx, "SELECT pg_advisory_unlock($1)", migrationLockKey)
	}()
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    integer PRIMARY KEY,
		name       text NOT NULL,
		checksum   text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return 0, fmt.Errorf("store: create schema_migrations: %w", err)
	}
	applied := map[int]string{}
	rows, err := conn.Query(ctx, "SELECT version, checksum FROM schema_migrations")
	if err != nil {
		return 0, err
	}
	for rows.Next() {
		var v int
		var c string
		if err := rows.Scan(&v, &c); err != nil {
			rows.Close()
			return 0, err
		}
		applied[v] = c
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	known := map[int]bool{}
	for _, m := range ms {
		known[m.version] = true
		if c, ok := applied[m.version]; ok && c != m.checksum {
			return 0, fmt.Errorf("store: migration %s was changed after it was applied (checksum mismatch)", m.name)
		}
	}
	for v := range applied {
		if !known[v] {
			return 0, fmt.Errorf("store: database has migration %d that this binary does not know; upgrade Duet", v)
		}
	}
	n := 0
	for _, m := range ms {
		if _, ok := applied[m.version]; ok {
			continue
		}
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, m.sql); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)", m.version, m.name, m.checksum)
			return err
		})
		if err != nil {
			return n, fmt.Errorf("store: migration %s: %w", m.name, err)
		}
		s.log.Info("applied migration", "version", m.version, "name", m.name)
		n++
	}
	return n, nil
}

// SchemaVersion is the highest applied migration, 0 if none.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v *int
	err := s.pool.QueryRow(ctx, "SELECT max(version) FROM schema_migrations").Scan(&v)
	if err != nil {
		if strings.Contains(err.Error(), "does not exist") {
			return 0, nil
		}
		return 0, err
	}
	if v == nil {
		return 0, nil
	}
	return *v, nil
}
