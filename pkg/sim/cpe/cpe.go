// Package cpe is a simulated TR-069 CPE for tests, benchmarks and the
// fleet simulator. It speaks CWMP over real HTTP with pkg/cwmp, keeps a
// data model loaded from JSON (testdata/datamodel), answers every ACS RPC
// with real semantics, runs a Digest-protected connection-request listener
// and reports transfers, reboots and diagnostics in later sessions with the
// right Inform events (TR-069 §3.7, TR-069 A.3.2, TR-069 A.3.3.1, event codes, TR-069 §3.2.2, TR-069 diagnostics, TR-143).
package cpe

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/duet-dm/duet/pkg/cwmp"
	"github.com/duet-dm/duet/pkg/devicemodel"
)

// Options configure a CPE. ACSURL and one of DataModel / DataModelPath are
// required; identity fields override the data model's values.
type Options struct {
	ACSURL        string
	DataModel     *DataModel
	DataModelPath string

	OUI             string
	ProductClass    string
	Serial          string
	Manufacturer    string
	SoftwareVersion string

	// Username and Password answer the ACS's 401 (Digest or Basic, TR-069 §3.4.4).
	// A SetParameterValues of ManagementServer.Username/Password replaces
	// them from the next session on; reading the Password parameters
	// returns "" (TR-098/TR-181: they read back empty).
	Username, Password string
	// CredentialsFailure rigs a Set of ManagementServer.Username, Password,
	// ConnectionRequestUsername or ConnectionRequestPassword: "" applies
	// it; "ignore" answers success but keeps the old credentials (a CPE
	// that loses them, or never stores them); "fault" refuses the Set with
	// 9001 (request denied).
	CredentialsFailure string

	// ConnReqAddr is the connection-request listen address, default
	// "127.0.0.1:0". DisableConnReq turns the listener off.
	ConnReqAddr     string
	DisableConnReq  bool
	ConnReqUsername string
	ConnReqPassword string

	// PeriodicInterval overrides ManagementServer.PeriodicInformInterval
	// (which is in whole seconds) when > 0.
	PeriodicInterval time.Duration
	// RetryMinWait is the first session-retry wait, default 5 s; it doubles
	// per failure up to 1 h (TR-069 §3.7).
	RetryMinWait time.Duration
	// RequestTimeout bounds each HTTP exchange, default 30 s (TR-069 §3.7).
	RequestTimeout time.Duration

	// IgnoreCookies drops the ACS's Set-Cookie, and NewConnectionPerPOST
	// opens a TCP connection per POST: both exercise the ACS's tolerance
	// (docs/cwmp-interop.md #9, #10).
	IgnoreCookies        bool
	NewConnectionPerPOST bool
	// Compression compresses non-empty POST bodies: "" (none), "gzip" or
	// "deflate" (ManagementServer.HTTPCompression; docs/cwmp-interop.md #8).
	Compression string

	// FirmwareUpdatesVersion: a successful "1 Firmware Upgrade Image"
	// download sets DeviceInfo.SoftwareVersion to the file's first line
	// (or TargetFileName) and reports 1 BOOT as a real upgrade would.
	FirmwareUpdatesVersion bool
	// FirmwareFailure rigs "1 Firmware Upgrade Image" downloads: "" works;
	// "checksum" fails with 9018 (file corrupted), "not_found" with 9016
	// (the server's 404), "boot_old" completes but the device comes back
	// on its old version (the new image did not boot).
	FirmwareFailure string

	// RebootDowntime is how long the CPE is away after a Reboot or
	// FactoryReset (which happen once the session ended, TR-069 A.3.2.3):
	// no session, connection requests refused, then it informs with
	// 1 BOOT + M Reboot (or 0 BOOTSTRAP). Default 0: at once.
	// RebootNeverReturns rigs a CPE that never comes back.
	RebootDowntime     time.Duration
	RebootNeverReturns bool

	// TransferFault, when non-zero, makes every Download and Upload fail
	// with this FaultCode (and TransferFaultString) in its
	// TransferComplete, as a CPE whose transfer broke (9010, 9016 ...).
	TransferFault       uint32
	TransferFaultString string

	// Bootstrapped starts the CPE as if it had contacted an ACS before: the
	// first Inform carries 1 BOOT without 0 BOOTSTRAP.
	Bootstrapped bool

	// SessionObserver, when set, is called after every session with how
	// long it took and its error (nil when it succeeded): duet-sim's
	// latency percentiles. It is called from the CPE's own goroutine.
	SessionObserver func(took time.Duration, err error)

	// Namespace is the cwmp namespace to speak, default cwmp-1-0.
	Namespace       string
	NumericBooleans bool
	Logger          *slog.Logger
}

// Stats counts what a CPE did; all fields are cumulative.
type Stats struct {
	Sessions           uint64 // completed sessions
	FailedSessions     uint64
	Informs            uint64 // Informs answered with an InformResponse
	RPCs               uint64 // ACS requests handled
	Faults             uint64 // faults sent
	ConnectionRequests uint64 // accepted connection requests
	Reboots            uint64 // Reboot RPCs carried out (after their session)
}

// ErrUnauthorized is returned when the ACS rejects the credentials twice.
var ErrUnauthorized = errors.New("cpe: ACS rejected the credentials")

type transferKind int

const (
	kindDownload transferKind = iota
	kindUpload
	kindScheduleDownload
)

type transfer struct {
	kind  transferKind
	key   string
	dl    cwmp.Download // Download and ScheduleDownload arguments
	ul    cwmp.Upload
	due   time.Time
	state int // 1 not started, 2 in progress
}

type scheduled struct {
	at  time.Time
	key string
}

// CPE is one simulated device. Create it with New, then Start; Close stops
// it and is safe to call more than once.
type CPE struct {
	opts Options
	log  *slog.Logger
	enc  cwmp.Encoder

	mu        sync.Mutex
	m         *model
	defaults  *model
	events    []cwmp.EventStruct
	changed   []string // params for 4 VALUE CHANGE
	pendingTC []*cwmp.TransferComplete
	pendingDU []*cwmp.DUStateChangeComplete
	transfers []*transfer
	scheduled []scheduled
	actions   []func() // run after the current session ends
	retries   uint32
	nextID    uint64
	// awayUntil: rebooting, no sessions before it; gone: never back.
	awayUntil time.Time
	gone      bool

	wake   chan struct{} // a connection request arrived
	kick   chan struct{} // new work: re-evaluate now
	inSess atomic.Bool

	crURL string
	ln    net.Listener
	srv   *http.Server
	auth  *digestServer
	tr    *http.Transport

	stats struct{ sessions, failed, informs, rpcs, faults, crs, reboots atomic.Uint64 }

	// acsUser, acsPass: the credentials sessions present (under mu).
	acsUser, acsPass string

	startOnce, closeOnce sync.Once
	started              atomic.Bool
	ctx                  context.Context
	cancel               context.CancelFunc
	wg                   sync.WaitGroup
}

// New validates opts, loads the data model and applies the identity.
func New(opts Options) (*CPE, error) {
	if opts.ACSURL == "" {
		return nil, errors.New("cpe: Options.ACSURL is required")
	}
	if u, err := url.Parse(opts.ACSURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("cpe: Options.ACSURL %q must be an http or https URL", opts.ACSURL)
	}
	dm := opts.DataModel
	if dm == nil {
		if opts.DataModelPath == "" {
			return nil, errors.New("cpe: one of Options.DataModel or Options.DataModelPath is required")
		}
		var err error
		if dm, err = LoadDataModel(opts.DataModelPath); err != nil {
			return nil, err
		}
	}
	m, err := newModel(dm)
	if err != nil {
		return nil, err
	}
	if opts.ConnReqAddr == "" {
		opts.ConnReqAddr = "127.0.0.1:0"
	}
	if opts.RetryMinWait <= 0 {
		opts.RetryMinWait = 5 * time.Second
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 30 * time.Second
	}
	if opts.Namespace == "" {
		opts.Namespace = cwmp.DefaultNamespace
	} else if !cwmp.IsCWMPNamespace(opts.Namespace) {
		return nil, fmt.Errorf("cpe: Options.Namespace %q is not urn:dslforum-org:cwmp-1-*", opts.Namespace)
	}
	switch opts.Compression {
	case "", "gzip", "deflate":
	default:
		return nil, fmt.Errorf("cpe: Options.Compression %q: want \"\", \"gzip\" or \"deflate\"", opts.Compression)
	}
	switch opts.CredentialsFailure {
	case "", "ignore", "fault":
	default:
		return nil, fmt.Errorf("cpe: Options.CredentialsFailure %q: want \"\", \"ignore\" or \"fault\"", opts.CredentialsFailure)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &CPE{
		opts: opts, m: m, enc: cwmp.Encoder{NumericBooleans: opts.NumericBooleans},
		wake: make(chan struct{}, 1), kick: make(chan struct{}, 1),
		auth:    newDigestServer("duet-sim"),
		acsUser: opts.Username, acsPass: opts.Password,
		tr: &http.Transport{DisableKeepAlives: opts.NewConnectionPerPOST, MaxIdleConnsPerHost: 1, Proxy: nil},
	}
	di, ms := m.root+"DeviceInfo.", m.root+"ManagementServer."
	for path, v := range map[string]string{
		di + "ManufacturerOUI": opts.OUI, di + "ProductClass": opts.ProductClass, di + "SerialNumber": opts.Serial,
		di + "Manufacturer": opts.Manufacturer, di + "SoftwareVersion": opts.SoftwareVersion,
		ms + "Username": opts.Username, ms + "Password": opts.Password,
		ms + "ConnectionRequestUsername": opts.ConnReqUsername, ms + "ConnectionRequestPassword": opts.ConnReqPassword,
	} {
		if v != "" {
			m.set(path, v)
		}
	}
	m.set(ms+"URL", opts.ACSURL)
	if oui, _ := m.get(di + "ManufacturerOUI"); oui == "" {
		return nil, errors.New("cpe: no OUI (Options.OUI or DeviceInfo.ManufacturerOUI)")
	}
	if sn, _ := m.get(di + "SerialNumber"); sn == "" {
		return nil, errors.New("cpe: no serial number (Options.Serial or DeviceInfo.SerialNumber)")
	}
	c.log = log.With("device", c.DeviceID())
	return c, nil
}

// DeviceID is the CWMP identity OUI-ProductClass-Serial (TR-069 A.3.3).
func (c *CPE) DeviceID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	di := c.m.root + "DeviceInfo."
	oui, _ := c.m.get(di + "ManufacturerOUI")
	pc, _ := c.m.get(di + "ProductClass")
	sn, _ := c.m.get(di + "SerialNumber")
	return devicemodel.CWMPDeviceID(oui, pc, sn)
}

// Root is the data model root, "Device." or "InternetGatewayDevice.".
func (c *CPE) Root() string { return c.m.root }

// Start opens the connection-request listener and starts the session loop.
// The first Inform carries 0 BOOTSTRAP + 1 BOOT (or 1 BOOT when
// Options.Bootstrapped). Cancelling ctx stops the session loop and the
// listener; Close is still needed to wait for them.
func (c *CPE) Start(ctx context.Context) error {
	err := errors.New("cpe: already started")
	c.startOnce.Do(func() {
		err = nil
		if !c.opts.DisableConnReq {
			ln, lerr := net.Listen("tcp", c.opts.ConnReqAddr)
			if lerr != nil {
				err = fmt.Errorf("cpe: connection-request listener: %w", lerr)
				return
			}
			c.ln = ln
			c.crURL = "http://" + ln.Addr().String() + "/" + randomHex(8)
			c.srv = &http.Server{Handler: http.HandlerFunc(c.serveConnReq), ReadHeaderTimeout: 5 * time.Second}
			c.mu.Lock()
			c.m.set(c.m.root+"ManagementServer.ConnectionRequestURL", c.crURL)
			c.mu.Unlock()
		}
		c.mu.Lock()
		c.defaults = c.m.clone() // factory defaults include the identity and CR URL
		if !c.opts.Bootstrapped {
			c.addEvent(cwmp.EventBootstrap, "")
		}
		c.addEvent(cwmp.EventBoot, "")
		c.mu.Unlock()
		c.ctx, c.cancel = context.WithCancel(ctx)
		c.started.Store(true)
		if c.srv != nil {
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				c.srv.Serve(c.ln)
			}()
		}
		c.wg.Add(1)
		go c.run()
	})
	return err
}

// Close stops the session loop and the listener and waits for every
// goroutine. It is safe to call more than once and before Start.
func (c *CPE) Close() error {
	c.closeOnce.Do(func() {
		if !c.started.Load() {
			c.startOnce.Do(func() {}) // a later Start fails
			return
		}
		c.cancel()
		if c.srv != nil {
			c.srv.Close()
		}
		c.wg.Wait()
		c.tr.CloseIdleConnections()
	})
	return nil
}

// ConnectionRequestURL is the listener's URL ("" when disabled).
func (c *CPE) ConnectionRequestURL() string { return c.crURL }

// Value returns a parameter's current value.
func (c *CPE) Value(path string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m.get(path)
}

// SetParameterValue changes a parameter as the device itself would (a user
// on the web UI, a counter). If its notification attribute is passive the
// change rides in the next Inform with 4 VALUE CHANGE; if active, a session
// starts now (TR-069 A.3.2 notification values).
func (c *CPE) SetParameterValue(path, value string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.m.params[path]
	if !ok {
		return devicemodel.Errorf(devicemodel.CodeInvalidPath, "no parameter %s", path)
	}
	if err := cwmp.ValidateValue(p.typ, value); err != nil {
		return devicemodel.Errorf(devicemodel.CodeInvalidValue, "%v", err)
	}
	p.value = cwmp.NormalizeValue(p.typ, value, false)
	if p.notification == 0 {
		return nil
	}
	if !slices.Contains(c.changed, path) {
		c.changed = append(c.changed, path)
	}
	// Active notification starts a session now; a passive change waits for
	// the next Inform, which then carries 4 VALUE CHANGE too (session()).
	if p.notification == 2 || p.notification == 5 || p.notification == 6 {
		c.addEvent(cwmp.EventValueChange, "")
		c.signal(c.kick)
	}
	return nil
}

// CreateInstance adds a row to table (a writable table of the data model,
// "Device.NAT.PortMapping.") as the device itself or its user would,
// behind the ACS's back: no event, no session (CWMP has no notification
// of created objects). params are set on the new row by name relative to
// it, writability not checked. It returns the new instance's path.
func (c *CPE) CreateInstance(table string, params map[string]string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, f := c.m.addObject(table)
	if f != nil {
		return "", devicemodel.Errorf(devicemodel.CodeInvalidPath, "%s", f.Detail.FaultString)
	}
	inst := table + strconv.FormatUint(uint64(n), 10) + "."
	for name, v := range params {
		p, ok := c.m.params[inst+name]
		if !ok {
			_ = c.m.deleteObject(inst)
			return "", devicemodel.Errorf(devicemodel.CodeInvalidPath, "no parameter %s%s", inst, name)
		}
		p.value = cwmp.NormalizeValue(p.typ, v, false)
	}
	return inst, nil
}

// Wake starts a session with 6 CONNECTION REQUEST, as an accepted
// connection request does.
func (c *CPE) Wake() { c.signal(c.wake) }

// Stats returns the counters.
func (c *CPE) Stats() Stats {
	return Stats{
		Sessions: c.stats.sessions.Load(), FailedSessions: c.stats.failed.Load(), Informs: c.stats.informs.Load(),
		RPCs: c.stats.rpcs.Load(), Faults: c.stats.faults.Load(), ConnectionRequests: c.stats.crs.Load(),
		Reboots: c.stats.reboots.Load(),
	}
}

func (c *CPE) signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default: // already pending: several requests make one session (TR-069 §3.2.2)
	}
}

// addEvent queues an Inform event; single events are not duplicated, M
// events are one per CommandKey. Caller holds c.mu.
func (c *CPE) addEvent(code, key string) {
	for _, e := range c.events {
		if e.EventCode == code && e.CommandKey == key {
			return
		}
	}
	c.events = append(c.events, cwmp.EventStruct{EventCode: code, CommandKey: key})
}

func (c *CPE) periodicInterval() time.Duration {
	if c.opts.PeriodicInterval > 0 {
		return c.opts.PeriodicInterval
	}
	ms := c.m.root + "ManagementServer."
	en, _ := c.m.get(ms + "PeriodicInformEnable")
	if b, _ := cwmp.ParseBool(en); !b {
		return 0
	}
	iv, _ := c.m.get(ms + "PeriodicInformInterval")
	n, _ := strconv.Atoi(iv)
	if n <= 0 {
		return 0
	}
	return time.Duration(n) * time.Second
}

// run is the session loop: it owns every session and post-session action.
func (c *CPE) run() {
	defer c.wg.Done()
	if c.srv != nil {
		// When Start's context ends the listener goes too; Close does the same.
		defer c.srv.Close()
	}
	var retryAt, periodicAt time.Time
	c.mu.Lock()
	if iv := c.periodicInterval(); iv > 0 {
		periodicAt = time.Now().Add(iv)
	}
	c.mu.Unlock()
	for {
		if c.ctx.Err() != nil {
			return
		}
		c.runDueTransfers()
		c.mu.Lock()
		now := time.Now()
		if iv := c.periodicInterval(); iv <= 0 {
			periodicAt = time.Time{}
		} else if periodicAt.IsZero() || periodicAt.Sub(now) > iv {
			periodicAt = now.Add(iv)
		} else if !now.Before(periodicAt) {
			c.addEvent(cwmp.EventPeriodic, "")
			periodicAt = now.Add(iv)
		}
		keep := c.scheduled[:0]
		for _, s := range c.scheduled {
			if !now.Before(s.at) {
				c.addEvent(cwmp.EventScheduled, "")
				c.addEvent(cwmp.EventMScheduleInform, s.key)
			} else {
				keep = append(keep, s)
			}
		}
		c.scheduled = keep
		pending := len(c.events) > 0
		next := periodicAt
		for _, s := range c.scheduled {
			if next.IsZero() || s.at.Before(next) {
				next = s.at
			}
		}
		for _, t := range c.transfers {
			if t.state == 1 && (next.IsZero() || t.due.Before(next)) {
				next = t.due
			}
		}
		c.mu.Unlock()

		c.mu.Lock()
		away, gone := c.awayUntil, c.gone
		c.mu.Unlock()
		if gone {
			<-c.ctx.Done() // rigged: the CPE never came back from its reboot
			return
		}
		if now.Before(away) {
			// Restarting: nothing happens until it is up again.
			t := time.NewTimer(away.Sub(now))
			select {
			case <-c.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		if pending && (retryAt.IsZero() || !now.Before(retryAt)) {
			began := time.Now()
			err := c.session()
			if c.opts.SessionObserver != nil {
				c.opts.SessionObserver(time.Since(began), err)
			}
			if err != nil {
				c.stats.failed.Add(1)
				c.mu.Lock()
				c.retries++
				wait := c.retryWait(c.retries)
				c.mu.Unlock()
				retryAt = time.Now().Add(wait)
				c.log.Info("session failed", "err", err, "retry_in", wait)
			} else {
				retryAt = time.Time{}
				c.afterSession()
			}
			continue
		}
		if pending && (next.IsZero() || retryAt.Before(next)) {
			next = retryAt
		}
		var timer *time.Timer
		var timerC <-chan time.Time
		if !next.IsZero() {
			timer = time.NewTimer(time.Until(next))
			timerC = timer.C
		}
		select {
		case <-c.ctx.Done():
			return
		case <-c.wake:
			c.mu.Lock()
			c.addEvent(cwmp.EventConnectionRequest, "")
			c.mu.Unlock()
			retryAt = time.Time{}
		case <-c.kick:
		case <-timerC:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// retryWait follows the CWMP retry pattern: m·2^(n-1) seconds, randomised
// up to twice that, capped at an hour (TR-069 §3.7).
func (c *CPE) retryWait(n uint32) time.Duration {
	w := c.opts.RetryMinWait << min(n-1, 12)
	w = min(w, time.Hour)
	return w + time.Duration(rand.Int64N(int64(w)+1))
}

// forcedInform lists the forced-inform parameters of the root (TR-069 A.3.3.1).
func (c *CPE) forcedInform() []string {
	r := c.m.root
	var names []string
	if r == "Device." {
		names = []string{r + "RootDataModelVersion", r + "DeviceInfo.HardwareVersion", r + "DeviceInfo.SoftwareVersion",
			r + "DeviceInfo.ProvisioningCode", r + "ManagementServer.ParameterKey", r + "ManagementServer.ConnectionRequestURL",
			r + "ManagementServer.AliasBasedAddressing"}
	} else {
		names = []string{r + "DeviceSummary", r + "DeviceInfo.SpecVersion", r + "DeviceInfo.HardwareVersion",
			r + "DeviceInfo.SoftwareVersion", r + "DeviceInfo.ProvisioningCode", r + "ManagementServer.ParameterKey",
			r + "ManagementServer.ConnectionRequestURL",
			r + "WANDevice.1.WANConnectionDevice.1.WANIPConnection.1.ExternalIPAddress"}
	}
	out := names[:0]
	for _, n := range names {
		if _, ok := c.m.params[n]; ok {
			out = append(out, n)
		}
	}
	return out
}

func (c *CPE) newID() string {
	c.nextID++
	return "sim-" + strconv.FormatUint(c.nextID, 10)
}

// session runs one CWMP session (TR-069 §3.7).
func (c *CPE) session() (err error) {
	c.inSess.Store(true)
	// The session is counted only once it is over (connection closed, no
	// longer "in session"): whoever sees the count may send a connection
	// request next, which a CPE still in session answers 503.
	defer func() {
		c.tr.CloseIdleConnections() // the CPE closes the connection at the end
		c.inSess.Store(false)
		if err == nil {
			c.stats.sessions.Add(1)
		}
	}()
	s := &httpSession{c: c, client: &http.Client{Transport: c.tr, Timeout: c.opts.RequestTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	if !c.opts.IgnoreCookies {
		s.client.Jar, _ = cookiejar.New(nil)
	}

	c.mu.Lock()
	s.url, _ = c.m.get(c.m.root + "ManagementServer.URL")
	di := c.m.root + "DeviceInfo."
	inform := &cwmp.Inform{MaxEnvelopes: 1, CurrentTime: time.Now().UTC(), RetryCount: c.retries,
		Event: slices.Clone(c.events)}
	inform.DeviceId.Manufacturer, _ = c.m.get(di + "Manufacturer")
	inform.DeviceId.OUI, _ = c.m.get(di + "ManufacturerOUI")
	inform.DeviceId.ProductClass, _ = c.m.get(di + "ProductClass")
	inform.DeviceId.SerialNumber, _ = c.m.get(di + "SerialNumber")
	names := c.forcedInform()
	for _, n := range c.changed {
		if !slices.Contains(names, n) {
			if _, ok := c.m.params[n]; ok {
				names = append(names, n)
			}
		}
	}
	if len(c.changed) > 0 && !slices.ContainsFunc(inform.Event, func(e cwmp.EventStruct) bool { return e.EventCode == cwmp.EventValueChange }) {
		inform.Event = append(inform.Event, cwmp.EventStruct{EventCode: cwmp.EventValueChange})
	}
	inform.ParameterList, _ = c.m.getValues(names)
	sentChanged := len(c.changed)
	id := c.newID()
	c.mu.Unlock()

	env, err := s.post(&cwmp.Envelope{Namespace: c.opts.Namespace, Header: cwmp.Header{ID: id}, Body: inform})
	if err != nil {
		return err
	}
	if _, ok := env.Body.(*cwmp.InformResponse); !ok {
		return fmt.Errorf("cpe: expected InformResponse, got %s", methodName(env))
	}
	c.stats.informs.Add(1)
	c.mu.Lock()
	// Events stay queued until an InformResponse arrives (TR-069 §3.7).
	c.events = slices.DeleteFunc(c.events, func(e cwmp.EventStruct) bool { return slices.Contains(inform.Event, e) })
	c.changed = c.changed[sentChanged:]
	c.retries = 0
	c.mu.Unlock()

	if !env.Header.HoldRequests {
		if err := c.sendOwnRequests(s); err != nil {
			return err
		}
	}
	env, err = s.post(nil) // the empty POST: "nothing more from the CPE"
	for err == nil && !env.IsEmpty() {
		resp := c.handle(env.Body)
		c.stats.rpcs.Add(1)
		if _, isFault := resp.(*cwmp.Fault); isFault {
			c.stats.faults.Add(1)
		}
		env, err = s.post(&cwmp.Envelope{Namespace: c.opts.Namespace, Header: cwmp.Header{ID: env.Header.ID}, Body: resp})
	}
	return err
}

// sendOwnRequests sends queued TransferComplete and DUStateChangeComplete
// messages; each is dropped once the ACS acknowledges it.
func (c *CPE) sendOwnRequests(s *httpSession) error {
	for {
		c.mu.Lock()
		var msg cwmp.Message
		switch {
		case len(c.pendingTC) > 0:
			msg = c.pendingTC[0]
		case len(c.pendingDU) > 0:
			msg = c.pendingDU[0]
		}
		id := c.newID()
		c.mu.Unlock()
		if msg == nil {
			return nil
		}
		env, err := s.post(&cwmp.Envelope{Namespace: c.opts.Namespace, Header: cwmp.Header{ID: id}, Body: msg})
		if err != nil {
			return err
		}
		c.mu.Lock()
		switch env.Body.(type) {
		case *cwmp.TransferCompleteResponse:
			c.pendingTC = c.pendingTC[1:]
		case *cwmp.DUStateChangeCompleteResponse:
			c.pendingDU = c.pendingDU[1:]
		default:
			c.mu.Unlock()
			return fmt.Errorf("cpe: %s answered with %s", msg.MethodName(), methodName(env))
		}
		c.mu.Unlock()
	}
}

func methodName(env *cwmp.Envelope) string {
	if env.IsEmpty() {
		return "an empty message"
	}
	if f, ok := env.Body.(*cwmp.Fault); ok {
		return fmt.Sprintf("fault %d %s", f.Detail.FaultCode, f.Detail.FaultString)
	}
	return env.Body.MethodName()
}

// httpSession is the HTTP side of one session: cookies, auth, one POST at
// a time.
type httpSession struct {
	c      *CPE
	client *http.Client
	url    string
	auth   *clientAuth
}

func (s *httpSession) post(env *cwmp.Envelope) (*cwmp.Envelope, error) {
	var body []byte
	if env != nil {
		var err error
		if body, err = s.c.enc.Encode(env); err != nil {
			return nil, err
		}
		if body, err = compress(body, s.c.opts.Compression); err != nil {
			return nil, err
		}
	}
	for attempt := 0; ; attempt++ {
		req, err := http.NewRequestWithContext(s.c.ctx, http.MethodPost, s.url, bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		if len(body) > 0 {
			req.Header.Set("Content-Type", cwmp.ContentType)
			req.Header.Set("SOAPAction", "")
			if s.c.opts.Compression != "" {
				req.Header.Set("Content-Encoding", s.c.opts.Compression)
			}
		}
		if s.auth != nil {
			req.Header.Set("Authorization", s.auth.header(http.MethodPost, req.URL.RequestURI()))
		}
		resp, err := s.client.Do(req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode == http.StatusUnauthorized {
			io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			user, pass := s.c.ACSCredentials()
			if attempt > 0 || user == "" {
				return nil, ErrUnauthorized
			}
			if s.auth = newClientAuth(user, pass, resp.Header.Values("WWW-Authenticate")); s.auth == nil {
				return nil, fmt.Errorf("%w: no supported challenge in %q", ErrUnauthorized, resp.Header.Values("WWW-Authenticate"))
			}
			continue
		}
		data, err := cwmp.ReadBody(resp.Body, resp.Header.Get("Content-Encoding"), 0)
		resp.Body.Close()
		if err != nil {
			return nil, err
		}
		switch resp.StatusCode {
		case http.StatusOK, http.StatusNoContent:
		default:
			return nil, fmt.Errorf("cpe: ACS answered HTTP %d", resp.StatusCode)
		}
		return cwmp.Decode(data, resp.Header.Get("Content-Type"))
	}
}

// ACSCredentials are the username and password its sessions present to
// the ACS (Options.Username/Password until a Set changes them).
func (c *CPE) ACSCredentials() (user, pass string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.acsUser, c.acsPass
}

// ConnReqCredentials are the credentials its connection-request listener
// wants (ManagementServer.ConnectionRequestUsername/Password).
func (c *CPE) ConnReqCredentials() (user, pass string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ms := c.m.root + "ManagementServer."
	user, _ = c.m.get(ms + "ConnectionRequestUsername")
	pass, _ = c.m.get(ms + "ConnectionRequestPassword")
	return user, pass
}

// serveConnReq is the connection-request listener (TR-069 §3.2.2).
func (c *CPE) serveConnReq(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		w.WriteHeader(http.StatusMethodNotAllowed)
		return
	}
	c.mu.Lock()
	ms := c.m.root + "ManagementServer."
	user, _ := c.m.get(ms + "ConnectionRequestUsername")
	pass, _ := c.m.get(ms + "ConnectionRequestPassword")
	c.mu.Unlock()
	if user != "" || pass != "" {
		if r.Header.Get("Authorization") == "" || !c.auth.check(r, user, pass) {
			c.auth.challenge(w)
			return
		}
	}
	c.mu.Lock()
	away := c.gone || time.Now().Before(c.awayUntil)
	c.mu.Unlock()
	if c.inSess.Load() || away {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	c.stats.crs.Add(1)
	w.WriteHeader(http.StatusOK) // answer first, then start the session
	c.signal(c.wake)
}

// dump renders the model for Upload: one "path=value" line per parameter.
func (c *CPE) dump() []byte {
	var b bytes.Buffer
	for _, p := range c.m.sortedParams(c.m.root) {
		fmt.Fprintf(&b, "%s=%s\n", p, c.m.params[p].value)
	}
	return b.Bytes()
}

func firstLine(b []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(b))
	if !sc.Scan() {
		return ""
	}
	l := strings.TrimSpace(sc.Text())
	for _, r := range l {
		if r < 0x20 || r > 0x7e {
			return ""
		}
	}
	if len(l) > 64 {
		return ""
	}
	return l
}

func compress(b []byte, encoding string) ([]byte, error) {
	var out bytes.Buffer
	var w io.WriteCloser
	switch encoding {
	case "":
		return b, nil
	case "gzip":
		w = gzip.NewWriter(&out)
	default: // "deflate" is zlib-wrapped in HTTP
		w = zlib.NewWriter(&out)
	}
	if _, err := w.Write(b); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// SetFirmwareFailure changes how the next firmware downloads fail
// (Options.FirmwareFailure; "" makes them work).
func (c *CPE) SetFirmwareFailure(mode string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.opts.FirmwareFailure = mode
}
