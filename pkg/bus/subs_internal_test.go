package bus

import (
	"context"
	"testing"

	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// TestStoppedSubscriptionsAreForgotten: per-device subscriptions come and
// go with agents; the bus must not keep the stopped ones.
func TestStoppedSubscriptionsAreForgotten(t *testing.T) {
	emb, err := StartEmbedded(EmbeddedOptions{Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer emb.Shutdown()
	b, err := Connect(context.Background(), Options{URL: emb.URL()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	h := func(ctx context.Context, cmd *duetv1.Command) *duetv1.CommandResult { return &duetv1.CommandResult{} }
	keep, err := b.ServeCommands(CommandSubject("usp", "kept"), "q", h)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		s, err := b.ServeCommands(CommandSubject("usp", "churn"), "q", h)
		if err != nil {
			t.Fatal(err)
		}
		s.Stop()
		s.Stop() // twice is fine
	}
	b.mu.Lock()
	n := len(b.subs)
	_, kept := b.subs[keep]
	b.mu.Unlock()
	if n != 1 || !kept {
		t.Fatalf("bus holds %d subscriptions (kept=%v), want only the live one", n, kept)
	}
}
