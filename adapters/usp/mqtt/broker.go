package mqtt

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// Broker is the embedded MQTT broker `duet serve` runs when no external one
// is configured (docs/architecture.md, processes and defaults). It allows every
// client: put it behind a firewall or use an external broker with auth.
type Broker struct {
	srv  *mochi.Server
	addr string
	once sync.Once
	err  error
}

// StartEmbeddedBroker starts mochi-mqtt (MQTT 3.1.1 and 5) listening on
// addr ("127.0.0.1:1883", ":0" for a random port).
func StartEmbeddedBroker(addr string) (*Broker, error) {
	// Listen ourselves first so a port in use gives a clear error.
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("usp/mqtt: embedded broker cannot listen on %s (port in use or not allowed?): %w", addr, err)
	}
	real := l.Addr().String()
	_ = l.Close()
	srv := mochi.New(&mochi.Options{InlineClient: false, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Capabilities: brokerCapabilities(), ClientNetReadBufferSize: clientReadBuffer})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		return nil, fmt.Errorf("usp/mqtt: embedded broker: %w", err)
	}
	tcp := listeners.NewTCP(listeners.Config{Type: "tcp", ID: "duet-tcp", Address: real})
	if err := srv.AddListener(tcp); err != nil {
		return nil, fmt.Errorf("usp/mqtt: embedded broker cannot listen on %s: %w", real, err)
	}
	if err := srv.Serve(); err != nil { // Serve starts the listeners and returns
		_ = srv.Close()
		return nil, fmt.Errorf("usp/mqtt: embedded broker: %w", err)
	}
	return &Broker{srv: srv, addr: tcp.Address()}, nil
}

// Memory per agent (docs/scaling.md): mochi allocates each client's
// outbound queue in full when it connects, 8,192 packet pointers (64 KiB)
// by default, and a 2 KiB read buffer. An agent is sent a few records at a
// time (at most usp.Options.MaxInFlightPerAgent requests); the adapter's
// own connection, which carries every agent's records, drains its queue as
// fast as they come. A packet that finds the queue full is dropped and
// counted by mochi; agents retry an unanswered Notify (TR-369
// "Notifications").
const (
	clientWritesPending = 512
	clientReadBuffer    = 1024
)

func brokerCapabilities() *mochi.Capabilities {
	c := mochi.NewDefaultServerCapabilities()
	c.MaximumClientWritesPending = clientWritesPending
	return c
}

// Addr is the host:port the broker listens on.
func (b *Broker) Addr() string { return b.addr }

// URL is the broker URL for Options.BrokerURL.
func (b *Broker) URL() string { return "mqtt://" + b.addr }

// Close stops the broker. Safe to call twice.
func (b *Broker) Close() error {
	b.once.Do(func() {
		if err := b.srv.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			b.err = err
		}
	})
	return b.err
}
