package bus

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// EmbeddedOptions configure the NATS server `duet serve` runs in-process
// when no DUET_NATS_URL is set.
type EmbeddedOptions struct {
	Host string // default 127.0.0.1
	// Port; 0 means the standard 4222, -1 a random free port (tests).
	Port int
	// StoreDir holds JetStream data. Required.
	StoreDir string
	// MaxStore bounds JetStream file storage. Default 4 GiB.
	MaxStore int64
}

// Embedded is a running in-process NATS server with JetStream.
type Embedded struct {
	srv *server.Server
}

// ErrPortInUse is returned when the embedded server's port is taken.
var ErrPortInUse = errors.New("port already in use")

// StartEmbedded starts NATS with JetStream and waits until it accepts
// connections.
func StartEmbedded(o EmbeddedOptions) (*Embedded, error) {
	if o.StoreDir == "" {
		return nil, errors.New("bus: embedded NATS needs a store directory")
	}
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.Port == 0 {
		o.Port = 4222
	}
	if o.MaxStore == 0 {
		o.MaxStore = 4 << 30
	}
	if o.Port > 0 {
		// nats-server retries a busy port forever; check first so start-up
		// fails with a clear message instead.
		l, err := net.Listen("tcp", net.JoinHostPort(o.Host, strconv.Itoa(o.Port)))
		if err != nil {
			return nil, fmt.Errorf("%w: %s:%d: %v", ErrPortInUse, o.Host, o.Port, err)
		}
		_ = l.Close()
	}
	srv, err := server.NewServer(&server.Options{
		ServerName:         "duet-embedded",
		Host:               o.Host,
		Port:               o.Port,
		JetStream:          true,
		StoreDir:           o.StoreDir,
		JetStreamMaxStore:  o.MaxStore,
		JetStreamMaxMemory: 256 << 20,
		NoSigs:             true,
		NoLog:              true,
		MaxPayload:         8 << 20,
	})
	if err != nil {
		return nil, fmt.Errorf("bus: embedded NATS: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return nil, errors.New("bus: embedded NATS did not become ready in 10s")
	}
	return &Embedded{srv: srv}, nil
}

// URL is the client URL of the embedded server.
func (e *Embedded) URL() string { return e.srv.ClientURL() }

// Shutdown stops the server. Safe to call twice.
func (e *Embedded) Shutdown() {
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
}
