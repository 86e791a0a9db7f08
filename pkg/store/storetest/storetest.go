// Package storetest gives each test its own database on the real
// PostgreSQL server, so test packages run in parallel and leave nothing
// behind.
package storetest

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/store"
)

// AdminURL is the server used to create and drop test databases:
// DUET_TEST_DATABASE_URL (the Makefile points it at the local socket, where
// a fresh install's peer auth lets the scripts' role in), else the local
// server over TCP as the development machines have it (docs/testing.md).
func AdminURL() string {
	if u := os.Getenv("DUET_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

var unsafe = regexp.MustCompile(`[^a-z0-9_]`)

// NewDatabase creates an empty database and returns its URL. It is dropped
// when the test ends.
func NewDatabase(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		t.Fatalf("connect to PostgreSQL at %s (is it running? `make services`): %v", AdminURL(), err)
	}
	defer admin.Close(context.Background())
	name := strings.ToLower(t.Name())
	name = unsafe.ReplaceAllString(name, "_")
	if len(name) > 30 {
		name = name[:30]
	}
	name = fmt.Sprintf("duet_t_%s_%s", name, bus.NewID()[:8])
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, AdminURL())
		if err != nil {
			t.Logf("drop database %s: %v", name, err)
			return
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Logf("drop database %s: %v", name, err)
		}
	})
	cfg, err := pgx.ParseConfig(AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	cfg.Database = name
	// Key=value form works for TCP hosts and Unix socket directories alike.
	return fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable", cfg.Host, cfg.Port, cfg.User, name)
}

// Open creates a database, migrates it and returns an open Store.
func Open(t testing.TB) (*store.Store, string) {
	t.Helper()
	return OpenWith(t, store.Options{})
}

// OpenWith is Open with options (its URL is the new database's).
func OpenWith(t testing.TB, o store.Options) (*store.Store, string) {
	t.Helper()
	url := NewDatabase(t)
	ctx := context.Background()
	o.URL = url
	s, err := store.Open(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if _, err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	return s, url
}
