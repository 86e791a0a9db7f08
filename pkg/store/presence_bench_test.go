package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/store"
)

// BenchmarkFindOverdueCWMP100k: the presence sweeper's query over 100k
// devices (two thirds CWMP, three quarters online, last seen over the
// last day, intervals learned by the 0036 trigger from the seeded cache):
// one page of 1000 overdue CPEs.
func BenchmarkFindOverdueCWMP100k(b *testing.B) {
	s := seed100k(b, true)
	ctx := context.Background()
	rule := store.PresenceRule{Tolerance: 2.5, Grace: time.Minute, Unknown: 24 * time.Hour}
	var n int
	if err := s.Pool().QueryRow(ctx, "SELECT count(*) FROM devices WHERE inform_interval > 0").Scan(&n); err != nil || n == 0 {
		b.Fatalf("intervals learned by the trigger: %d %v", n, err)
	}
	b.ResetTimer()
	for b.Loop() {
		ds, err := s.FindOverdueCWMP(ctx, time.Now(), rule, nil, 1000)
		if err != nil || len(ds) != 1000 {
			b.Fatalf("%d %v", len(ds), err)
		}
	}
}
