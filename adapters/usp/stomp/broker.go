package stomp

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	"github.com/go-stomp/stomp/v3/server"

	"github.com/duet-dm/duet/adapters/usp"
	pkgusp "github.com/duet-dm/duet/pkg/usp"
)

// DefaultAgentDestination is the destination an agent of the embedded
// broker subscribes to when authentication is on: its only readable one.
const DefaultAgentDestination = "/queue/agent-{endpoint}"

// DefaultMaxFrameBody bounds a frame's body: a record of
// usp.MaxRecordBytes.
const DefaultMaxFrameBody = usp.MaxRecordBytes

// BrokerOptions configure the embedded STOMP broker.
type BrokerOptions struct {
	// Addr is the plain listener ("127.0.0.1:61613", ":0" random); empty:
	// none (TLS only).
	Addr string
	// TLSAddr and TLS add a STOMP-over-TLS listener. With TLS.ClientCAs
	// and ClientAuth VerifyClientCertIfGiven an agent may log in with a
	// certificate naming urn:bbf:usp:id:<endpoint-id> instead of a
	// passcode.
	TLSAddr string
	TLS     *tls.Config
	// Auth, when set, makes every client log in: Duet itself with
	// ControllerCredentials, agents with login = endpoint ID and passcode
	// = secret (or a certificate). An agent may then SEND only to
	// ControllerDestination, SUBSCRIBE only to its AgentDestination, and
	// only records whose from_id is its login and whose reply-to-dest is
	// its own destination (issue 15 §2). Nil: anyone connects and reads
	// everything; cmd/duet allows that on loopback only.
	Auth                  usp.AgentAuthenticator
	ControllerDestination string
	// AgentDestination is the pattern of an agent's destination; default
	// DefaultAgentDestination.
	AgentDestination string
	// MaxFrameBody; default DefaultMaxFrameBody. A larger frame closes the
	// connection before its body is read.
	MaxFrameBody int
	Logger       *slog.Logger
}

// Broker is the embedded STOMP 1.2 broker `duet serve` runs when no
// external one is configured: go-stomp's server behind a guard that
// bounds frames and, with Auth, authenticates and confines agents.
type Broker struct {
	o       BrokerOptions
	log     *slog.Logger
	ls      []net.Listener
	inner   *pipeListener
	user    string
	pass    string
	addr    string
	tlsAddr string
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	closed  bool
	once    sync.Once
}

// StartEmbeddedBroker starts the broker without authentication on addr
// ("127.0.0.1:61613", ":0" for a random port).
func StartEmbeddedBroker(addr string) (*Broker, error) {
	return StartBroker(BrokerOptions{Addr: addr})
}

// StartBroker starts the broker with o.
func StartBroker(o BrokerOptions) (*Broker, error) {
	if o.Addr == "" && o.TLSAddr == "" {
		return nil, errors.New("usp/stomp: embedded broker: no listener (BrokerOptions.Addr or TLSAddr)")
	}
	if o.TLSAddr != "" && o.TLS == nil {
		return nil, errors.New("usp/stomp: embedded broker: BrokerOptions.TLSAddr needs TLS")
	}
	if o.Auth != nil && o.ControllerDestination == "" {
		return nil, errors.New("usp/stomp: embedded broker: BrokerOptions.Auth needs ControllerDestination")
	}
	if o.AgentDestination == "" {
		o.AgentDestination = DefaultAgentDestination
	}
	if !strings.Contains(o.AgentDestination, "{endpoint}") {
		return nil, fmt.Errorf("usp/stomp: embedded broker: agent destination %q must contain {endpoint}", o.AgentDestination)
	}
	if o.MaxFrameBody == 0 {
		o.MaxFrameBody = DefaultMaxFrameBody
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	b := &Broker{o: o, log: o.Logger.With("component", "usp-stomp-broker"), inner: newPipeListener(), conns: map[net.Conn]struct{}{}}
	if o.Auth != nil {
		var r [24]byte
		if _, err := rand.Read(r[:]); err != nil {
			panic(err) // crypto/rand never fails on supported platforms
		}
		b.user, b.pass = "duet-controller", hex.EncodeToString(r[:])
	}
	if o.Addr != "" {
		l, err := net.Listen("tcp", o.Addr)
		if err != nil {
			return nil, fmt.Errorf("usp/stomp: embedded broker cannot listen on %s (port in use or not allowed?): %w", o.Addr, err)
		}
		b.ls = append(b.ls, l)
		b.addr = l.Addr().String()
	}
	if o.TLSAddr != "" {
		l, err := net.Listen("tcp", o.TLSAddr)
		if err != nil {
			b.closeListeners()
			return nil, fmt.Errorf("usp/stomp: embedded broker cannot listen on %s (port in use or not allowed?): %w", o.TLSAddr, err)
		}
		b.tlsAddr = l.Addr().String()
		b.ls = append(b.ls, tls.NewListener(l, o.TLS))
	}
	srv := &server.Server{Addr: "embedded", Log: quietLogger{slog.New(slog.NewTextHandler(io.Discard, nil))}}
	// Known limitation of go-stomp v3.1.3: Server.Serve never returns. Its
	// accept loop ends when Close closes the listener, but its dispatch
	// goroutine (blocked on an internal channel, no CPU) lives until the
	// process exits. One per embedded broker, so at most one in duet serve.
	go func() { _ = srv.Serve(b.inner) }()
	for _, l := range b.ls {
		b.wg.Add(1)
		go b.accept(l)
	}
	return b, nil
}

// Addr is the host:port of the plain listener ("" without one).
func (b *Broker) Addr() string { return b.addr }

// TLSAddr is the host:port of the TLS listener ("" without one).
func (b *Broker) TLSAddr() string { return b.tlsAddr }

// ControllerCredentials are the login and passcode Duet's own STOMP
// client uses with authentication on (generated at every start).
func (b *Broker) ControllerCredentials() (login, passcode string) { return b.user, b.pass }

func (b *Broker) closeListeners() {
	for _, l := range b.ls {
		_ = l.Close()
	}
}

// Close stops accepting connections and closes the open ones. Safe to
// call twice.
func (b *Broker) Close() error {
	b.once.Do(func() {
		b.closeListeners()
		b.mu.Lock()
		b.closed = true
		for c := range b.conns {
			_ = c.Close()
		}
		b.mu.Unlock()
		_ = b.inner.Close()
		b.wg.Wait()
	})
	return nil
}

func (b *Broker) track(c net.Conn) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return false
	}
	b.conns[c] = struct{}{}
	return true
}

func (b *Broker) untrack(c net.Conn) {
	b.mu.Lock()
	delete(b.conns, c)
	b.mu.Unlock()
}

func (b *Broker) accept(l net.Listener) {
	defer b.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // a transient accept error (EMFILE)
			continue
		}
		if !b.track(c) {
			_ = c.Close()
			return
		}
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			defer b.untrack(c)
			defer c.Close()
			b.serve(c)
		}()
	}
}

// handshakeTimeout bounds the TLS handshake and the CONNECT frame.
const handshakeTimeout = 30 * time.Second

func (b *Broker) refuse(c net.Conn, reason, msg string, attrs ...any) {
	usp.CountAgentRefused("stomp", reason)
	b.log.Warn("stomp broker refused an agent", append([]any{"reason", reason, "remote", c.RemoteAddr().String()}, attrs...)...)
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_ = frame.NewWriter(c).Write(frame.New(frame.ERROR, frame.Message, msg))
}

// serve guards one client connection: it reads the client's frames
// (bounded), checks them, and passes them to go-stomp over a pipe whose
// answers are copied back as they are.
func (b *Broker) serve(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(handshakeTimeout))
	eid := ""
	if tc, ok := c.(*tls.Conn); ok {
		if err := tc.Handshake(); err != nil {
			return
		}
		eid, _ = usp.EndpointIDFromTLS(tc.ConnectionState())
	}
	br := newFrameReader(c)
	var f *frame.Frame
	var err error
	for f == nil && err == nil {
		f, err = readFrame(br, 0) // CONNECT has no body
	}
	if err != nil || (f.Command != frame.CONNECT && f.Command != frame.STOMP) {
		b.refuse(c, usp.RefuseBadLogin, "expected CONNECT or STOMP")
		return
	}
	agent := ""
	if b.o.Auth != nil {
		login, pass := f.Header.Get(frame.Login), f.Header.Get(frame.Passcode)
		switch {
		case login == b.user && subtle.ConstantTimeCompare([]byte(pass), []byte(b.pass)) == 1:
			// Duet itself.
		case eid != "":
			if login != "" && login != eid {
				b.refuse(c, usp.RefuseBadLogin, "login is not the certificate's endpoint ID", "login", login, "certificate", eid)
				return
			}
			agent = eid
		default:
			if reason := usp.CheckAgentLogin(context.Background(), b.o.Auth, login, pass); reason != "" {
				b.refuse(c, reason, "bad login", "login", login)
				return
			}
			agent = login
		}
	}
	_ = c.SetReadDeadline(time.Time{})
	f.Header.Del(frame.Passcode)
	inner, outer := net.Pipe()
	if err := b.inner.push(inner); err != nil {
		return
	}
	defer outer.Close()
	done := make(chan struct{})
	go func() { // go-stomp → client, as it is
		defer close(done)
		_, _ = io.Copy(c, outer)
		_ = c.Close()
	}()
	w := frame.NewWriter(outer)
	for {
		if err := w.Write(f); err != nil {
			break
		}
		if f != nil && f.Command == frame.DISCONNECT {
			break
		}
		f, err = readFrame(br, b.o.MaxFrameBody)
		if errors.Is(err, errFrameTooLarge) {
			b.refuse(c, usp.RefuseTooLarge, fmt.Sprintf("frame body above %d bytes", b.o.MaxFrameBody), "device", agent)
			break
		}
		if err != nil {
			break
		}
		if agent != "" && f != nil {
			if reason, msg := b.check(agent, f); reason != "" {
				b.refuse(c, reason, msg, "device", agent)
				break
			}
		}
	}
	_ = outer.Close()
	_ = c.Close()
	<-done
}

// check confines an agent's frame; reason is "" when it may pass.
func (b *Broker) check(eid string, f *frame.Frame) (reason, msg string) {
	own, ok := pkgusp.ExpandTopicPattern(b.o.AgentDestination, eid)
	switch f.Command {
	case frame.SEND:
		if f.Header.Get(frame.Destination) != b.o.ControllerDestination {
			return usp.RefusePublishACL, "agents may send to the controller's destination only"
		}
		head, err := pkgusp.ReadRecordHead(f.Body)
		if err != nil || head.FromID != eid {
			return usp.RefuseFromID, "the record's from_id is not your login"
		}
		for _, r := range []string{f.Header.Get(pkgusp.STOMPReplyToHeader), head.ReplyTo} {
			if r != "" && (!ok || r != own) {
				return usp.RefuseReplyTo, "the reply destination is not your own"
			}
		}
	case frame.SUBSCRIBE:
		if !ok || f.Header.Get(frame.Destination) != own {
			return usp.RefuseSubscribeACL, "agents may subscribe to their own destination only"
		}
	}
	return "", ""
}

// pipeListener hands go-stomp the server ends of guarded connections.
type pipeListener struct {
	ch     chan net.Conn
	done   chan struct{}
	closed sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (p *pipeListener) push(c net.Conn) error {
	select {
	case p.ch <- c:
		return nil
	case <-p.done:
		_ = c.Close()
		return net.ErrClosed
	}
}

func (p *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-p.ch:
		return c, nil
	case <-p.done:
		return nil, net.ErrClosed
	}
}

func (p *pipeListener) Close() error {
	p.closed.Do(func() { close(p.done) })
	return nil
}

func (p *pipeListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "embedded" }
