// Package bustest starts a real NATS server with JetStream for tests: an
// in-process nats-server on a random port with its store in t.TempDir(), so
// test packages run in parallel without sharing streams.
package bustest

import (
	"context"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/bus"
)

// StartServer starts an embedded NATS server and returns it; it is shut
// down when the test ends.
func StartServer(t testing.TB) *bus.Embedded {
	t.Helper()
	srv, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatalf("start embedded NATS: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	return srv
}

// Connect connects a Bus to url; it is closed when the test ends.
func Connect(t testing.TB, url string) *bus.Bus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	b, err := bus.Connect(ctx, bus.Options{URL: url, Name: t.Name(), DefaultTimeout: 10 * time.Second, SealKey: SealKey(t)})
	if err != nil {
		t.Fatalf("connect bus: %v", err)
	}
	t.Cleanup(b.Close)
	return b
}

// Start is StartServer plus Connect.
func Start(t testing.TB) (*bus.Bus, *bus.Embedded) {
	t.Helper()
	srv := StartServer(t)
	return Connect(t, srv.URL()), srv
}

// CheckFor polls fn until it returns nil or timeout passes (no sleeps as
// synchronisation; CONTRIBUTING.md, habit 10).
func CheckFor(t testing.TB, timeout, poll time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = fn(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %s: %v", timeout, err)
		}
		time.Sleep(poll)
	}
}

// SealKey is the seal key every test bus shares, as the controller and the
// CWMP adapters of one Duet do.
func SealKey(t testing.TB) *bus.SealKey {
	t.Helper()
	k, err := bus.NewSealKey([]byte("duet bustest seal key 0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	return k
}
