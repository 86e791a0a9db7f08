package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/go-stomp/stomp/v3"

	"github.com/duet-dm/duet/pkg/usp"
)

// STOMPConfig configures the agent's STOMP 1.2 client (TR-369 "STOMP Binding").
type STOMPConfig struct {
	Server string // host:port, e.g. 127.0.0.1:61613; required
	// Destination is the agent's own destination
	// (Device.LocalAgent.MTP.{i}.STOMP.Destination). A subscribe-dest
	// header in CONNECTED overrides it; with neither, Dial fails
	// (TR-369 "STOMP Binding").
	Destination string
	// ControllerDestination is where agent-originated records go
	// (Controller.{i}.MTP.{i}.STOMP.Destination); required.
	ControllerDestination string
	Login, Passcode       string
	VirtualHost           string // the host header; default "/"
	// TLS, when set, dials the server over TLS (STOMP over TLS), with an
	// optional client certificate naming the agent.
	TLS *tls.Config
	// HeartBeat is sent as heart-beat:<out>,<in>; zero disables heartbeats.
	HeartBeat time.Duration
}

// DialSTOMP connects a with the STOMP frame (not CONNECT) carrying the
// endpoint-id header, subscribes to its destination with ack:auto and
// id:0, sends the STOMPConnectRecord, then serves the agent until Close.
// go-stomp escapes header values itself (":" → "\c", TR-369 "STOMP Binding").
func DialSTOMP(ctx context.Context, a *Agent, cfg STOMPConfig) (*Client, error) {
	if cfg.Server == "" || cfg.ControllerDestination == "" {
		return nil, errors.New("agent: STOMPConfig.Server and ControllerDestination are required")
	}
	if cfg.VirtualHost == "" {
		cfg.VirtualHost = "/"
	}
	return start(ctx, a, func(ctx context.Context) (session, error) { return dialSTOMP(ctx, a, cfg) })
}

type stompSession struct {
	conn     *stomp.Conn
	sub      *stomp.Subscription
	cfg      STOMPConfig
	in       chan inbound
	lostCh   chan struct{}
	lostOnce sync.Once
	wg       sync.WaitGroup
}

func (s *stompSession) incoming() <-chan inbound { return s.in }
func (s *stompSession) lost() <-chan struct{}    { return s.lostCh }
func (s *stompSession) markLost()                { s.lostOnce.Do(func() { close(s.lostCh) }) }

func (s *stompSession) close() {
	s.markLost()
	_ = s.conn.Disconnect()
	_ = s.conn.MustDisconnect()
	s.wg.Wait()
}

func (s *stompSession) sendTo(dest string, rec []byte) error {
	return s.conn.Send(dest, usp.STOMPContentType, rec,
		stomp.SendOpt.Header(usp.STOMPReplyToHeader, s.cfg.Destination))
}

func (s *stompSession) send(rec []byte) error { return s.sendTo(s.cfg.ControllerDestination, rec) }

// stompHandshakeTimeout bounds CONNECT..CONNECTED.
const stompHandshakeTimeout = 10 * time.Second

func dialSTOMP(ctx context.Context, a *Agent, cfg STOMPConfig) (session, error) {
	nc, err := dialTCP(ctx, cfg.Server, cfg.TLS)
	if err != nil {
		return nil, err
	}
	// The handshake is bounded: a server that accepts the TCP connection
	// but never answers CONNECT (one that is going away) must not hold a
	// reconnect, and with it Close, forever. Closing the agent cancels
	// ctx, which ends the handshake at once.
	dl := time.Now().Add(stompHandshakeTimeout)
	if cdl, ok := ctx.Deadline(); ok && cdl.Before(dl) {
		dl = cdl
	}
	_ = nc.SetDeadline(dl)
	stopHandshake := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	defer stopHandshake()
	eid := a.EndpointID()
	sn := &connectedSniffer{Conn: nc}
	conn, err := stomp.Connect(sn,
		stomp.ConnOpt.UseStomp,
		stomp.ConnOpt.AcceptVersion(stomp.V12),
		stomp.ConnOpt.Host(cfg.VirtualHost),
		stomp.ConnOpt.Login(cfg.Login, cfg.Passcode),
		stomp.ConnOpt.Header(usp.STOMPEndpointIDHeader, eid),
		stomp.ConnOpt.HeartBeat(cfg.HeartBeat, cfg.HeartBeat),
		stomp.ConnOpt.Logger(quietLogger{}),
		// A server that vanished never sends the RECEIPT; do not let Close
		// hang for go-stomp's default 30 s.
		stomp.ConnOpt.DisconnectReceiptTimeout(time.Second),
	)
	if err != nil {
		nc.Close()
		return nil, err
	}
	if !stopHandshake() {
		conn.MustDisconnect()
		return nil, ctx.Err()
	}
	_ = nc.SetDeadline(time.Time{})
	// The server may assign the destination; the client must then use it
	// (TR-369 "STOMP Binding", DestinationFromServer).
	if d := sn.header(usp.STOMPSubscribeDestHdr); d != "" {
		cfg.Destination = d
	}
	if cfg.Destination == "" {
		conn.MustDisconnect()
		return nil, errors.New("agent: no STOMP destination: set STOMPConfig.Destination or use a server sending subscribe-dest")
	}
	sub, err := conn.Subscribe(cfg.Destination, stomp.AckAuto, stomp.SubscribeOpt.Id("0"))
	if err != nil {
		conn.MustDisconnect()
		return nil, err
	}
	s := &stompSession{conn: conn, sub: sub, cfg: cfg, in: make(chan inbound, 16), lostCh: make(chan struct{})}
	rec, err := usp.MarshalSTOMPConnect(eid, a.ControllerID(), cfg.Destination)
	if err == nil {
		err = s.send(rec)
	}
	if err != nil {
		s.close()
		return nil, err
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer s.markLost()
		for m := range sub.C {
			if m.Err != nil {
				return
			}
			if m.ContentType != usp.STOMPContentType {
				continue // obuspa accepts only application/vnd.bbf.usp.msg (TR-369 "STOMP Binding")
			}
			replyTo := cfg.ControllerDestination
			if m.Header != nil {
				if v := m.Header.Get(usp.STOMPReplyToHeader); v != "" {
					replyTo = v
				}
			}
			select {
			case s.in <- inbound{rec: m.Body, reply: func(rec []byte) error { return s.sendTo(replyTo, rec) }}:
			case <-s.lostCh:
				return
			}
		}
	}()
	return s, nil
}

// quietLogger silences go-stomp's own log lines ("connection closed" on
// every shutdown); the client reports failures through Client.Err.
type quietLogger struct{}

func (quietLogger) Debugf(string, ...interface{})   {}
func (quietLogger) Infof(string, ...interface{})    {}
func (quietLogger) Warningf(string, ...interface{}) {}
func (quietLogger) Errorf(string, ...interface{})   {}
func (quietLogger) Debug(string)                    {}
func (quietLogger) Info(string)                     {}
func (quietLogger) Warning(string)                  {}
func (quietLogger) Error(string)                    {}

// connectedSniffer keeps the first frame the server sends (CONNECTED):
// go-stomp parses it but does not expose its headers, and subscribe-dest
// is one of them.
type connectedSniffer struct {
	net.Conn
	mu   sync.Mutex
	buf  []byte
	done bool
}

func (c *connectedSniffer) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	if !c.done {
		if i := bytes.IndexByte(p[:n], 0); i >= 0 {
			c.buf, c.done = append(c.buf, p[:i]...), true
		} else if c.buf = append(c.buf, p[:n]...); len(c.buf) > 64<<10 {
			c.done = true // no frame header is this long; stop keeping bytes
		}
	}
	c.mu.Unlock()
	return n, err
}

// header returns the first value of name in the CONNECTED frame, unescaped
// (STOMP 1.2: the first occurrence of a repeated header wins).
func (c *connectedSniffer) header(name string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	head, _, _ := strings.Cut(strings.TrimLeft(string(c.buf), "\r\n"), "\n\n")
	lines := strings.Split(head, "\n")
	if len(lines) == 0 || strings.TrimSuffix(lines[0], "\r") != "CONNECTED" {
		return ""
	}
	for _, l := range lines[1:] {
		k, v, ok := strings.Cut(strings.TrimSuffix(l, "\r"), ":")
		if !ok {
			continue
		}
		if k, err := usp.STOMPUnescapeHeader(k); err != nil || k != name {
			continue
		}
		if v, err := usp.STOMPUnescapeHeader(v); err == nil {
			return v
		}
	}
	return ""
}
