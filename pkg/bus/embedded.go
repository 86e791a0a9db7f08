package bus

import (
	"crypto/tls"
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
	// Identities, when set, close the bus: only the roles' NKeys connect,
	// each with its role's Permissions (issue 15 §4). Without them anyone
	// who reaches the port may do anything (tests, and the bus of tests
	// that play every part).
	Identities *Identities
	// ProtectedConsumers are the event-stream consumers integrators may
	// not touch (the controller's durable consumer).
	ProtectedConsumers []string
	// TLS, when set, is required of every network client (its
	// certificate is reloaded by pkg/tlsutil). Connections in the same
	// process (Bus Options.Embedded) use InProcessTLS.
	TLS *tls.Config
	// InProcessTLS is the client configuration of this process's
	// connections when TLS is set: they dial the server over loopback with
	// TLS, trusting exactly its own certificate.
	InProcessTLS *tls.Config
}

// Embedded is a running in-process NATS server with JetStream.
type Embedded struct {
	srv          *server.Server
	inProcessTLS *tls.Config
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
	so := &server.Options{
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
	}
	if o.Identities != nil {
		for _, r := range Roles {
			perms, err := Permissions(r, o.ProtectedConsumers)
			if err != nil {
				return nil, err
			}
			so.Nkeys = append(so.Nkeys, &server.NkeyUser{Nkey: o.Identities.PublicKey(r), Permissions: perms})
		}
		so.AuthTimeout = 5
	}
	if o.TLS != nil {
		if o.InProcessTLS == nil {
			return nil, errors.New("bus: embedded NATS with TLS needs InProcessTLS")
		}
		so.TLSConfig, so.TLS = o.TLS, true
		so.TLSTimeout = 5
	}
	srv, err := server.NewServer(so)
	if err != nil {
		return nil, fmt.Errorf("bus: embedded NATS: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return nil, errors.New("bus: embedded NATS did not become ready in 10s")
	}
	return &Embedded{srv: srv, inProcessTLS: o.InProcessTLS}, nil
}

// URL is the client URL of the embedded server.
func (e *Embedded) URL() string { return e.srv.ClientURL() }

// InProcessConn connects to the server without the network (no TLS
// needed; authentication still applies).
func (e *Embedded) InProcessConn() (net.Conn, error) { return e.srv.InProcessConn() }

// Shutdown stops the server. Safe to call twice.
func (e *Embedded) Shutdown() {
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
}
