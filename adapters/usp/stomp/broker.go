package stomp

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"

	"github.com/go-stomp/stomp/v3/server"
)

// Broker is the embedded STOMP 1.2 broker `duet serve` runs when no external
// one is configured. It accepts every login; use an external broker where
// authentication matters.
type Broker struct {
	l    net.Listener
	once sync.Once
}

// StartEmbeddedBroker starts go-stomp's server on addr ("127.0.0.1:61613",
// ":0" for a random port).
func StartEmbeddedBroker(addr string) (*Broker, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("usp/stomp: embedded broker cannot listen on %s (port in use or not allowed?): %w", addr, err)
	}
	b := &Broker{l: l}
	srv := &server.Server{Addr: l.Addr().String(), Log: quietLogger{slog.New(slog.NewTextHandler(io.Discard, nil))}}
	// Known limitation of go-stomp v3.1.3: Server.Serve never returns. Its
	// accept loop ends when Close closes the listener, but its dispatch
	// goroutine (blocked on an internal channel, no CPU) lives until the
	// process exits. One per embedded broker, so at most one in duet serve.
	go func() { _ = srv.Serve(l) }()
	return b, nil
}

// Addr is the host:port the broker listens on.
func (b *Broker) Addr() string { return b.l.Addr().String() }

// Close stops accepting connections. go-stomp gives no handle on
// established connections; they end when their clients disconnect. Safe to
// call twice.
func (b *Broker) Close() error {
	var err error
	b.once.Do(func() {
		if e := b.l.Close(); e != nil && !errors.Is(e, net.ErrClosed) {
			err = e
		}
	})
	return err
}
