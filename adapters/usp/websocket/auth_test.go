package websocket

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/duet-dm/duet/adapters/usp/internal/usptest"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// secretMap is an in-memory AgentAuthenticator; cmd/duet's is PostgreSQL.
type secretMap map[string]string

func (m secretMap) CheckAgentSecret(_ context.Context, eid, secret string) (bool, error) {
	want, ok := m[eid]
	return ok && want == secret, nil
}

func secretsOf(kv ...string) secretMap {
	m := secretMap{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// TestTakeoverRefused: a client without credentials dialling with
// ?eid=<victim> no longer replaces the victim's connection (409); one
// with a wrong token is refused (401). Before: the victim's connection
// was closed and its requests went to the newcomer.
func TestTakeoverRefused(t *testing.T) {
	ep, b := usptest.Endpoint(t)
	eid := "os::00D09E-TO-" + bus.NewID()[:6]
	tr := startServer(t, ep, Options{Auth: secretsOf(eid, "victim secret of 20+ chars")})
	url := "ws://" + tr.Addr() + "/usp"
	w := usptest.Watch(t, b, eid)
	victim := startAgentWith(t, url, ep.ID(), eid, nil, bearer("victim secret of 20+ chars"))
	w.Wait("online", nil)

	_, resp, err := dialWith(url, eid, nil, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusConflict {
		t.Fatalf("unauthenticated takeover: %v %v", resp, err)
	}
	_, resp, err = dialWith(url, eid, nil, bearer("a guess that is not the secret"))
	if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong token: %v %v", resp, err)
	}
	if got := usptest.MustGet(t, b, eid, "Device.DeviceInfo.SerialNumber"); got["Device.DeviceInfo.SerialNumber"] != "SN-"+eid {
		t.Fatal(got)
	}
	if victim.Requests("GET") == 0 {
		t.Fatal("the request did not reach the victim")
	}
	if n := usptest.MetricValue(t, "duet_usp_agent_refused_total", map[string]string{"mtp": "websocket", "reason": "takeover"}); n < 1 {
		t.Fatalf("takeover not counted (%v)", n)
	}
}

// TestRequireAuthAndClientCertificates: with RequireAuth, an agent with
// neither token nor certificate is refused; a certificate naming the
// endpoint ID (urn:bbf:usp:id:) authenticates over wss://; one naming
// another endpoint ID does not.
func TestRequireAuthAndClientCertificates(t *testing.T) {
	pki := usptest.NewPKI(t)
	dir := t.TempDir()
	srv := pki.Server()
	certFile, keyFile, caFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem"), filepath.Join(dir, "ca.pem")
	writePEM(t, certFile, "CERTIFICATE", srv.Certificate[0])
	writeKey(t, keyFile, srv)
	writePEM(t, caFile, "CERTIFICATE", pki.CA())
	ep, b := usptest.Endpoint(t)
	tr := startServer(t, ep, Options{TLSCertFile: certFile, TLSKeyFile: keyFile, ClientCAFile: caFile, RequireAuth: true})
	url := "wss://" + tr.Addr() + "/usp"
	eid := "os::00D09E-MT-" + bus.NewID()[:6]
	if _, resp, err := dialWith(url, eid, pki.ClientTLS(nil), nil); err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no credentials: %v %v", resp, err)
	}
	other := pki.Agent("os::00D09E-OTHER")
	if _, resp, err := dialWith(url, eid, pki.ClientTLS(&other), nil); err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("another's certificate: %v %v", resp, err)
	}
	cert := pki.Agent(eid)
	w := usptest.Watch(t, b, eid)
	startAgentWith(t, url, ep.ID(), eid, pki.ClientTLS(&cert), nil)
	w.Wait("online", func(ev *duetv1.Event) bool { return true })
	bustest.CheckFor(t, 30e9, 10e6, func() error {
		_, err := usptest.Do(b, eid, &duetv1.Command{Op: &duetv1.Command_Get{Get: &duetv1.GetRequest{Paths: []string{"Device.DeviceInfo.SerialNumber"}}}})
		return err
	})
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func writeKey(t *testing.T, path string, c tls.Certificate) {
	t.Helper()
	der, err := x509MarshalKey(c)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, path, "PRIVATE KEY", der)
}

func x509MarshalKey(c tls.Certificate) ([]byte, error) {
	return x509.MarshalPKCS8PrivateKey(c.PrivateKey)
}
