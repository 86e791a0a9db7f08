package bus

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

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

// TestDeviceSubscriptionsShareOneGoroutine: a USP adapter serves one
// command subscription per connected agent; each used to cost an idle
// goroutine of nats.go's (docs/scaling.md, "Memory per agent"). A
// thousand of them now add no goroutine, every one still answers, a busy
// one does not hold up the others, and a stopped one answers no more.
func TestDeviceSubscriptionsShareOneGoroutine(t *testing.T) {
	emb, err := StartEmbedded(EmbeddedOptions{Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer emb.Shutdown()
	b, err := Connect(context.Background(), Options{URL: emb.URL(), MaxConcurrentHandlers: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	release := make(chan struct{})
	busy, err := b.ServeCommands(CommandSubject("usp", "busy"), "q", func(ctx context.Context, cmd *duetv1.Command) *duetv1.CommandResult {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return &duetv1.CommandResult{}
	})
	if err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	const n = 1000
	subs := make([]*Subscription, n)
	for i := range n {
		id := fmt.Sprintf("dev%d", i)
		if subs[i], err = b.ServeCommands(CommandSubject("usp", id), "q", func(ctx context.Context, cmd *duetv1.Command) *duetv1.CommandResult {
			return &duetv1.CommandResult{Error: &duetv1.Error{Message: id}}
		}); err != nil {
			t.Fatal(err)
		}
	}
	if grew := runtime.NumGoroutine() - before; grew > 20 {
		t.Fatalf("%d device subscriptions added %d goroutines", n, grew)
	}
	// Fill the busy subscription's only slot, and one more waits.
	for range 2 {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, _ = b.Request(ctx, "usp", &duetv1.Command{DeviceId: "busy"})
		}()
	}
	for i := 0; i < n; i += 97 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		res, err := b.Request(ctx, "usp", &duetv1.Command{DeviceId: fmt.Sprintf("dev%d", i)})
		cancel()
		if err != nil || res.GetError().GetMessage() != fmt.Sprintf("dev%d", i) {
			t.Fatalf("dev%d: %v %v", i, res, err)
		}
	}
	close(release)
	busy.Stop()
	subs[0].Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if res, err := b.Request(ctx, "usp", &duetv1.Command{DeviceId: "dev0"}); err == nil {
		t.Fatalf("a stopped subscription answered: %v", res)
	}
}
