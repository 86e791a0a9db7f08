package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// TestStatementTimeout: a pool opened with StatementTimeout has PostgreSQL
// cancel a statement that runs past it, and the error is recognisable, so
// the API answers 503 instead of holding a connection for minutes (issue
// 15 §8).
func TestStatementTimeout(t *testing.T) {
	url := storetest.NewDatabase(t)
	ctx := context.Background()
	s, err := store.Open(ctx, store.Options{URL: url, MaxConns: 2, StatementTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = s.Pool().Exec(ctx, "SELECT pg_sleep(30)")
	if !store.IsQueryTimeout(err) {
		t.Fatalf("pg_sleep(30) under a 100 ms statement timeout: %v", err)
	}
	if _, err := s.Pool().Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("the pool after a cancelled statement: %v", err)
	}
}
