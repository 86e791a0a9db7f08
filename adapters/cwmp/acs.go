package cwmp

import (
	"context"
	"crypto/md5"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/netguard"
	"github.com/duet-dm/duet/pkg/ratelog"
)

// Auth modes for Options.Auth (TR-069 §3.4.4).
const (
	AuthNone      = "none"
	AuthShared    = "shared"
	AuthPerDevice = "per-device"
)

// Options configure the ACS. Zero values take the documented defaults;
// New rejects anything else that is invalid, naming the option.
type Options struct {
	// Addr to listen on; default ":7547".
	Addr string
	// Path of the ACS URL; default "/". Other paths get 404.
	Path string
	// TLSCertFile and TLSKeyFile enable HTTPS (both or neither).
	TLSCertFile, TLSKeyFile string
	// TLS, when set, enables HTTPS instead of the files: `duet serve`
	// passes a pkg/tlsutil configuration that reloads the certificate and,
	// with DUET_CWMP_TLS_CLIENT_CA, requires CPEs' client certificates.
	TLS *tls.Config
	// Auth is required: "none", "shared" or "per-device".
	Auth string
	// Username and Password of the shared mode.
	Username, Password string
	// Enrol: in the shared mode, also ask the controller for each device's
	// credentials; a device with its own (enrolled, or set through the
	// API) is refused the shared ones, and an enrolment's pending ones are
	// accepted (docs/guide-cwmp.md, "Enrolment"). In the per-device mode
	// pending ones are always accepted.
	Enrol bool
	// Realm of the HTTP challenge; default "Duet".
	Realm string
	// AllowBasicOverHTTP offers and accepts Basic on plain HTTP. Off by
	// default: Basic is for TLS only (TR-069 §3.4.4).
	AllowBasicOverHTTP bool
	// AllowDigestWithoutQop accepts the RFC 2069 Digest form without qop.
	// Off by default: without qop there is no nonce count, so a captured
	// Authorization header can be replayed for the nonce's life.
	AllowDigestWithoutQop bool
	// MaxSessions bounds concurrent sessions; past it new sessions get 503
	// with Retry-After (docs/cwmp-interop.md #31). Default 1000.
	MaxSessions int
	// MaxSessionsPerDevice bounds the open sessions of one device identity
	// (a CPE has one at a time, TR-069 §3.7); past it that identity's new
	// sessions get 503, other devices' are unaffected. Default 2.
	MaxSessionsPerDevice int
	// AllowSources, when not empty, are the only networks CPEs may
	// connect from; others get 403 and are counted and logged.
	AllowSources []netip.Prefix
	// InformRateDevice and InformRateSource bound new sessions per device
	// identity and per source address (503 + Retry-After past them).
	// Defaults 20/min burst 20 per device, 3000/min burst 1000 per source
	// (many CPEs may share one address behind NAT); PerMinute < 0 = off.
	InformRateDevice, InformRateSource Rate
	// MaxBacklog sheds new sessions (503 with Retry-After) while the
	// controllers have more device events than this yet to apply (asked
	// every BacklogPoll on the bus): the devices wait instead of the
	// registry falling further behind (issue 17). 0 = off.
	MaxBacklog uint64
	// BacklogPoll is how often the backlog is asked; default 1 s.
	BacklogPoll time.Duration
	// MinInformInterval refuses (503) a device that informs again sooner
	// than this after its last accepted Inform. 0 = off.
	MinInformInterval time.Duration
	// SessionTimeout is the per-exchange wait: for the CPE's next POST and
	// for each controller request. Default 30 s (TR-069 §3.7).
	SessionTimeout time.Duration
	// MaxRPCsPerSession bounds ACS→CPE RPCs in one session. Default 256.
	MaxRPCsPerSession int
	// MaxBodyBytes bounds a (decompressed) request body; default 4 MiB.
	// Larger bodies get 413.
	MaxBodyBytes int64
	// ConnReqTimeout bounds each connection request GET; default 2 s
	// (TR-069 §3.2.2).
	ConnReqTimeout time.Duration
	// ConnReqUsername and ConnReqPassword are the shared connection-request
	// credentials, used for every device the controller holds none for
	// (TR-069 §3.2.2: ManagementServer.ConnectionRequestUsername/Password).
	// Both or neither.
	ConnReqUsername, ConnReqPassword string
	// ConnReqTargets decides which addresses connection requests may go
	// to, checked on the resolved address at dial time; nil is the default
	// (no loopback, link-local, unspecified or multicast: issue 15 §7).
	ConnReqTargets *netguard.Targets
	// AdapterID names this instance in events (Event.source); default
	// "cwmp-<random>".
	AdapterID string
	// Bus is required.
	Bus    *bus.Bus
	Logger *slog.Logger
}

func (o *Options) setDefaults() error {
	if o.Addr == "" {
		o.Addr = ":7547"
	}
	if o.Path == "" {
		o.Path = "/"
	}
	if o.Path[0] != '/' {
		return fmt.Errorf("cwmp: Path %q must start with /", o.Path)
	}
	if (o.TLSCertFile == "") != (o.TLSKeyFile == "") {
		return errors.New("cwmp: TLSCertFile and TLSKeyFile must be set together")
	}
	switch o.Auth {
	case AuthNone, AuthPerDevice:
	case AuthShared:
		if o.Username == "" || o.Password == "" {
			return errors.New(`cwmp: Auth "shared" needs Username and Password`)
		}
		if err := CheckSharedPassword(o.Password); err != nil {
			return fmt.Errorf("cwmp: Password: %w", err)
		}
	case "":
		return errors.New("cwmp: Auth is required: one of none, shared, per-device")
	default:
		return fmt.Errorf("cwmp: Auth %q is not one of none, shared, per-device", o.Auth)
	}
	if o.Realm == "" {
		o.Realm = "Duet"
	}
	if o.MaxSessions == 0 {
		o.MaxSessions = 1000
	}
	if o.MaxSessions < 0 {
		return fmt.Errorf("cwmp: MaxSessions %d must be positive", o.MaxSessions)
	}
	if o.MaxSessionsPerDevice == 0 {
		o.MaxSessionsPerDevice = 2
	}
	if o.MaxSessionsPerDevice < 0 {
		return fmt.Errorf("cwmp: MaxSessionsPerDevice %d must be positive", o.MaxSessionsPerDevice)
	}
	for _, r := range []struct {
		name string
		r    *Rate
		def  Rate
	}{{"InformRateDevice", &o.InformRateDevice, Rate{20, 20}}, {"InformRateSource", &o.InformRateSource, Rate{3000, 1000}}} {
		switch {
		case *r.r == Rate{}:
			*r.r = r.def
		case r.r.PerMinute > 0 && r.r.Burst < 1:
			return fmt.Errorf("cwmp: %s burst %d must be at least 1", r.name, r.r.Burst)
		}
	}
	if o.BacklogPoll == 0 {
		o.BacklogPoll = time.Second
	}
	if o.BacklogPoll < 0 {
		return fmt.Errorf("cwmp: BacklogPoll %s must be positive", o.BacklogPoll)
	}
	if o.MinInformInterval < 0 {
		return fmt.Errorf("cwmp: MinInformInterval %s must not be negative", o.MinInformInterval)
	}
	if o.SessionTimeout == 0 {
		o.SessionTimeout = 30 * time.Second
	}
	if o.SessionTimeout < 0 {
		return fmt.Errorf("cwmp: SessionTimeout %s must be positive", o.SessionTimeout)
	}
	if o.MaxRPCsPerSession == 0 {
		o.MaxRPCsPerSession = 256
	}
	if o.MaxRPCsPerSession < 0 {
		return fmt.Errorf("cwmp: MaxRPCsPerSession %d must be positive", o.MaxRPCsPerSession)
	}
	if o.MaxBodyBytes == 0 {
		o.MaxBodyBytes = 4 << 20
	}
	if o.MaxBodyBytes < 0 || o.MaxBodyBytes > 1<<30 {
		return fmt.Errorf("cwmp: MaxBodyBytes %d must be between 1 and 1 GiB", o.MaxBodyBytes)
	}
	if (o.ConnReqUsername == "") != (o.ConnReqPassword == "") {
		return errors.New("cwmp: ConnReqUsername and ConnReqPassword must be set together")
	}
	if o.ConnReqTimeout == 0 {
		o.ConnReqTimeout = 2 * time.Second
	}
	if o.ConnReqTimeout < 0 {
		return fmt.Errorf("cwmp: ConnReqTimeout %s must be positive", o.ConnReqTimeout)
	}
	if o.AdapterID == "" {
		o.AdapterID = "cwmp-" + bus.NewID()[:8]
	}
	if o.Bus == nil {
		return errors.New("cwmp: Bus is required")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
}

// ACS is the TR-069 Auto-Configuration Server adapter: an HTTP server
// running CWMP sessions, translating bus commands into RPCs, publishing
// device events, and sending connection requests.
type ACS struct {
	o   Options
	log *slog.Logger
	// refusals logs what a peer can cause at will (bad requests, failed
	// logins) within a budget (issue 15 §8).
	refusals *ratelog.Logger
	shared   string // HA1 of the shared credentials
	mux      *http.ServeMux

	sessions *sessionTable
	nonces   *nonceStore
	informs  *informClock
	perDev   *buckets // inform rate per device identity
	perSrc   *buckets // inform rate per source address
	connReq  *connectionRequester

	mu       sync.Mutex
	srv      *http.Server
	ln       net.Listener
	sub      *bus.Subscription
	started  bool
	shutdown bool
	done     chan struct{} // closed by Shutdown; stops the reaper
	// backlogged: the controllers' last answer was above MaxBacklog.
	backlogged atomic.Bool
	wg         sync.WaitGroup
}

// New validates o and builds an ACS. Nothing listens until Start.
func New(o Options) (*ACS, error) {
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	a := &ACS{
		o:        o,
		log:      o.Logger.With("component", "cwmp", "adapter", o.AdapterID),
		sessions: newSessionTable(o.MaxSessions, o.MaxSessionsPerDevice),
		perDev:   newBuckets(o.InformRateDevice, 100000),
		perSrc:   newBuckets(o.InformRateSource, 100000),
		nonces:   newNonceStore(4*o.MaxSessions+1024, 5*time.Minute),
		informs:  newInformClock(o.MinInformInterval, 100000),
		done:     make(chan struct{}),
	}
	if o.Auth == AuthShared {
		a.shared = ha1(o.Username, o.Realm, o.Password)
	}
	a.connReq = newConnectionRequester(o.ConnReqTimeout, o.ConnReqTargets)
	a.refusals = ratelog.New(a.log, 0, 0)
	a.mux = http.NewServeMux()
	a.mux.HandleFunc(o.Path, a.serveHTTP)
	return a, nil
}

func ha1(user, realm, pass string) string {
	h := md5.Sum([]byte(user + ":" + realm + ":" + pass))
	return hex.EncodeToString(h[:])
}

// Handler is the ACS's HTTP handler. It keys sessions by TCP connection
// only when served by Start's server (which tags connections); mounted
// elsewhere it falls back to the session cookie.
func (a *ACS) Handler() http.Handler { return a.mux }

// Start binds the listener, starts serving, subscribes to connection
// request commands and starts the idle-session reaper.
func (a *ACS) Start() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.shutdown {
		return errors.New("cwmp: Start after Shutdown")
	}
	if a.started {
		return errors.New("cwmp: already started")
	}
	if a.o.Auth == AuthNone {
		a.log.Warn("CWMP authentication is off (Auth=none): any client can claim any device identity")
	}
	tlsConf := a.o.TLS
	if tlsConf == nil && a.o.TLSCertFile != "" {
		// Load now so a bad certificate fails Start, not a goroutine.
		cert, err := tls.LoadX509KeyPair(a.o.TLSCertFile, a.o.TLSKeyFile)
		if err != nil {
			return fmt.Errorf("cwmp: TLSCertFile/TLSKeyFile: %w", err)
		}
		tlsConf = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	ln, err := net.Listen("tcp", a.o.Addr)
	if err != nil {
		return fmt.Errorf("cwmp: listen on %s: %w", a.o.Addr, err)
	}
	if tlsConf != nil {
		ln = tls.NewListener(ln, tlsConf)
	}
	sub, err := a.o.Bus.ServeCommands(bus.CommandWildcard(devicemodel.ProtocolCWMP), "duet-cwmp", a.handleCommand)
	if err != nil {
		ln.Close()
		return fmt.Errorf("cwmp: subscribe commands: %w", err)
	}
	a.ln, a.sub = ln, sub
	a.srv = &http.Server{
		Handler:           a.mux,
		ConnContext:       tagConn,
		ReadHeaderTimeout: a.o.SessionTimeout,
		ReadTimeout:       2 * a.o.SessionTimeout,
		WriteTimeout:      2 * a.o.SessionTimeout,
		// GenieACS drops connections still open after 300 s (TR-069 §3.7);
		// between sessions an idle keep-alive connection is closed sooner.
		IdleTimeout: 2 * a.o.SessionTimeout,
		ErrorLog:    slog.NewLogLogger(a.log.Handler(), slog.LevelDebug),
	}
	a.started = true
	if a.o.MaxBacklog > 0 {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.watchBacklog()
		}()
	}
	a.wg.Add(2)
	go func() {
		defer a.wg.Done()
		if err := a.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("CWMP server stopped", "err", err)
		}
	}()
	go func() {
		defer a.wg.Done()
		a.reap()
	}()
	a.log.Info("CWMP ACS listening", "addr", ln.Addr().String(), "path", a.o.Path, "auth", a.o.Auth,
		"tls", tlsConf != nil)
	return nil
}

// Addr is the bound address after Start ("" before).
func (a *ACS) Addr() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ln == nil {
		return ""
	}
	return a.ln.Addr().String()
}

// Shutdown stops accepting sessions, lets running exchanges finish until
// ctx ends, ends every open session (publishing results for unfinished
// commands) and stops the command subscription. Safe to call twice.
func (a *ACS) Shutdown(ctx context.Context) error {
	a.mu.Lock()
	if a.shutdown {
		a.mu.Unlock()
		return nil
	}
	a.shutdown = true
	close(a.done)
	srv, sub := a.srv, a.sub
	a.mu.Unlock()

	var err error
	if srv != nil {
		err = srv.Shutdown(ctx)
		if err != nil {
			srv.Close()
		}
	}
	if sub != nil {
		sub.Stop()
	}
	for _, s := range a.sessions.all() {
		a.endSession(ctx, s, "shutdown")
	}
	a.wg.Wait()
	a.connReq.close()
	return err
}

// reap ends sessions whose CPE has not sent its next POST within
// SessionTimeout (TR-069 §3.7, docs/cwmp-interop.md #10).
func (a *ACS) reap() {
	period := a.o.SessionTimeout / 4
	if period < 10*time.Millisecond {
		period = 10 * time.Millisecond
	}
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-a.done:
			return
		case now := <-t.C:
			for _, s := range a.sessions.idle(now.Add(-a.o.SessionTimeout)) {
				ctx, cancel := context.WithTimeout(context.Background(), a.o.SessionTimeout)
				a.endSession(ctx, s, "timeout")
				cancel()
			}
			a.nonces.purge(now)
			a.informs.purge(now)
			a.perDev.purge(now)
			a.perSrc.purge(now)
		}
	}
}

func (a *ACS) isShutdown() bool {
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}
