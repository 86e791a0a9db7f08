// Package stomp is the USP STOMP binding (TR-369 "STOMP Binding") on the Controller
// side: a STOMP 1.2 client of any broker (RabbitMQ's STOMP plugin, the
// embedded go-stomp server) that hands received Records to a usp.Endpoint.
package stomp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	gostomp "github.com/go-stomp/stomp/v3"
	"github.com/go-stomp/stomp/v3/frame"

	"github.com/duet-dm/duet/adapters/usp"
	pkgusp "github.com/duet-dm/duet/pkg/usp"
)

// Options configure the STOMP transport.
type Options struct {
	// Endpoint receives the records. Required.
	Endpoint *usp.Endpoint
	// BrokerAddr is host:port. Default "127.0.0.1:61613".
	BrokerAddr string
	// TLS, when set, connects with TLS (STOMP over TLS, as RabbitMQ's
	// stomp.listeners.ssl): the CA that signs the broker's certificate and,
	// for mutual TLS, Duet's client certificate. Its ServerName defaults
	// to BrokerAddr's host.
	TLS *tls.Config
	// Login and Passcode for the broker (RabbitMQ: guest/guest locally).
	Login    string
	Passcode string
	// VHost is sent as the host header; default "/" (RabbitMQ's default
	// vhost).
	VHost string
	// Destination we subscribe to and put in reply-to-dest. RabbitMQ wants
	// "/queue/NAME" or "/topic/NAME". Default "/queue/usp.controller". A
	// subscribe-dest header in CONNECTED overrides it (TR-369 "STOMP Binding").
	Destination string
	// ConnectTimeout bounds Start's first connection. Default 10 s.
	ConnectTimeout time.Duration
	// HeartBeat is the STOMP heart-beat in both directions. Default 30 s;
	// negative disables.
	HeartBeat time.Duration
	// QueueHeaders are added to every SUBSCRIBE and SEND, e.g. RabbitMQ's
	// "x-queue-type". Careful: RabbitMQ declares a /queue/ destination on
	// both frames and closes the connection of a client whose declaration
	// disagrees with an earlier one (for example "auto-delete" set by us
	// but not by the agent's SEND).
	QueueHeaders map[string]string
	// MaxFrameBody bounds the body of a frame from the broker; default
	// DefaultMaxFrameBody (a record of usp.MaxRecordBytes). A larger frame
	// closes the connection before its body is read.
	MaxFrameBody int
	Logger       *slog.Logger
}

// probeContentType marks the message that confirms our subscription.
const probeContentType = "application/x-duet-subscribe-probe"

// Transport is the STOMP MTP.
type Transport struct {
	opts Options
	ep   *usp.Endpoint
	log  *slog.Logger

	mu      sync.Mutex
	conn    *gostomp.Conn
	dest    string
	started bool
	stopped bool
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

var _ usp.MTP = (*Transport)(nil)

// New validates the options.
func New(opts Options) (*Transport, error) {
	if opts.Endpoint == nil {
		return nil, errors.New("usp/stomp: Options.Endpoint is required")
	}
	if opts.BrokerAddr == "" {
		opts.BrokerAddr = "127.0.0.1:61613"
	}
	if opts.VHost == "" {
		opts.VHost = "/"
	}
	if opts.Destination == "" {
		opts.Destination = "/queue/usp.controller"
	}
	if opts.ConnectTimeout == 0 {
		opts.ConnectTimeout = 10 * time.Second
	}
	if opts.HeartBeat == 0 {
		opts.HeartBeat = 30 * time.Second
	}
	if opts.MaxFrameBody <= 0 {
		opts.MaxFrameBody = DefaultMaxFrameBody
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Transport{opts: opts, ep: opts.Endpoint, log: opts.Logger.With("component", "usp-stomp"), dest: opts.Destination}, nil
}

// Name implements usp.MTP.
func (t *Transport) Name() string { return "stomp" }

// Destination is where we receive records (and what reply-to-dest says).
func (t *Transport) Destination() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.dest
}

// Start connects and subscribes, returning an error naming the broker when
// the first attempt fails. Later connection losses are retried in the
// background with a capped back-off.
func (t *Transport) Start() error {
	t.mu.Lock()
	if t.started {
		t.mu.Unlock()
		return errors.New("usp/stomp: already started")
	}
	t.started = true
	ctx, cancel := context.WithCancel(context.Background())
	t.cancel = cancel
	t.mu.Unlock()
	conn, sub, err := t.connect(ctx)
	if err != nil {
		cancel()
		return err
	}
	t.wg.Add(1)
	go t.run(ctx, conn, sub)
	return nil
}

func (t *Transport) connect(ctx context.Context) (*gostomp.Conn, *gostomp.Subscription, error) {
	var connected *frame.Header
	hb := t.opts.HeartBeat
	if hb < 0 {
		hb = 0
	}
	dctx, cancel := context.WithTimeout(ctx, t.opts.ConnectTimeout)
	defer cancel()
	stompOpts := []func(*gostomp.Conn) error{
		gostomp.ConnOpt.UseStomp, // the STOMP frame, as TR-369 "STOMP Binding" requires
		gostomp.ConnOpt.AcceptVersion(gostomp.V12),
		gostomp.ConnOpt.Login(t.opts.Login, t.opts.Passcode),
		gostomp.ConnOpt.Host(t.opts.VHost),
		// go-stomp escapes ':' as \c in header values (TR-369 "STOMP Binding").
		gostomp.ConnOpt.Header(pkgusp.STOMPEndpointIDHeader, t.ep.ID()),
		gostomp.ConnOpt.HeartBeat(hb, hb),
		gostomp.ConnOpt.ResponseHeaders(func(h *frame.Header) { connected = h }),
		gostomp.ConnOpt.Logger(quietLogger{t.log}),
	}
	conn, err := t.dial(dctx, stompOpts)
	if err != nil {
		return nil, nil, fmt.Errorf("usp/stomp: cannot connect to broker %s: %w", t.opts.BrokerAddr, err)
	}
	dest := t.opts.Destination
	if connected != nil {
		if d, ok := connected.Contains(pkgusp.STOMPSubscribeDestHdr); ok && d != "" {
			dest = d
		}
	}
	var subOpts []func(*frame.Frame) error
	for k, v := range t.opts.QueueHeaders {
		subOpts = append(subOpts, gostomp.SubscribeOpt.Header(k, v))
	}
	// ack:auto as TR-369 "STOMP Binding" requires; we never send ACK/NACK.
	sub, err := conn.Subscribe(dest, gostomp.AckAuto, subOpts...)
	if err != nil {
		_ = conn.Disconnect()
		return nil, nil, fmt.Errorf("usp/stomp: subscribe %s on %s: %w", dest, t.opts.BrokerAddr, err)
	}
	// go-stomp cannot ask for a RECEIPT on SUBSCRIBE. A SEND with a receipt
	// behind it proves the broker processed the SUBSCRIBE (frames of one
	// connection are handled in order), so Start returns only once records
	// can arrive: with /topic/ destinations anything sent earlier is lost.
	// The probe's content type is not USP, so every reader ignores it.
	if err := conn.Send(dest, probeContentType, nil, gostomp.SendOpt.Receipt); err != nil {
		_ = conn.MustDisconnect()
		return nil, nil, fmt.Errorf("usp/stomp: confirm subscription to %s on %s: %w", dest, t.opts.BrokerAddr, err)
	}
	t.mu.Lock()
	t.conn = conn
	t.dest = dest
	t.mu.Unlock()
	t.log.Info("stomp subscribed", "broker", t.opts.BrokerAddr, "destination", dest)
	return conn, sub, nil
}

// run reads messages and reconnects when the connection drops.
func (t *Transport) run(ctx context.Context, conn *gostomp.Conn, sub *gostomp.Subscription) {
	defer t.wg.Done()
	backoff := 500 * time.Millisecond
	for {
		t.read(ctx, sub)
		t.mu.Lock()
		if t.conn == conn {
			t.conn = nil
		}
		t.mu.Unlock()
		_ = conn.MustDisconnect()
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			var err error
			conn, sub, err = t.connect(ctx)
			if err == nil {
				backoff = 500 * time.Millisecond
				break
			}
			t.log.Warn("stomp reconnect failed", "err", err)
			backoff = min(2*backoff, 30*time.Second)
		}
	}
}

func (t *Transport) read(ctx context.Context, sub *gostomp.Subscription) {
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-sub.C:
			if !ok {
				return
			}
			if m.Err != nil {
				t.log.Warn("stomp connection error", "err", m.Err)
				return
			}
			// TR-369 "STOMP Binding": obuspa only sends application/vnd.bbf.usp.msg.
			if m.ContentType != "" && !pkgusp.IsUSPContentType(m.ContentType) {
				t.log.Debug("stomp message with a non-USP content type ignored", "content_type", m.ContentType)
				continue
			}
			from := usp.Address{}
			if m.Header != nil {
				from.Reply = m.Header.Get(pkgusp.STOMPReplyToHeader)
			}
			_ = t.ep.HandleRecord(t, from, m.Body)
		}
	}
}

// Send implements usp.MTP. content-type is ALWAYS set: obuspa drops the
// connection on a message without it (docs/testing.md).
func (t *Transport) Send(_ context.Context, to usp.Address, record []byte) error {
	if to.Reply == "" {
		return errors.New("usp/stomp: no destination for the agent")
	}
	t.mu.Lock()
	conn, dest := t.conn, t.dest
	t.mu.Unlock()
	if conn == nil {
		return errors.New("usp/stomp: not connected to " + t.opts.BrokerAddr)
	}
	opts := []func(*frame.Frame) error{gostomp.SendOpt.Header(pkgusp.STOMPReplyToHeader, dest)}
	for k, v := range t.opts.QueueHeaders {
		opts = append(opts, gostomp.SendOpt.Header(k, v))
	}
	if err := conn.Send(to.Reply, pkgusp.STOMPContentType, record, opts...); err != nil {
		return fmt.Errorf("usp/stomp: send to %s: %w", to.Reply, err)
	}
	return nil
}

// Shutdown disconnects. Safe to call twice.
func (t *Transport) Shutdown(ctx context.Context) error {
	t.mu.Lock()
	if t.stopped || !t.started {
		t.stopped = true
		t.mu.Unlock()
		return nil
	}
	t.stopped = true
	conn := t.conn
	t.conn = nil
	t.mu.Unlock()
	t.cancel()
	if conn != nil {
		_ = conn.MustDisconnect() // closes sub.C, ending run's read
	}
	done := make(chan struct{})
	go func() { t.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// quietLogger routes go-stomp's logging to slog at debug/warn levels.
type quietLogger struct{ l *slog.Logger }

func (q quietLogger) Debugf(f string, v ...any)   { q.l.Debug(fmt.Sprintf(f, v...)) }
func (q quietLogger) Infof(f string, v ...any)    { q.l.Debug(fmt.Sprintf(f, v...)) }
func (q quietLogger) Warningf(f string, v ...any) { q.l.Warn(fmt.Sprintf(f, v...)) }
func (q quietLogger) Errorf(f string, v ...any)   { q.l.Warn(fmt.Sprintf(f, v...)) }
func (q quietLogger) Debug(m string)              { q.l.Debug(m) }
func (q quietLogger) Info(m string)               { q.l.Debug(m) }
func (q quietLogger) Warning(m string)            { q.l.Warn(m) }
func (q quietLogger) Error(m string)              { q.l.Warn(m) }

// dial connects in plain text, or over TLS when Options.TLS is set; the
// STOMP handshake is bounded by ctx either way. go-stomp reads the broker
// through guardedConn, never straight from the socket.
func (t *Transport) dial(ctx context.Context, opts []func(*gostomp.Conn) error) (*gostomp.Conn, error) {
	var nc net.Conn
	var err error
	if t.opts.TLS == nil {
		nc, err = (&net.Dialer{}).DialContext(ctx, "tcp", t.opts.BrokerAddr)
	} else {
		cfg := t.opts.TLS.Clone()
		if cfg.ServerName == "" {
			if host, _, err := net.SplitHostPort(t.opts.BrokerAddr); err == nil {
				cfg.ServerName = host
			}
		}
		nc, err = (&tls.Dialer{Config: cfg}).DialContext(ctx, "tcp", t.opts.BrokerAddr)
	}
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	g := guard(nc, t.opts.MaxFrameBody, t.log)
	conn, err := gostomp.Connect(g, opts...)
	if err != nil {
		_ = g.Close()
		return nil, err
	}
	_ = nc.SetDeadline(time.Time{})
	return conn, nil
}
