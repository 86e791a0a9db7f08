package websocket

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/duet-dm/duet/adapters/usp"
	"github.com/duet-dm/duet/adapters/usp/internal/testagent"
	"github.com/duet-dm/duet/adapters/usp/internal/usptest"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	pkgusp "github.com/duet-dm/duet/pkg/usp"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

func startServer(t testing.TB, ep *usp.Endpoint, o Options) *Transport {
	t.Helper()
	o.Endpoint = ep
	if o.Addr == "" {
		o.Addr = "127.0.0.1:0"
	}
	tr, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := tr.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		_ = tr.Shutdown(ctx)
	})
	return tr
}

// wsAgent dials like obuspa: ws://host/usp?eid=<percent-encoded>, v1.usp.
type wsAgent struct {
	*testagent.Agent
	ws      *websocket.Conn
	writeMu sync.Mutex
	closed  chan error // the read loop's final error
}

func dial(t testing.TB, url, eid string, tlsCfg *tls.Config) (*websocket.Conn, *http.Response, error) {
	return dialWith(url, eid, tlsCfg, nil)
}

func dialWith(url, eid string, tlsCfg *tls.Config, hdr http.Header) (*websocket.Conn, *http.Response, error) {
	d := websocket.Dialer{Subprotocols: []string{pkgusp.WebSocketSubprotocol}, HandshakeTimeout: 5 * time.Second, TLSClientConfig: tlsCfg}
	return d.Dial(url+"?"+pkgusp.WebSocketEIDQuery(eid), hdr)
}

func startAgent(t testing.TB, url, ctrlID, eid string, tlsCfg *tls.Config) *wsAgent {
	t.Helper()
	return startAgentWith(t, url, ctrlID, eid, tlsCfg, nil)
}

// bearer is the header of an agent authenticating with its secret.
func bearer(secret string) http.Header { return http.Header{"Authorization": {"Bearer " + secret}} }

func startAgentWith(t testing.TB, url, ctrlID, eid string, tlsCfg *tls.Config, hdr http.Header) *wsAgent {
	t.Helper()
	ws, resp, err := dialWith(url, eid, tlsCfg, hdr)
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != pkgusp.WebSocketSubprotocol {
		t.Fatalf("server answered subprotocol %q", got)
	}
	a := &wsAgent{Agent: testagent.New(eid, ctrlID), ws: ws, closed: make(chan error, 1)}
	a.Send = func(rec []byte) error {
		a.writeMu.Lock()
		defer a.writeMu.Unlock()
		return ws.WriteMessage(websocket.BinaryMessage, rec)
	}
	go func() { // ends when the connection closes
		for {
			_, data, err := ws.ReadMessage()
			if err != nil {
				a.closed <- err
				return
			}
			a.Handle(data)
		}
	}()
	t.Cleanup(func() { _ = ws.Close() })
	rec, _ := pkgusp.MarshalWebSocketConnect(eid, ctrlID)
	if err := a.Send(rec); err != nil {
		t.Fatal(err)
	}
	return a
}

func closeCode(t testing.TB, ch <-chan error) int {
	t.Helper()
	select {
	case err := <-ch:
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce.Code
		}
		return -1
	case <-time.After(10 * time.Second):
		t.Fatal("connection not closed")
		return 0
	}
}

func TestRoundTripAndOffline(t *testing.T) {
	ep, b := usptest.Endpoint(t)
	tr := startServer(t, ep, Options{})
	eid := "os::00D09E-WS-" + bus.NewID()[:6]
	w := usptest.Watch(t, b, eid)
	a := startAgent(t, "ws://"+tr.Addr()+"/usp", ep.ID(), eid, nil)
	// One online event for the connection, with the facts onboarding read.
	on := w.Wait("online", nil)
	if r := on.GetReachability(); r.GetTransport() != "websocket" || !strings.HasPrefix(r.GetAddress(), "127.0.0.1:") {
		t.Fatalf("reachability %v", r)
	}
	if on.GetDevice().GetSerialNumber() != "SN-"+eid {
		t.Fatalf("online without the DeviceInfo facts: %v", on.GetDevice())
	}
	if got := usptest.MustGet(t, b, eid, "Device.DeviceInfo.ModelName"); got["Device.DeviceInfo.ModelName"] != "TA-1" {
		t.Fatal(got)
	}
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := []string{"Device.DeviceInfo.SerialNumber", "Device.IP.Interface.1.Alias", "Device.DeviceInfo.ModelName"}[i%3]
			if got := usptest.MustGet(t, b, eid, p); len(got) != 1 || got[p] == "" {
				t.Errorf("asked %s got %v", p, got)
			}
		}()
	}
	wg.Wait()
	if _, err := a.Boot("b1", "", "LocalReboot"); err != nil {
		t.Fatal(err)
	}
	w.Wait("boot", nil)
	bustest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if len(a.NotifyResps()) == 1 {
			return nil
		}
		return errors.New("no NotifyResp")
	})

	// The agent goes silent and then drops the connection mid-request: the
	// request fails at once with Unavailable, offline is published.
	bustest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if len(a.Subscriptions()) == 5 {
			return nil
		}
		return errors.New("onboarding not finished")
	})
	a.Silent.Store(true)
	for len(a.RequestSeen()) > 0 {
		<-a.RequestSeen()
	}
	done := make(chan *duetv1.CommandResult, 1)
	go func() {
		res, err := usptest.Do(b, eid, &duetv1.Command{Op: &duetv1.Command_Get{Get: &duetv1.GetRequest{Paths: []string{"Device."}}}})
		if err != nil {
			res = &duetv1.CommandResult{Error: bus.ErrorToProto(err)}
		}
		done <- res
	}()
	select {
	case <-a.RequestSeen():
	case <-time.After(10 * time.Second):
		t.Fatal("request never reached the agent")
	}
	_ = a.ws.Close()
	select {
	case res := <-done:
		if res.GetError().GetCode() != duetv1.ErrorCode_ERROR_CODE_UNAVAILABLE {
			t.Fatalf("want unavailable, got %v", res)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("request not failed on close")
	}
	w.Wait("offline", nil)
}

func TestHandshakeRules(t *testing.T) {
	ep, _ := usptest.Endpoint(t)
	tr := startServer(t, ep, Options{MaxConnections: 1})
	url := "ws://" + tr.Addr() + "/usp"
	// No subprotocol: refused.
	_, resp, err := (&websocket.Dialer{}).Dial(url+"?eid=os%3A%3Ax", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("no subprotocol: %v %v", resp, err)
	}
	// No eid: refused.
	_, resp, err = (&websocket.Dialer{Subprotocols: []string{"v1.usp"}}).Dial(url, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("no eid: %v %v", resp, err)
	}
	// Bounded connections.
	a := startAgent(t, url, ep.ID(), "os::00D09E-ONE", nil)
	_, resp, err = dial(t, url, "os::00D09E-TWO", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("second connection over the limit: %v %v", resp, err)
	}
	// Pings are answered.
	pong := make(chan struct{}, 1)
	a.ws.SetPongHandler(func(string) error { pong <- struct{}{}; return nil })
	a.writeMu.Lock()
	err = a.ws.WriteControl(websocket.PingMessage, []byte("hi"), time.Now().Add(time.Second))
	a.writeMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-pong:
	case <-time.After(5 * time.Second):
		t.Fatal("no pong")
	}
}

func TestEIDMismatchAndGarbageClose1003(t *testing.T) {
	ep, _ := usptest.Endpoint(t)
	tr := startServer(t, ep, Options{})
	url := "ws://" + tr.Addr() + "/usp"
	// A record whose from_id differs from ?eid=.
	ws, _, err := dial(t, url, "os::00D09E-REAL", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	rec, _ := pkgusp.MarshalWebSocketConnect("os::00D09E-FAKE", ep.ID())
	if err := ws.WriteMessage(websocket.BinaryMessage, rec); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ws.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseUnsupportedData) {
		t.Fatalf("eid mismatch: %v", err)
	}
	// Garbage.
	ws2, _, err := dial(t, url, "os::00D09E-G", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws2.Close()
	if err := ws2.WriteMessage(websocket.BinaryMessage, []byte("not a record")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ws2.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseUnsupportedData) {
		t.Fatalf("garbage: %v", err)
	}
	// Text frame.
	ws3, _, err := dial(t, url, "os::00D09E-T", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws3.Close()
	_ = ws3.WriteMessage(websocket.TextMessage, []byte("hello"))
	if _, _, err := ws3.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseUnsupportedData) {
		t.Fatalf("text frame: %v", err)
	}
}

func TestTooLargeMessage(t *testing.T) {
	ep, _ := usptest.Endpoint(t)
	tr := startServer(t, ep, Options{MaxMessageBytes: 1024})
	ws, _, err := dial(t, "ws://"+tr.Addr()+"/usp", "os::00D09E-BIG", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	_ = ws.WriteMessage(websocket.BinaryMessage, make([]byte, 4096))
	if _, _, err := ws.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseMessageTooBig) {
		t.Fatalf("too large: %v", err)
	}
}

// TestNewConnectionReplacesOld: an authenticated agent's new connection
// replaces its old one (it evidently lost it).
func TestNewConnectionReplacesOld(t *testing.T) {
	ep, b := usptest.Endpoint(t)
	eid := "os::00D09E-RE-" + bus.NewID()[:6]
	auth := secretsOf(eid, "the agent's secret, 20+ chars")
	tr := startServer(t, ep, Options{Auth: auth})
	url := "ws://" + tr.Addr() + "/usp"
	w := usptest.Watch(t, b, eid)
	first := startAgent(t, url, ep.ID(), eid, nil)
	w.Wait("online", nil)
	second := startAgentWith(t, url, ep.ID(), eid, nil, bearer("the agent's secret, 20+ chars"))
	if code := closeCode(t, first.closed); code != websocket.ClosePolicyViolation {
		t.Fatalf("old connection closed with %d", code)
	}
	_ = second
	// Commands reach the agent over the new connection.
	if got := usptest.MustGet(t, b, eid, "Device.DeviceInfo.SerialNumber"); got["Device.DeviceInfo.SerialNumber"] != "SN-"+eid {
		t.Fatal(got)
	}
	if second.Requests("GET") == 0 {
		t.Fatal("request did not go over the new connection")
	}
}

func TestTLSAndIdleTimeout(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, pool := selfSigned(t, dir)
	ep, b := usptest.Endpoint(t)
	tr := startServer(t, ep, Options{TLSCertFile: certFile, TLSKeyFile: keyFile, PingInterval: time.Hour, IdleTimeout: 300 * time.Millisecond})
	eid := "os::00D09E-TLS"
	w := usptest.Watch(t, b, eid)
	a := startAgent(t, "wss://"+tr.Addr()+"/usp", ep.ID(), eid, &tls.Config{RootCAs: pool, ServerName: "localhost"})
	w.Wait("online", nil)
	if got := usptest.MustGet(t, b, eid, "Device.DeviceInfo.ModelName"); got["Device.DeviceInfo.ModelName"] != "TA-1" {
		t.Fatal(got)
	}
	// The agent then stays silent without pinging: the server closes it.
	_ = closeCode(t, a.closed)
	w.Wait("offline", nil)

	if _, err := New(Options{Endpoint: ep, TLSCertFile: certFile}); err == nil {
		t.Fatal("cert without key accepted")
	}
	bad, _ := New(Options{Endpoint: ep, Addr: "127.0.0.1:0", TLSCertFile: keyFile, TLSKeyFile: keyFile})
	if err := bad.Start(); err == nil || !strings.Contains(err.Error(), "TLS certificate") {
		t.Fatalf("bad certificate: %v", err)
	}
}

func TestPortInUse(t *testing.T) {
	ep, _ := usptest.Endpoint(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	tr, _ := New(Options{Endpoint: ep, Addr: l.Addr().String()})
	if err := tr.Start(); err == nil || !strings.Contains(err.Error(), "cannot listen on "+l.Addr().String()) {
		t.Fatalf("port in use: %v", err)
	}
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func selfSigned(t testing.TB, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}
