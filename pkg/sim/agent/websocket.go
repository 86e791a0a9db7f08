package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/duet-dm/duet/pkg/usp"
)

// WebSocketConfig configures the agent's WebSocket client (TR-369 "WebSocket Binding"):
// the agent dials the Controller, the usual deployment.
type WebSocketConfig struct {
	// URL of the Controller, e.g. ws://127.0.0.1:8080/usp; required. The
	// client appends eid=<percent-encoded endpoint ID> to its query.
	URL string
	// KeepAlive is the Ping interval (Device.LocalAgent.Controller.{i}.
	// MTP.{i}.WebSocket.KeepAliveInterval); default 30 s. Like obuspa the
	// client drops the connection when more than two Pongs are missing.
	KeepAlive time.Duration
	// Dialer, when set, is used instead of websocket.DefaultDialer (TLS
	// settings, timeouts); its Subprotocols are replaced with v1.usp.
	Dialer *websocket.Dialer
	// Token, when set, is sent as Authorization: Bearer <token>: the
	// agent's secret, which Duet checks against its endpoint ID. A
	// client certificate goes in Dialer.TLSClientConfig instead.
	Token string
}

// DialWebSocket dials the Controller with subprotocol v1.usp, sends the
// WebSocketConnectRecord in a binary frame, then serves the agent until
// Close.
func DialWebSocket(ctx context.Context, a *Agent, cfg WebSocketConfig) (*Client, error) {
	if !strings.HasPrefix(cfg.URL, "ws://") && !strings.HasPrefix(cfg.URL, "wss://") {
		return nil, fmt.Errorf("agent: WebSocketConfig.URL %q is not a ws:// or wss:// URL", cfg.URL)
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = 30 * time.Second
	}
	return start(ctx, a, func(ctx context.Context) (session, error) { return dialWebSocket(ctx, a, cfg) })
}

type wsSession struct {
	conn     *websocket.Conn
	in       chan inbound
	lostCh   chan struct{}
	lostOnce sync.Once
	wg       sync.WaitGroup
	mu       sync.Mutex
	lastPong time.Time
}

func (s *wsSession) incoming() <-chan inbound { return s.in }
func (s *wsSession) lost() <-chan struct{}    { return s.lostCh }
func (s *wsSession) markLost()                { s.lostOnce.Do(func() { close(s.lostCh) }) }

// send writes one record as one binary frame. Only the Client's serve
// goroutine calls it, so writes are never concurrent.
func (s *wsSession) send(rec []byte) error { return s.conn.WriteMessage(websocket.BinaryMessage, rec) }

func (s *wsSession) close() {
	s.markLost()
	_ = s.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	_ = s.conn.Close()
	s.wg.Wait()
}

func dialWebSocket(ctx context.Context, a *Agent, cfg WebSocketConfig) (session, error) {
	d := websocket.DefaultDialer
	if cfg.Dialer != nil {
		d = cfg.Dialer
	}
	dd := *d
	dd.Subprotocols = []string{usp.WebSocketSubprotocol}
	sep := "?"
	if strings.Contains(cfg.URL, "?") {
		sep = "&"
	}
	eid := a.EndpointID()
	var hdr http.Header
	if cfg.Token != "" {
		hdr = http.Header{"Authorization": {"Bearer " + cfg.Token}}
	}
	conn, resp, err := dd.DialContext(ctx, cfg.URL+sep+usp.WebSocketEIDQuery(eid), hdr)
	if err != nil {
		return nil, fmt.Errorf("agent: WebSocket dial: %w", err)
	}
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if conn.Subprotocol() != usp.WebSocketSubprotocol {
		// The client aborts when the server does not echo v1.usp (TR-369 "WebSocket Binding").
		conn.Close()
		return nil, errors.New("agent: WebSocket server did not accept subprotocol v1.usp")
	}
	s := &wsSession{conn: conn, in: make(chan inbound, 16), lostCh: make(chan struct{}), lastPong: time.Now()}
	conn.SetPongHandler(func(string) error {
		s.mu.Lock()
		s.lastPong = time.Now()
		s.mu.Unlock()
		return nil
	})
	rec, err := usp.MarshalWebSocketConnect(eid, a.ControllerID())
	if err == nil {
		err = s.send(rec)
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	s.wg.Add(2)
	go func() { // reader; the default ping handler answers Pings
		defer s.wg.Done()
		defer s.markLost()
		for {
			typ, data, err := conn.ReadMessage()
			if err != nil {
				return
			}
			if typ != websocket.BinaryMessage {
				continue
			}
			select {
			case s.in <- inbound{rec: data, reply: s.send}:
			case <-s.lostCh:
				return
			}
		}
	}()
	go func() { // keep-alive
		defer s.wg.Done()
		t := time.NewTicker(cfg.KeepAlive)
		defer t.Stop()
		for {
			select {
			case <-s.lostCh:
				return
			case <-t.C:
			}
			s.mu.Lock()
			silent := time.Since(s.lastPong)
			s.mu.Unlock()
			if silent > 3*cfg.KeepAlive {
				s.markLost()
				conn.Close()
				return
			}
			if err := conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(cfg.KeepAlive)); err != nil {
				s.markLost()
				return
			}
		}
	}()
	return s, nil
}
