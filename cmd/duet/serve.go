package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	cwmpadapter "github.com/duet-dm/duet/adapters/cwmp"
	uspadapter "github.com/duet-dm/duet/adapters/usp"
	uspmqtt "github.com/duet-dm/duet/adapters/usp/mqtt"
	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/controller/api"
	"github.com/duet-dm/duet/controller/console"
	"github.com/duet-dm/duet/controller/files"
	"github.com/duet-dm/duet/controller/policy"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/netguard"
	"github.com/duet-dm/duet/pkg/ratelog"
	"github.com/duet-dm/duet/pkg/store"
)

// Listeners says where a running server can be reached.
type Listeners struct {
	HTTP  string // API, health, metrics
	NATS  string // URL of the bus (embedded or external)
	CWMP  string
	MQTT  string // broker URL the USP adapter uses
	MQTTS string // the embedded broker's MQTTS listener, if any
	STOMP string
	WS    string
	Files string // base URL of the file listener as devices are told it
}

// stack collects what serve started, to stop it in reverse order.
type stack struct {
	mu    sync.Mutex
	stops []func(context.Context)
}

func (s *stack) push(f func(context.Context)) {
	s.mu.Lock()
	s.stops = append(s.stops, f)
	s.mu.Unlock()
}

func (s *stack) unwind(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.stops) - 1; i >= 0; i-- {
		s.stops[i](ctx)
	}
	s.stops = nil
}

func (m *Main) serve(ctx context.Context, args []string) (err error) {
	s := newSettings()
	if err := s.parse("serve", args, m.Getenv, m.Stderr); err != nil {
		return err
	}
	log, err := m.logger(s)
	if err != nil {
		return err
	}
	// Every setting is checked before anything starts.
	cfg, err := s.checkServe()
	if err != nil {
		return err
	}
	comps, httpAddr, realm, credKey := cfg.comps, cfg.httpAddr, cfg.realm, cfg.credKey
	var started stack
	var stopping time.Time // set when a signal asked to stop
	defer func() {
		// On a start-up failure, undo what was started; on a normal stop,
		// drain within the budget.
		sctx, cancel := context.WithTimeout(context.Background(), ShutdownBudget-time.Second)
		defer cancel()
		started.unwind(sctx)
		if !stopping.IsZero() {
			log.Info("stopped", "shutdown_seconds", roundSeconds(time.Since(stopping)))
		}
	}()
	var ls Listeners

	// Certificates of every TLS surface are reloaded when their files
	// change or on SIGHUP (issue 15 §5).
	cfg.tls.reloader.Start(true)
	started.push(func(context.Context) { cfg.tls.reloader.Stop() })

	// The controller's database comes first: the installation ID names the
	// controller's consumer, which the closed embedded bus protects from
	// integrators (issue 15 §4).
	var st *store.Store
	var durable, legacyDurable string
	var installedAt time.Time
	if comps["controller"] {
		st, err = store.Open(ctx, store.Options{URL: s.str("database-url"), Logger: log})
		if err != nil {
			return s.errSetting("database-url", "%v", err)
		}
		started.push(func(context.Context) { st.Close() })
		if _, err := st.Migrate(ctx); err != nil {
			return err
		}
		if err := st.SetSearchPaths(ctx, cfg.searchPaths); err != nil {
			return err
		}
		// Copying the cached values of a newly configured path can take
		// minutes on a large registry; searches on it use the cache
		// until it is done.
		bctx, stopBackfill := context.WithCancel(ctx)
		backfilled := make(chan struct{})
		go func() {
			defer close(backfilled)
			if err := st.BackfillSearchPaths(bctx); err != nil && bctx.Err() == nil {
				log.Error("search paths not indexed; searches on them use the parameter cache", "err", err)
			}
		}()
		started.push(func(context.Context) { stopBackfill(); <-backfilled })
		inst, err := st.Installation(ctx)
		if err != nil {
			return err
		}
		durable, installedAt = controller.InstallationDurable(inst.ID), inst.CreatedAt
		if inst.AdoptLegacyConsumer {
			legacyDurable = controller.LegacyDurable
		}
	}

	buses, err := m.startBus(ctx, s, cfg, log, &started, durable)
	if err != nil {
		return err
	}
	ls.NATS = buses.url
	// b is the controller's connection, or the first component's.
	b := buses.any()

	if cfg.pprofAddr != "" {
		if err := startPprof(cfg.pprofAddr, log, &started); err != nil {
			return s.errSetting("pprof-addr", "%s is already in use or not available: %v", cfg.pprofAddr, err)
		}
	}

	// HTTP: bind first so a busy port fails before anything else starts.
	hl, err := net.Listen("tcp", httpAddr)
	if err != nil {
		return s.errSetting("http-addr", "%s is already in use or not available: %v", httpAddr, err)
	}
	ls.HTTP = hl.Addr().String()
	mux := http.NewServeMux()
	var checks []readyCheck
	var apiServer *api.Server
	var web *console.Console
	// ensureAdmin creates (and prints, once) the first admin token. It runs
	// after every component started, so a start that fails never creates
	// a token nobody saw.
	ensureAdmin := func() error { return nil }
	checks = append(checks, readyCheck{"nats", buses.ping})
	mainStore := st // the controller's, when it runs here

	if comps["controller"] {
		checks = append(checks, readyCheck{"postgres", st.Ping}, readyCheck{"migrations", func(ctx context.Context) error {
			v, err := st.SchemaVersion(ctx)
			if err != nil {
				return err
			}
			if v != store.LatestMigration() {
				return fmt.Errorf("schema version %d, binary expects %d", v, store.LatestMigration())
			}
			return nil
		}})
		ensureAdmin = func() error {
			adminToken, err := st.EnsureAdminToken(ctx, s.str("admin-token"))
			if err != nil {
				return s.errSetting("admin-token", "%v", err)
			}
			if adminToken != "" {
				// Printed once, to stdout only (not the log, which is often
				// shipped elsewhere); only its hash is stored.
				fmt.Fprintf(m.Stdout, "\nNo API token existed, so an admin token was created. It is shown only now:\n\n  %s\n\nUse it as \"Authorization: Bearer <token>\"; manage tokens with \"duet token\".\n\n", adminToken)
			}
			// The console's first admin, the same way (issue 13 item 3).
			password, err := st.EnsureFirstAdmin(ctx)
			if err != nil {
				return err
			}
			if password != "" {
				fmt.Fprintf(m.Stdout, "\nNo console user existed, so the user %q (role admin) was created. Its password is shown only now:\n\n  %s\n\nLog in to the console at %s; manage users there or with \"duet user\".\n\n",
					store.FirstAdminName, password, "http://"+displayAddr(ls.HTTP)+"/")
			}
			return nil
		}
		awaitTimeouts := cfg.awaitTimeouts
		repo, fileURLs, err := m.startFiles(ctx, s, cfg, st, b, log, &started, &ls)
		if err != nil {
			_ = hl.Close()
			return err
		}
		tasks, err := controller.NewTaskQueue(controller.TaskQueueOptions{Store: st, Bus: b, CredentialKey: credKey, Logger: log,
			RebootTimeout: awaitTimeouts[0], TransferTimeout: awaitTimeouts[1], OperationTimeout: awaitTimeouts[2], FileURLs: fileURLs})
		if err != nil {
			_ = hl.Close()
			return err
		}
		policyEnv := policy.Env{USPEndpointID: s.str("usp-endpoint-id")}
		rec := controller.NewReconciler(controller.ReconcilerOptions{Store: st, Tasks: tasks, Bus: b, Env: policyEnv,
			Sweep: cfg.policySweep, Logger: log})
		// Before the queue starts: no finished policy task goes unheard.
		tasks.OnFinished(rec.TaskFinished)
		var enrol *controller.Enrolments
		if cfg.enrol {
			if enrol, err = controller.NewEnrolments(controller.EnrolmentOptions{Store: st, Tasks: tasks, Key: credKey,
				Realm: realm, Username: s.str("cwmp-username"), Rules: cfg.enrolRules, Logger: log}); err != nil {
				_ = hl.Close()
				return s.errSetting("cwmp-enrol", "%v", err)
			}
			tasks.OnFinished(func(ctx context.Context, t store.Task) {
				rec.TaskFinished(ctx, t)
				enrol.TaskFinished(ctx, t)
			})
			log.Info("CWMP credential enrolment is on: CPEs on the shared credentials get their own (DUET_CWMP_ENROL)")
		} else if s.str("cwmp-auth") == "shared" && s.str("cwmp-enrol") == "auto" {
			log.Warn("CWMP credential enrolment is off: every CPE keeps the shared password; set DUET_CREDENTIALS_KEY to enrol them (DUET_CWMP_ENROL)")
		}
		presence, err := m.presenceSweeper(s, st, b, log)
		if err != nil {
			_ = hl.Close()
			return err
		}
		tasks.OnConnectionRequestFailed(presence.ConnectionRequestFailed)
		if err := tasks.Start(ctx); err != nil {
			_ = hl.Close()
			return err
		}
		started.push(func(context.Context) { tasks.Stop() })
		reg, err := controller.NewRegistry(ctx, controller.RegistryOptions{Bus: b, Store: st, Tasks: tasks, Reconciler: rec, History: cfg.history,
			Durable: durable, AdoptLegacy: legacyDurable, StartTime: installedAt, InactiveThreshold: cfg.retention, Logger: log})
		if err != nil {
			_ = hl.Close()
			return err
		}
		if legacyDurable != "" {
			if err := st.LegacyConsumerAdopted(ctx); err != nil {
				_ = hl.Close()
				return err
			}
		}
		reg.Start()
		started.push(func(context.Context) { reg.Stop() })
		presence.Start()
		started.push(func(context.Context) { presence.Stop() })
		rec.Start()
		started.push(func(context.Context) { rec.Stop() })
		desk, err := controller.StartAdapterDeskWith(controller.AdapterDeskOptions{
			Bus: b, Tasks: tasks, Store: st, CredentialKey: credKey, Enrolments: enrol, Backlog: reg.Backlog, Logger: log})
		if err != nil {
			_ = hl.Close()
			return err
		}
		started.push(func(context.Context) { desk.Stop() })
		pruner := controller.StartHistoryPrunerWith(st, cfg.history, log)
		started.push(func(context.Context) { pruner.Stop() })
		gauge := controller.StartDeviceGauge(st, 0, log)
		started.push(func(context.Context) { gauge.Stop() })
		bulk, err := controller.NewBulkRunner(controller.BulkOptions{Store: st, Tasks: tasks, DefaultRate: cfg.bulkRate, Logger: log})
		if err != nil {
			_ = hl.Close()
			return err
		}
		// After the task queue: resumed batches create tasks at once.
		if err := bulk.Start(ctx); err != nil {
			_ = hl.Close()
			return err
		}
		started.push(func(context.Context) { bulk.Stop() })
		// The API's own pool, with a statement timeout: a costly search
		// cannot take the connections events, tasks and token checks need
		// (issue 15 §8). Tokens are checked on the main pool.
		apiStore, err := store.Open(ctx, store.Options{URL: s.str("database-url"), MaxConns: int32(cfg.apiDBConns),
			StatementTimeout: cfg.apiQueryTimeout, Logger: log})
		if err != nil {
			_ = hl.Close()
			return s.errSetting("database-url", "%v", err)
		}
		started.push(func(context.Context) { apiStore.Close() })
		apiServer = api.New(api.Options{Store: apiStore, Tokens: st, Tasks: tasks, Bulk: bulk, Bus: b, PolicyEnv: policyEnv,
			CredentialKey: credKey, CWMPRealm: realm, Enrolments: enrol, SearchConcurrency: cfg.apiSearches, SecretParams: cfg.secretParams, Files: repo, Logger: log})
		if credKey == nil {
			log.Warn("DUET_CREDENTIALS_KEY is not set: the device credentials API answers 503 and per-device CWMP auth finds no credentials")
		}
		mux.Handle("/api/v1/", apiServer)
		// The web console answers every other path (issue 13).
		con, err := console.New(console.Options{Store: st, Tasks: tasks, Bulk: bulk, Settings: s.consoleSettings(), IdleTimeout: cfg.consoleIdle,
			Credentials:     controller.NewCredentials(controller.CredentialsOptions{Store: st, Key: credKey, Realm: realm, Logger: log}),
			SessionLifetime: cfg.consoleLifetime, OpenAPI: api.OpenAPIDocument(), SecretParams: cfg.secretParams, Logger: log,
			Bus: b, PolicyEnv: policyEnv})
		if err != nil {
			_ = hl.Close()
			return err
		}
		mux.Handle("/", con)
		web = con
	}

	if comps["cwmp"] {
		if err := m.startCWMP(s, cfg, buses.get(bus.RoleCWMP), log, &started, &ls); err != nil {
			_ = hl.Close()
			return err
		}
	}
	if comps["usp-mqtt"] || comps["usp-stomp"] || comps["usp-ws"] {
		// Agent secrets and admission live in PostgreSQL: the controller's
		// pool, or one of the adapter's own when it runs without it.
		var dir *agentDirectory
		if mainStore != nil {
			dir = &agentDirectory{st: mainStore, ck: credKey}
		} else if cfg.uspSec.needsStore() {
			st, err := store.Open(ctx, store.Options{URL: s.str("database-url"), MaxConns: 4, Logger: log})
			if err != nil {
				_ = hl.Close()
				return s.errSetting("database-url", "USP agent authentication and admission need PostgreSQL: %v", err)
			}
			started.push(func(context.Context) { st.Close() })
			dir = &agentDirectory{st: st, ck: credKey}
		}
		if err := m.startUSP(s, cfg, buses.get(bus.RoleUSP), dir, log, &started, &ls); err != nil {
			_ = hl.Close()
			return err
		}
	}

	if err := ensureAdmin(); err != nil {
		_ = hl.Close()
		return err
	}

	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", readyHandler(checks, log))
	mux.Handle("GET /metrics", promhttp.Handler())
	srv := httpServer(cfg, mux, log)
	refusals := ratelog.New(log, 0, 0)
	hl = netguard.LimitPerSource(hl, cfg.httpPerIP, func(src string) {
		refusals.Warn("API connection refused: too many from one address (DUET_HTTP_MAX_CONNS_PER_IP)", "source", src)
	})
	if apiServer != nil {
		// Event streams never end on their own; end them when draining.
		srv.RegisterOnShutdown(apiServer.Close)
	}
	if web != nil {
		srv.RegisterOnShutdown(web.Close)
	}
	apiScheme := "http://"
	if cfg.tls.http != nil {
		hl = tls.NewListener(hl, cfg.tls.http)
		apiScheme = "https://"
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(hl) }()
	started.push(func(ctx context.Context) { _ = srv.Shutdown(ctx) })

	// URLs may carry credentials (nats://user:pass@…): never print them.
	log.Info("duet is up", "version", version(), "http", ls.HTTP, "nats", netguard.RedactURL(ls.NATS), "cwmp", ls.CWMP,
		"mqtt", netguard.RedactURL(ls.MQTT), "stomp", ls.STOMP, "websocket", ls.WS)
	fmt.Fprintf(m.Stdout, "duet %s is up\n", version())
	for _, l := range []struct{ what, where string }{
		{"web console", consoleURL(comps, apiScheme, ls.HTTP)},
		{"API, /healthz, /readyz, /metrics", apiScheme + displayAddr(ls.HTTP)},
		{"NATS bus", netguard.RedactURL(ls.NATS) + buses.note},
		{"CWMP ACS (TR-069)", ls.CWMP},
		{"USP over MQTT (broker)", netguard.RedactURL(ls.MQTT)},
		{"USP over MQTTS (embedded broker)", ls.MQTTS},
		{"USP over STOMP (broker)", ls.STOMP},
		{"USP over WebSocket", ls.WS},
		{"File listener (devices)", ls.Files},
	} {
		if l.where != "" {
			fmt.Fprintf(m.Stdout, "  %-34s %s\n", l.what, l.where)
		}
	}
	if m.Ready != nil {
		m.Ready(ls)
	}
	select {
	case <-ctx.Done():
		stopping = time.Now()
		log.Info("shutting down", "budget_seconds", ShutdownBudget.Seconds())
		return nil
	case err := <-serveErr:
		return fmt.Errorf("http server: %w", err)
	}
}

// startFiles opens the file repository (issue 14) and, with file-addr,
// starts the listener devices transfer files on. Without file-addr the
// repository still serves the API and file operations are refused.
func (m *Main) startFiles(ctx context.Context, s *settings, cfg *serveConfig, st *store.Store, b *bus.Bus, log *slog.Logger, started *stack, ls *Listeners) (*files.Repository, *files.URLs, error) {
	repo, err := files.NewRepository(ctx, files.RepositoryOptions{Store: st, Bus: b, Replicas: cfg.natsReplicas, MaxSize: cfg.fileMaxSize, Logger: log})
	if err != nil {
		return nil, nil, err
	}
	if cfg.fileAddr == "" {
		return repo, nil, nil
	}
	key, err := st.FileSigningKey(ctx)
	if err != nil {
		return nil, nil, err
	}
	signer, err := files.NewSigner(key)
	if err != nil {
		return nil, nil, err
	}
	srv, err := files.NewServer(files.ServerOptions{Repository: repo, Signer: signer, Addr: cfg.fileAddr,
		TLSCert: s.str("file-tls-cert"), TLSKey: s.str("file-tls-key"), Logger: log})
	if err != nil {
		return nil, nil, s.errSetting("file-tls-cert", "%v", err)
	}
	if err := srv.Start(); err != nil {
		return nil, nil, s.errSetting("file-addr", "%v", err)
	}
	started.push(func(ctx context.Context) { _ = srv.Shutdown(ctx) })
	base := cfg.fileURL
	if base == "" {
		scheme := "http://"
		if s.str("file-tls-cert") != "" {
			scheme = "https://"
		}
		_, port, _ := net.SplitHostPort(srv.Addr())
		base = scheme + net.JoinHostPort("127.0.0.1", port)
		log.Warn("DUET_FILE_URL is not set: devices are given file URLs on 127.0.0.1, which only a device on this machine reaches", "url", base)
	}
	ls.Files = base
	return repo, &files.URLs{Signer: signer, Base: base, TTL: cfg.fileURLTTL}, nil
}

func (m *Main) startCWMP(s *settings, cfg *serveConfig, b *bus.Bus, log *slog.Logger, started *stack, ls *Listeners) error {
	opts := cfg.cwmp
	opts.Bus, opts.Logger, opts.TLS = b, log, cfg.tls.cwmp
	acs, err := cwmpadapter.New(opts)
	if err != nil {
		return s.errSetting("cwmp-auth", "%v", err)
	}
	if err := acs.Start(); err != nil {
		return s.errSetting("cwmp-addr", "%v", err)
	}
	started.push(func(ctx context.Context) { _ = acs.Shutdown(ctx) })
	// The adapter itself warns when auth is "none".
	scheme := "http://"
	if cfg.tls.cwmp != nil {
		scheme = "https://"
	}
	ls.CWMP = scheme + displayAddr(acs.Addr()) + s.str("cwmp-path")
	return nil
}

func (m *Main) startUSP(s *settings, cfg *serveConfig, b *bus.Bus, dir *agentDirectory, log *slog.Logger, started *stack, ls *Listeners) error {
	comps := cfg.comps
	sec := &cfg.uspSec
	adm := uspadapter.Admission{Mode: sec.admission, Allow: sec.allow}
	if dir != nil {
		adm.Directory = dir
	}
	ep, err := uspadapter.New(uspadapter.Options{EndpointID: s.str("usp-endpoint-id"), Bus: b, Logger: log,
		KeepAliveInterval: cfg.uspKeepAlive, OnboardValueChange: cfg.uspValueChange,
		ReplyPatterns: sec.replyPatterns, Admission: adm})
	if err != nil {
		return s.errSetting("usp-endpoint-id", "%v", err)
	}
	started.push(func(ctx context.Context) { _ = ep.Shutdown(ctx) })
	if comps["usp-mqtt"] {
		url := s.str("mqtt-url")
		user, pass := s.str("mqtt-username"), s.str("mqtt-password")
		topic := s.str("mqtt-topic")
		if topic == "" {
			topic = "usp/controller/" + ep.ID()
		}
		if url == "" {
			port := cfg.mqttPort
			host := s.str("mqtt-host")
			o := uspmqtt.BrokerOptions{Addr: net.JoinHostPort(host, strconv.Itoa(port)), ControllerTopic: topic, AgentTopic: sec.agentTopic, Logger: log}
			if sec.mqttAuth {
				o.Auth = dir
			}
			if sec.brokerTLS != nil {
				o.TLSAddr, o.TLS = net.JoinHostPort(host, strconv.Itoa(sec.mqttTLSPort)), sec.brokerTLS
			}
			br, err := uspmqtt.StartBroker(o)
			if err != nil {
				return s.errSetting("mqtt-port", "%v (set DUET_MQTT_PORT to a free port, or DUET_MQTT_URL to use that broker)", err)
			}
			started.push(func(context.Context) { _ = br.Close() })
			url = "mqtt://" + net.JoinHostPort(dialHost(host), strconv.Itoa(port))
			if sec.mqttAuth {
				user, pass = br.ControllerCredentials()
			}
			if br.TLSAddr() != "" {
				ls.MQTTS = "mqtts://" + displayAddr(br.TLSAddr())
			}
		}
		t, err := uspmqtt.New(uspmqtt.Options{Endpoint: ep, BrokerURL: url, Topic: topic,
			Username: user, Password: pass, TLS: cfg.tls.mqtt,
			SharedGroup: s.str("mqtt-shared-group"), Logger: log})
		if err != nil {
			return s.errSetting("mqtt-url", "%v", err)
		}
		if err := t.Start(); err != nil {
			return s.errSetting("mqtt-url", "%v", err)
		}
		// Agents that stayed connected to the broker while Duet was down.
		ep.RestoreRoutes(t)
		started.push(func(ctx context.Context) { _ = t.Shutdown(ctx) })
		ls.MQTT = url + " topic " + t.Topic()
	}
	if err := m.startUSPStomp(s, cfg, ep, dir, log, started, ls); err != nil {
		return err
	}
	if err := m.startUSPWebSocket(s, cfg, ep, dir, log, started, ls); err != nil {
		return err
	}
	sec.warnOpen(log)
	return nil
}

// dialHost is where Duet reaches a broker it runs on host: an
// every-interface listener is reached on loopback.
func dialHost(host string) string {
	if ip := net.ParseIP(strings.Trim(host, "[]")); host == "" || (ip != nil && ip.IsUnspecified()) {
		return "127.0.0.1"
	}
	return host
}

type readyCheck struct {
	name string
	fn   func(context.Context) error
}

// readyHandler answers /readyz. The body says only "ready" or "not
// ready": it is public, and a failed check's error names the database
// user, host and name (issue 15 §9). What failed goes to the log.
func readyHandler(checks []readyCheck, log *slog.Logger) http.HandlerFunc {
	rl := ratelog.New(log, 0, 0)
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		ready := true
		for _, c := range checks {
			if err := c.fn(ctx); err != nil {
				ready = false
				rl.Warn("not ready", "check", c.name, "err", err)
			}
		}
		w.Header().Set("Content-Type", "text/plain")
		if !ready {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready\n"))
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	}
}

// httpServer is the API server with its timeouts (issue 15 §8: idle API
// connections stayed open for good). No http.Server ReadTimeout: its
// deadline stays on the connection while the handler runs and, once
// passed, cancels the request's context, which would end event streams
// and task waits. The body gets the deadline instead (bodyDeadline).
func httpServer(c *serveConfig, h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{Handler: bodyDeadline(c.httpRead, h), ReadHeaderTimeout: min(10*time.Second, c.httpRead),
		WriteTimeout: c.httpWrite, IdleTimeout: c.httpIdle, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
}

// bodyDeadline gives reading a request body d, lifted once the body is
// read (or closed), so a client trickling a body cannot hold a connection.
func bodyDeadline(d time.Duration, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody {
			next.ServeHTTP(w, r)
			return
		}
		rc := http.NewResponseController(w)
		_ = rc.SetReadDeadline(time.Now().Add(d))
		var once sync.Once
		lift := func() { once.Do(func() { _ = rc.SetReadDeadline(time.Time{}) }) }
		r.Body = &liftingBody{ReadCloser: r.Body, lift: lift}
		next.ServeHTTP(w, r)
	})
}

type liftingBody struct {
	io.ReadCloser
	lift func()
}

func (b *liftingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.lift()
	}
	return n, err
}

func (b *liftingBody) Close() error {
	b.lift()
	return b.ReadCloser.Close()
}

// displayAddr turns ":8080" / "[::]:8080" into "localhost:8080" for humans.
func displayAddr(a string) string {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return a
	}
	if host == "" || host == "::" || host == "0.0.0.0" {
		host = "localhost"
	}
	return net.JoinHostPort(host, port)
}

// roundSeconds is d in seconds to the millisecond, for log lines (slog
// would print a time.Duration in nanoseconds in JSON).
func roundSeconds(d time.Duration) float64 {
	return float64(d.Round(time.Millisecond)) / float64(time.Second)
}

// consoleURL is where the web console is, when this process runs the
// controller ("" otherwise).
func consoleURL(comps map[string]bool, scheme, httpAddr string) string {
	if !comps["controller"] {
		return ""
	}
	return scheme + displayAddr(httpAddr) + "/"
}
