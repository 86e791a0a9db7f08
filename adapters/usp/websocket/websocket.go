// Package websocket is the USP WebSocket binding (TR-369 "WebSocket Binding") on the
// Controller side: a server agents dial, with subprotocol v1.usp and the
// agent's endpoint ID in the ?eid= query parameter.
//
// Default listen address ":8082": clear of Duet's HTTP API (8080), the CWMP
// ACS (7547), MQTT (1883), NATS (4222) and STOMP (61613).
package websocket

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/duet-dm/duet/adapters/usp"
	"github.com/duet-dm/duet/pkg/netguard"
	pkgusp "github.com/duet-dm/duet/pkg/usp"
)

// DefaultAddr is the default listen address.
const DefaultAddr = ":8082"

var (
	metricOpen = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "duet_usp_websocket_connections_open_count",
		Help: "Open USP WebSocket connections.",
	})
	metricRejected = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_usp_websocket_rejected_total",
		Help: "WebSocket connections refused or closed by us, by reason (no_subprotocol, no_eid, too_many, too_many_per_source, unauthenticated, takeover, bad_record, replaced, text_frame, too_large, idle, not_admitted: held for approval, then rejected).",
	}, []string{"reason"})
)

// Options configure the WebSocket server.
type Options struct {
	// Endpoint receives the records. Required.
	Endpoint *usp.Endpoint
	// Addr to listen on; default DefaultAddr (":8082"). "127.0.0.1:0" picks
	// a free port (see Transport.Addr).
	Addr string
	// Path of the USP resource; default "/usp".
	Path string
	// TLSCertFile and TLSKeyFile enable wss:// when both are set.
	TLSCertFile string
	TLSKeyFile  string
	// ClientCAFile (PEM), with TLS, verifies client certificates when
	// agents present them: an agent whose certificate names it
	// (subjectAltName urn:bbf:usp:id:<endpoint-id>, TR-369 "Endpoint
	// Identifier") is authenticated without a token.
	ClientCAFile string
	// Auth checks bearer tokens (Authorization: Bearer <agent secret>)
	// against the ?eid= the agent claims.
	Auth usp.AgentAuthenticator
	// RequireAuth refuses (401) agents that present neither a valid
	// certificate nor a valid token. Without it an unauthenticated agent
	// is served, but never replaces a connection of the same endpoint ID
	// (409): otherwise anyone could take an agent's session with
	// ?eid=<victim> (issue 15 §2).
	RequireAuth bool
	// TLS, when set, enables wss:// instead of the files (`duet serve`
	// passes a pkg/tlsutil configuration that reloads the certificate).
	TLS *tls.Config
	// MaxConnections bounds open connections; further upgrades get 503.
	// Default 10000.
	MaxConnections int
	// MaxMessageBytes bounds one record; a larger message closes the
	// connection with 1009. Default 1 MiB.
	MaxMessageBytes int64
	// PingInterval is how often we ping an idle agent; default 30 s.
	PingInterval time.Duration
	// IdleTimeout closes a connection with no frame at all (data, ping or
	// pong) for this long; default 3 × PingInterval.
	IdleTimeout time.Duration
	// WriteTimeout bounds one frame write; default 10 s.
	WriteTimeout time.Duration
	// HandshakeTimeout bounds reading the upgrade request, and
	// HTTPIdleTimeout how long a connection that was never upgraded may sit
	// idle; defaults 30 s each (issue 15 §8).
	HandshakeTimeout time.Duration
	HTTPIdleTimeout  time.Duration
	// MaxConnsPerSource bounds the connections one source IP holds at once
	// (counted at accept, so before any upgrade); 0 is no limit. Agents
	// behind one carrier-grade NAT share an address: keep it generous.
	MaxConnsPerSource int
	Logger            *slog.Logger
}

// Transport is the WebSocket MTP.
type Transport struct {
	opts     Options
	ep       *usp.Endpoint
	log      *slog.Logger
	upgrader websocket.Upgrader

	mu      sync.Mutex
	conns   map[string]*conn // by endpoint ID: at most one session per agent
	srv     *http.Server
	ln      net.Listener
	started bool
	stopped bool
	open    atomic.Int64
	wg      sync.WaitGroup
	// pingStop ends runPinger (Shutdown).
	pingStop chan struct{}
	// pings bounds the pings being written at once.
	pings chan struct{}
}

var _ usp.MTP = (*Transport)(nil)

type conn struct {
	ws      *websocket.Conn
	eid     string
	peer    string
	writeMu sync.Mutex
	done    chan struct{}
	once    sync.Once
	// nextPing is when the pinger (runPinger) pings next, in unix nanos.
	nextPing atomic.Int64
	// authed: the agent proved its endpoint ID (certificate or token).
	authed bool
	// replaced: a newer connection from the same agent took over; this one
	// only drains what is already in flight.
	replaced atomic.Bool
}

func (c *conn) close(code int, reason string, wt time.Duration) {
	c.once.Do(func() {
		_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(wt))
		_ = c.ws.Close()
		close(c.done)
	})
}

// readBufferSize is each connection's read buffer: enough for a frame
// header and a small record.
const readBufferSize = 1024

// writeBuffers lends write buffers to every connection of the process,
// for the length of one message.
var writeBuffers sync.Pool

// New validates the options.
func New(opts Options) (*Transport, error) {
	if opts.Endpoint == nil {
		return nil, errors.New("usp/websocket: Options.Endpoint is required")
	}
	if opts.Addr == "" {
		opts.Addr = DefaultAddr
	}
	if opts.Path == "" {
		opts.Path = "/usp"
	}
	if (opts.TLSCertFile == "") != (opts.TLSKeyFile == "") {
		return nil, errors.New("usp/websocket: set both Options.TLSCertFile and Options.TLSKeyFile, or neither")
	}
	if opts.ClientCAFile != "" && opts.TLSCertFile == "" {
		return nil, errors.New("usp/websocket: Options.ClientCAFile needs TLSCertFile and TLSKeyFile")
	}
	if opts.RequireAuth && opts.Auth == nil && opts.ClientCAFile == "" {
		return nil, errors.New("usp/websocket: Options.RequireAuth needs Auth (tokens) or ClientCAFile (certificates)")
	}
	if opts.MaxConnections == 0 {
		opts.MaxConnections = 10000
	}
	if opts.MaxMessageBytes == 0 {
		opts.MaxMessageBytes = 1 << 20
	}
	if opts.MaxMessageBytes > usp.MaxRecordBytes {
		return nil, fmt.Errorf("usp/websocket: Options.MaxMessageBytes %d is above usp.MaxRecordBytes %d", opts.MaxMessageBytes, usp.MaxRecordBytes)
	}
	if opts.PingInterval == 0 {
		opts.PingInterval = 30 * time.Second
	}
	if opts.IdleTimeout == 0 {
		opts.IdleTimeout = 3 * opts.PingInterval
	}
	if opts.WriteTimeout == 0 {
		opts.WriteTimeout = 10 * time.Second
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = 30 * time.Second
	}
	if opts.HTTPIdleTimeout <= 0 {
		opts.HTTPIdleTimeout = 30 * time.Second
	}
	if opts.MaxConnections < 0 || opts.MaxMessageBytes < 0 || opts.PingInterval < 0 || opts.IdleTimeout < 0 || opts.WriteTimeout < 0 {
		return nil, errors.New("usp/websocket: limits and timeouts must be positive")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	t := &Transport{opts: opts, ep: opts.Endpoint, log: opts.Logger.With("component", "usp-websocket"), conns: map[string]*conn{},
		pings: make(chan struct{}, maxPingsAtOnce)}
	t.upgrader = websocket.Upgrader{
		Subprotocols: []string{pkgusp.WebSocketSubprotocol},
		// Memory per agent (docs/scaling.md): an idle connection keeps
		// only a small read buffer (a record larger than it is read
		// straight into the message); the write buffer is taken from a
		// pool for the length of one write. Without them gorilla keeps
		// 4 KiB + 4 KiB per connection for as long as it is open.
		ReadBufferSize:  readBufferSize,
		WriteBufferSize: 4096,
		WriteBufferPool: &writeBuffers,
		// Agents are not browsers; Origin carries no meaning here.
		CheckOrigin: func(*http.Request) bool { return true },
	}
	return t, nil
}

// Name implements usp.MTP.
func (t *Transport) Name() string { return "websocket" }

// Addr is the address actually listened on (after Start).
func (t *Transport) Addr() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ln != nil {
		return t.ln.Addr().String()
	}
	return t.opts.Addr
}

// Start listens and serves in the background. A port in use or a bad
// certificate is reported here.
func (t *Transport) Start() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.started {
		return errors.New("usp/websocket: already started")
	}
	ln, err := net.Listen("tcp", t.opts.Addr)
	if err != nil {
		return fmt.Errorf("usp/websocket: cannot listen on %s (port in use?): %w", t.opts.Addr, err)
	}
	if t.opts.TLS != nil {
		ln = tls.NewListener(ln, t.opts.TLS)
	} else if t.opts.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.opts.TLSCertFile, t.opts.TLSKeyFile)
		if err != nil {
			_ = ln.Close()
			return fmt.Errorf("usp/websocket: TLS certificate %s / key %s: %w", t.opts.TLSCertFile, t.opts.TLSKeyFile, err)
		}
		cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12} // TR-369 "Message Transfer Protocols"
		if t.opts.ClientCAFile != "" {
			pem, err := os.ReadFile(t.opts.ClientCAFile)
			pool := x509.NewCertPool()
			if err != nil || !pool.AppendCertsFromPEM(pem) {
				_ = ln.Close()
				return fmt.Errorf("usp/websocket: client CA file %s: no PEM certificate (%v)", t.opts.ClientCAFile, err)
			}
			cfg.ClientCAs, cfg.ClientAuth = pool, tls.VerifyClientCertIfGiven
		}
		ln = tls.NewListener(ln, cfg)
	}
	ln = netguard.LimitPerSource(ln, t.opts.MaxConnsPerSource, func(string) {
		metricRejected.WithLabelValues("too_many_per_source").Inc()
	})
	mux := http.NewServeMux()
	mux.HandleFunc(t.opts.Path, t.serveWS)
	// ReadTimeout covers the upgrade request only: after the hijack the
	// connection's deadlines are the idle and write timeouts above.
	t.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: t.opts.HandshakeTimeout,
		IdleTimeout: t.opts.HTTPIdleTimeout, ErrorLog: slog.NewLogLogger(t.log.Handler(), slog.LevelDebug)}
	t.ln = ln
	t.started = true
	t.pingStop = make(chan struct{})
	t.wg.Add(2)
	go func() {
		defer t.wg.Done()
		if err := t.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.log.Error("websocket server stopped", "err", err)
		}
	}()
	go t.runPinger()
	t.log.Info("usp websocket listening", "addr", ln.Addr().String(), "path", t.opts.Path, "tls", t.opts.TLS != nil || t.opts.TLSCertFile != "")
	return nil
}

func (t *Transport) reject(w http.ResponseWriter, status int, reason, msg string) {
	metricRejected.WithLabelValues(reason).Inc()
	http.Error(w, msg, status)
}

func (t *Transport) serveWS(w http.ResponseWriter, r *http.Request) {
	// TR-369 "WebSocket Binding": the server refuses a request without v1.usp.
	if !slices.Contains(websocket.Subprotocols(r), pkgusp.WebSocketSubprotocol) {
		t.reject(w, http.StatusBadRequest, "no_subprotocol", "Sec-WebSocket-Protocol must offer "+pkgusp.WebSocketSubprotocol)
		return
	}
	eid, ok := pkgusp.ParseWebSocketEID(r.URL.RawQuery)
	if !ok {
		t.reject(w, http.StatusBadRequest, "no_eid", "query parameter eid (the agent's endpoint ID) is required")
		return
	}
	authed, reason := t.authenticate(r, eid)
	if reason != "" {
		usp.CountAgentRefused("websocket", reason)
		w.Header().Set("WWW-Authenticate", `Bearer realm="duet-usp"`)
		t.reject(w, http.StatusUnauthorized, "unauthenticated", "authenticate with a client certificate naming the endpoint ID or Authorization: Bearer <agent secret>")
		return
	}
	if !authed {
		t.mu.Lock()
		old := t.conns[eid]
		t.mu.Unlock()
		if old != nil {
			usp.CountAgentRefused("websocket", usp.RefuseTakeover)
			t.log.Warn("unauthenticated websocket connection for a connected agent refused", "device", eid, "peer", r.RemoteAddr, "connected_peer", old.peer)
			w.Header().Set("Retry-After", "30")
			t.reject(w, http.StatusConflict, "takeover", "endpoint already connected; authenticate to replace its connection")
			return
		}
	}
	if n := t.open.Add(1); n > int64(t.opts.MaxConnections) {
		t.open.Add(-1)
		w.Header().Set("Retry-After", "30")
		t.reject(w, http.StatusServiceUnavailable, "too_many", "too many connections")
		return
	}
	ws, err := t.upgrader.Upgrade(w, r, nil) // echoes v1.usp
	if err != nil {
		t.open.Add(-1)
		metricRejected.WithLabelValues("upgrade").Inc()
		return // Upgrade already answered
	}
	metricOpen.Inc()
	c := &conn{ws: ws, eid: eid, peer: r.RemoteAddr, done: make(chan struct{}), authed: authed}
	t.mu.Lock()
	if t.stopped {
		t.mu.Unlock()
		c.close(websocket.CloseGoingAway, "shutting down", t.opts.WriteTimeout)
		t.open.Add(-1)
		metricOpen.Dec()
		return
	}
	old := t.conns[eid]
	if old != nil && !authed {
		// Only a proven identity may take a connection over; an agent
		// without credentials waits until its old connection is gone
		// (closed, or the idle timeout).
		t.mu.Unlock()
		usp.CountAgentRefused("websocket", usp.RefuseTakeover)
		t.log.Warn("unauthenticated websocket connection for a connected agent refused", "device", eid, "peer", r.RemoteAddr, "connected_peer", old.peer)
		metricRejected.WithLabelValues("takeover").Inc()
		c.close(websocket.ClosePolicyViolation, "endpoint already connected; authenticate to replace it", t.opts.WriteTimeout)
		t.open.Add(-1)
		metricOpen.Dec()
		return
	}
	t.conns[eid] = c
	t.wg.Add(1)
	t.mu.Unlock()
	if old != nil {
		// At most one session per endpoint pair (TR-369 "WebSocket Binding"): the new
		// connection wins, the agent evidently lost the old one.
		metricRejected.WithLabelValues("replaced").Inc()
		// Don't cut the old socket: frames the agent wrote on it just before
		// it redialled are still unread — a Reboot()'s OperateResp is sent
		// right before the restart (docs/testing.md). Ask it to close and let
		// its reader drain for a moment; its records are still handled.
		_ = old.ws.WriteControl(websocket.CloseMessage,
			websocket.FormatCloseMessage(websocket.ClosePolicyViolation, "replaced by a new connection"),
			time.Now().Add(t.opts.WriteTimeout))
		old.replaced.Store(true)
		_ = old.ws.SetReadDeadline(time.Now().Add(replacedDrain))
	}
	// The read loop runs in a goroutine of its own, tracked by wg, and
	// the handler returns: net/http then lets go of what it kept for the
	// request (its connection state, the request, a 4 KiB read buffer),
	// which a read loop on the handler's goroutine kept for as long as
	// the agent stays connected (docs/scaling.md, "Memory per agent").
	go func() {
		defer t.wg.Done()
		t.serveConn(c)
	}()
}

// authenticate finds who the agent proved to be: a verified client
// certificate naming eid, or a bearer token that is eid's secret.
// reason is non-empty when the request must be refused: credentials
// that do not prove eid, or none with RequireAuth.
func (t *Transport) authenticate(r *http.Request, eid string) (authed bool, reason string) {
	if r.TLS != nil {
		if certEID, ok := usp.EndpointIDFromTLS(*r.TLS); ok {
			if certEID != eid {
				return false, usp.RefuseBadLogin
			}
			return true, ""
		}
	}
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, token, _ := strings.Cut(h, " ")
		if !strings.EqualFold(scheme, "Bearer") {
			return false, usp.RefuseBadLogin
		}
		if reason := usp.CheckAgentLogin(r.Context(), t.opts.Auth, eid, strings.TrimSpace(token)); reason != "" {
			return false, reason
		}
		return true, ""
	}
	if t.opts.RequireAuth {
		return false, usp.RefuseBadLogin
	}
	return false, ""
}

// replacedDrain is how long a replaced connection's reader may still
// deliver frames the agent sent before it redialled.
const replacedDrain = 2 * time.Second

func (t *Transport) serveConn(c *conn) {
	defer func() {
		c.close(websocket.CloseNormalClosure, "", t.opts.WriteTimeout)
		t.open.Add(-1)
		metricOpen.Dec()
		t.mu.Lock()
		current := t.conns[c.eid] == c
		if current {
			delete(t.conns, c.eid)
		}
		t.mu.Unlock()
		if current {
			t.ep.Disconnected(t, c.eid)
		}
	}()
	ws := c.ws
	ws.SetReadLimit(t.opts.MaxMessageBytes)
	alive := func() {
		if !c.replaced.Load() { // a replaced connection only drains
			_ = ws.SetReadDeadline(time.Now().Add(t.opts.IdleTimeout))
		}
	}
	alive()
	// Answer pings (obuspa closes after 2 missing pongs, TR-369 "WebSocket Binding").
	ws.SetPingHandler(func(data string) error {
		alive()
		err := ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(t.opts.WriteTimeout))
		if errors.Is(err, websocket.ErrCloseSent) {
			return nil
		}
		return err
	})
	ws.SetPongHandler(func(string) error { alive(); return nil })
	// Our own pings keep NATs open and detect dead peers that never ping;
	// one goroutine sends them for every connection (runPinger).
	c.nextPing.Store(time.Now().Add(t.opts.PingInterval).UnixNano())
	from := usp.Address{Reply: c.eid, Peer: c.peer, EndpointID: c.eid}
	for {
		mt, data, err := ws.ReadMessage() // reassembles fragmented messages
		if err != nil {
			switch {
			case errors.Is(err, websocket.ErrReadLimit):
				metricRejected.WithLabelValues("too_large").Inc()
				c.close(websocket.CloseMessageTooBig, "record too large", t.opts.WriteTimeout)
			case isTimeout(err):
				metricRejected.WithLabelValues("idle").Inc()
			}
			return
		}
		alive()
		if mt != websocket.BinaryMessage {
			// Each record goes in one binary frame (TR-369 "WebSocket Binding").
			metricRejected.WithLabelValues("text_frame").Inc()
			c.close(websocket.CloseUnsupportedData, "records are binary frames", t.opts.WriteTimeout)
			return
		}
		err = t.handleRecord(from, data)
		var re *usp.RecordError
		if errors.As(err, &re) {
			switch re.Reason {
			case usp.DropGarbage, usp.DropInvalidRecord, usp.DropEIDMismatch, usp.DropBadFromID, usp.DropTooLarge:
				// TR-369 "WebSocket Binding": a bad record closes with 1003.
				metricRejected.WithLabelValues("bad_record").Inc()
				c.close(websocket.CloseUnsupportedData, re.Reason, t.opts.WriteTimeout)
				return
			}
		}
	}
}

// handleRecord hands one record to the endpoint on a goroutine of its own
// and waits for it, so records of one agent are still handled in order.
// The read loop's goroutine, one per connected agent and parked in a read
// nearly all its life, then keeps the small stack that read needs rather
// than the one handling a record grows to (and the runtime seldom shrinks
// back): about 4 KiB less per agent (docs/scaling.md, "Memory per agent").
func (t *Transport) handleRecord(from usp.Address, data []byte) error {
	done := make(chan error, 1)
	go func() { done <- t.ep.HandleRecord(t, from, data) }()
	return <-done
}

// maxPingsAtOnce bounds the ping writes in progress: a peer that stopped
// reading holds its write for up to WriteTimeout.
const maxPingsAtOnce = 64

// runPinger pings each connection every PingInterval, from one goroutine
// for the whole server rather than a goroutine and a ticker per
// connection (docs/scaling.md, "Memory per agent"). Each write runs in a
// short-lived goroutine, so a peer that stopped reading delays no other.
func (t *Transport) runPinger() {
	defer t.wg.Done()
	step := min(time.Second, t.opts.PingInterval/4)
	tick := time.NewTicker(step)
	defer tick.Stop()
	var due []*conn
	for {
		select {
		case <-t.pingStop:
			return
		case now := <-tick.C:
			due = due[:0]
			t.mu.Lock()
			for _, c := range t.conns {
				if c.nextPing.Load() <= now.UnixNano() {
					due = append(due, c)
				}
			}
			t.mu.Unlock()
			for _, c := range due {
				select {
				case t.pings <- struct{}{}:
				default:
					continue // busy: pinged on a later tick
				}
				c.nextPing.Store(now.Add(t.opts.PingInterval).UnixNano())
				t.wg.Add(1)
				go func() {
					defer t.wg.Done()
					defer func() { <-t.pings }()
					if err := c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(t.opts.WriteTimeout)); err != nil {
						c.close(websocket.CloseGoingAway, "ping failed", t.opts.WriteTimeout)
					}
				}()
			}
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Send writes one record as one binary frame on the agent's connection.
func (t *Transport) Send(_ context.Context, to usp.Address, record []byte) error {
	eid := to.EndpointID
	if eid == "" {
		eid = to.Reply
	}
	t.mu.Lock()
	c := t.conns[eid]
	t.mu.Unlock()
	if c == nil {
		return fmt.Errorf("usp/websocket: %s has no open connection", eid)
	}
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	_ = c.ws.SetWriteDeadline(time.Now().Add(t.opts.WriteTimeout))
	if err := c.ws.WriteMessage(websocket.BinaryMessage, record); err != nil {
		c.close(websocket.CloseGoingAway, "write failed", t.opts.WriteTimeout)
		return fmt.Errorf("usp/websocket: write to %s: %w", eid, err)
	}
	return nil
}

// DisconnectAgent closes eid's connection with 1008 (policy violation):
// an agent held for approval that an operator rejected (usp.Disconnecter).
func (t *Transport) DisconnectAgent(eid, why string) {
	t.mu.Lock()
	c := t.conns[eid]
	t.mu.Unlock()
	if c != nil {
		metricRejected.WithLabelValues("not_admitted").Inc()
		c.close(websocket.ClosePolicyViolation, why, t.opts.WriteTimeout)
	}
}

var _ usp.Disconnecter = (*Transport)(nil)

// Shutdown stops listening, closes every connection (1001) and waits for
// their goroutines. Safe to call twice.
func (t *Transport) Shutdown(ctx context.Context) error {
	t.mu.Lock()
	if t.stopped || !t.started {
		t.stopped = true
		t.mu.Unlock()
		return nil
	}
	t.stopped = true
	srv := t.srv
	conns := make([]*conn, 0, len(t.conns))
	for _, c := range t.conns {
		conns = append(conns, c)
	}
	t.mu.Unlock()
	close(t.pingStop)
	err := srv.Shutdown(ctx) // hijacked connections are ours to close
	for _, c := range conns {
		c.close(websocket.CloseGoingAway, "controller shutting down", t.opts.WriteTimeout)
	}
	done := make(chan struct{})
	go func() { t.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	return err
}
