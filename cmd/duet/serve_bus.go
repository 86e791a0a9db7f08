package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/pkg/bus"
)

// busSet is the bus connections of one `duet serve`: one per component
// role, so each part of Duet has only its role's permissions on the closed
// embedded bus (issue 15 §4; docs/bus.md, "Who may do what").
type busSet struct {
	url  string
	note string // for the banner: where the NKeys are
	// conns in the order made; the controller's first, as it owns the
	// streams.
	conns map[bus.Role]*bus.Bus
	order []bus.Role
}

// get is role's connection (startBus made one per component).
func (b *busSet) get(r bus.Role) *bus.Bus {
	return b.conns[r]
}

func (b *busSet) any() *bus.Bus {
	if c := b.conns[bus.RoleController]; c != nil {
		return c
	}
	return b.conns[b.order[0]]
}

func (b *busSet) ping(ctx context.Context) error {
	for _, r := range b.order {
		if err := b.conns[r].Ping(ctx); err != nil {
			return fmt.Errorf("%s connection: %w", r, err)
		}
	}
	return nil
}

// startBus starts the embedded NATS (closed: NKeys per role, kept in
// <data-dir>/bus/) or points at DUET_NATS_URL, and connects each of this
// process's components with its role.
func (m *Main) startBus(ctx context.Context, s *settings, cfg *serveConfig, log *slog.Logger, started *stack, durable string) (*busSet, error) {
	comps := cfg.comps
	busDir := filepath.Join(s.str("data-dir"), "bus")
	var seal *bus.SealKey
	if comps["controller"] || comps["cwmp"] {
		var err error
		if seal, err = s.sealKey(busDir); err != nil {
			return nil, err
		}
		// The ID tells keys apart without revealing them: compare it across
		// hosts when credentials do not open.
		if s.str("bus-seal-key") == "" && s.str("nats-url") != "" {
			log.Warn("the bus seal key is this data directory's: controllers and CWMP adapters on other hosts need the same (DUET_BUS_SEAL_KEY)",
				"seal_key_id", seal.ID(), "file", filepath.Join(busDir, "seal.key"))
		} else {
			log.Info("bus seal key", "seal_key_id", seal.ID())
		}
	}
	base := bus.Options{URL: s.str("nats-url"), EventMaxAge: cfg.retention, Replicas: cfg.natsReplicas,
		LatestOnlyKinds: cfg.latestOnly, Logger: log, SealKey: seal}
	set := &busSet{url: base.URL, conns: map[bus.Role]*bus.Bus{}}
	var ids *bus.Identities
	var emb *bus.Embedded
	if base.URL == "" {
		dir := filepath.Join(s.str("data-dir"), "nats")
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, s.errSetting("data-dir", "cannot create %s: %v", dir, err)
		}
		var err error
		if ids, err = bus.EnsureIdentities(busDir); err != nil {
			return nil, s.errSetting("data-dir", "bus NKeys: %v", err)
		}
		protected := []string{controller.LegacyDurable}
		if durable != "" {
			protected = append(protected, durable)
		}
		emb, err = bus.StartEmbedded(bus.EmbeddedOptions{Host: s.str("nats-host"), Port: cfg.natsPort, StoreDir: dir,
			Identities: ids, ProtectedConsumers: protected, TLS: cfg.tls.natsServer, InProcessTLS: cfg.tls.natsInProcess})
		if errors.Is(err, bus.ErrPortInUse) {
			return nil, s.errSetting("nats-port", "%v (set DUET_NATS_PORT to a free port, or DUET_NATS_URL to use that server)", err)
		}
		if err != nil {
			return nil, err
		}
		started.push(func(context.Context) { emb.Shutdown() })
		set.url = emb.URL()
		if cfg.tls.natsServer != nil {
			set.url = strings.Replace(set.url, "nats://", "tls://", 1)
		}
		set.note = " (closed: NKeys in " + ids.Dir + ")"
		log.Info("embedded NATS started", "url", set.url, "store", dir, "nkeys", ids.Dir, "tls", cfg.tls.natsServer != nil)
	}
	if emb != nil {
		base.URL = emb.URL()
	}
	connect := func(r bus.Role) error {
		o := base
		o.Role, o.Name = r, "duet-"+string(r)
		if emb != nil {
			o.Embedded, o.CredentialsFile = emb, ids.SeedFile(r)
		} else {
			o.CredentialsFile, o.User, o.Password, o.TLS = s.str("nats-credentials"), s.str("nats-user"), s.str("nats-password"), cfg.tls.natsClient
		}
		b, err := bus.Connect(ctx, o)
		if err != nil {
			if cfg.natsReplicas > 1 && strings.Contains(err.Error(), "stream") {
				// Most likely the servers are fewer than the replicas.
				return s.errSetting("nats-replicas", "%v", err)
			}
			return s.errSetting("nats-url", "%v", err)
		}
		started.push(func(context.Context) { b.Close() })
		set.conns[r] = b
		set.order = append(set.order, r)
		return nil
	}
	// The controller first: it creates the streams the adapters check.
	if comps["controller"] {
		if err := connect(bus.RoleController); err != nil {
			return nil, err
		}
	}
	if comps["cwmp"] {
		if err := connect(bus.RoleCWMP); err != nil {
			return nil, err
		}
	}
	if comps["usp-mqtt"] || comps["usp-stomp"] || comps["usp-ws"] {
		if err := connect(bus.RoleUSP); err != nil {
			return nil, err
		}
	}
	return set, nil
}
