package cwmp

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/cwmp"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// testPassword passes CheckSharedPassword.
const testPassword = "s3cret-Duet-42"

func sharedAuth(o *Options) { o.Auth, o.Username, o.Password = AuthShared, "acs", testPassword }

func TestAuthSharedDigest(t *testing.T) {
	e := newEnv(t, sharedAuth)
	e.queue(cmdGet("Device.DeviceInfo.ModelName"))
	// Keep-alive: one challenge, then the connection is authenticated.
	c := newCPE(t, e.url, "Device.", "A1", true, false)
	c.user, c.pass = "acs", testPassword
	c.session(c.inform(cwmp.EventPeriodic))
	if len(c.handled) != 1 {
		t.Fatalf("handled %v", c.handled)
	}
	// New connection per POST: each is re-authenticated (TR-069 §3.4.4, docs/cwmp-interop.md #10).
	e.queue(cmdGet("Device.DeviceInfo.ModelName"))
	c2 := newCPE(t, e.url, "Device.", "A2", false, true)
	c2.user, c2.pass = "acs", testPassword
	c2.session(c2.inform(cwmp.EventPeriodic))
	if len(c2.handled) != 1 {
		t.Fatalf("handled %v", c2.handled)
	}
	// Without credentials a session cannot even start.
	c3 := newCPE(t, e.url, "Device.", "A3", true, false)
	resp, _ := c3.post(c3.inform())
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(resp.Header.Get("WWW-Authenticate"), `qop="auth"`) {
		t.Fatalf("no credentials: %d %v", resp.StatusCode, resp.Header)
	}
	for _, h := range resp.Header.Values("WWW-Authenticate") {
		if strings.HasPrefix(h, "Basic") {
			t.Errorf("Basic offered over plain HTTP: %v", h)
		}
	}
}

func TestAuthSharedFailure(t *testing.T) {
	e := newEnv(t, sharedAuth)
	c := newCPE(t, e.url, "Device.", "AF", true, false)
	c.user, c.pass = "acs", "wrong"
	inf := c.inform()
	resp, _ := c.post(inf) // challenge, then a wrong answer: first failure
	if resp.StatusCode != http.StatusUnauthorized || resp.Close {
		t.Fatalf("first failure: %d close=%v", resp.StatusCode, resp.Close)
	}
	resp, _ = c.post(inf) // second failure on the connection
	if resp.StatusCode != http.StatusUnauthorized || !resp.Close {
		t.Fatalf("second failure: %d close=%v, want 401 + Connection: close", resp.StatusCode, resp.Close)
	}
	if e.countEvents("inform", c.id()) != 0 {
		t.Fatal("an unauthenticated Inform was published")
	}
}

func TestAuthBasic(t *testing.T) {
	t.Run("refused over HTTP", func(t *testing.T) {
		e := newEnv(t, sharedAuth)
		c := newCPE(t, e.url, "Device.", "B1", true, false)
		c.user, c.pass, c.basic = "acs", testPassword, true
		if resp, _ := c.post(c.inform()); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("Basic over HTTP: %d", resp.StatusCode)
		}
	})
	t.Run("allowed over HTTP when configured", func(t *testing.T) {
		e := newEnv(t, func(o *Options) { sharedAuth(o); o.AllowBasicOverHTTP = true })
		c := newCPE(t, e.url, "Device.", "B2", true, false)
		c.user, c.pass, c.basic = "acs", testPassword, true
		c.session(c.inform())
		c.pass = "bad"
		c2 := newCPE(t, e.url, "Device.", "B3", true, false)
		c2.user, c2.pass, c2.basic = "acs", "bad", true
		if resp, _ := c2.post(c2.inform()); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("wrong Basic password: %d", resp.StatusCode)
		}
	})
	t.Run("over HTTPS", func(t *testing.T) {
		cert, key := selfSigned(t)
		e := newEnv(t, func(o *Options) { sharedAuth(o); o.TLSCertFile, o.TLSKeyFile = cert, key })
		c := newCPE(t, strings.Replace(e.url, "http://", "https://", 1), "Device.", "B4", true, false)
		c.client.Transport.(*http.Transport).TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
		c.user, c.pass, c.basic = "acs", testPassword, true
		body, _ := cwmp.Encode(&cwmp.Envelope{Body: c.inform()})
		resp, _ := c.postOnce(body, "")
		if resp.StatusCode != 401 || !strings.Contains(strings.Join(resp.Header.Values("WWW-Authenticate"), "|"), `Basic realm="Duet"`) {
			t.Errorf("challenge over HTTPS: %d %v", resp.StatusCode, resp.Header.Values("WWW-Authenticate"))
		}
		c.session(c.inform())
	})
}

func TestAuthPerDevice(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Auth = AuthPerDevice })
	creds, err := e.bus.ServeCredentials("", func(_ context.Context, id string) (*duetv1.Credentials, error) {
		if id != "00D09E-IGW-PD1" {
			return &duetv1.Credentials{}, nil
		}
		return &duetv1.Credentials{Found: true, Username: "pd1", DigestHa1: ha1("pd1", "Duet", "pw1"), Realm: "Duet"}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(creds.Stop)

	c := newCPE(t, e.url, "Device.", "PD1", true, false)
	c.user, c.pass = "pd1", "pw1"
	c.session(c.inform(cwmp.EventPeriodic))

	// Right password, but the username belongs to another device.
	c2 := newCPE(t, e.url, "Device.", "PD2", true, false)
	c2.user, c2.pass = "pd1", "pw1"
	if resp, _ := c2.post(c2.inform()); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("device with no credentials: %d", resp.StatusCode)
	}
	// Basic verified against the HA1 (AllowBasicOverHTTP off: refused).
	c3 := newCPE(t, e.url, "Device.", "PD1", true, false)
	c3.user, c3.pass, c3.basic = "pd1", "pw1", true
	if resp, _ := c3.post(c3.inform()); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("Basic over HTTP in per-device mode: %d", resp.StatusCode)
	}
}

func TestAuthPerDeviceBasicHA1(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Auth = AuthPerDevice; o.AllowBasicOverHTTP = true })
	creds, err := e.bus.ServeCredentials("", func(_ context.Context, id string) (*duetv1.Credentials, error) {
		return &duetv1.Credentials{Found: true, Username: "u-" + id, DigestHa1: ha1("u-"+id, "Duet", "pw")}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(creds.Stop)
	c := newCPE(t, e.url, "Device.", "PB1", true, false)
	c.user, c.pass, c.basic = "u-"+c.id(), "pw", true
	c.session(c.inform())
	c2 := newCPE(t, e.url, "Device.", "PB2", true, false)
	c2.user, c2.pass, c2.basic = "u-"+c2.id(), "nope", true
	if resp, _ := c2.post(c2.inform()); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong Basic password: %d", resp.StatusCode)
	}
}

func selfSigned(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "duet-test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return certFile, keyFile
}

// TestAuthDigestReplayRefused: a captured Authorization header sent again
// (same nonce, same nonce count) is refused; the next count is accepted
// (RFC 2617 §3.2.2).
func TestAuthDigestReplayRefused(t *testing.T) {
	e := newEnv(t, sharedAuth)
	c := newCPE(t, e.url, "Device.", "RP1", true, false)
	body, err := cwmp.Encode(&cwmp.Envelope{Body: c.inform(cwmp.EventPeriodic)})
	if err != nil {
		t.Fatal(err)
	}
	var nonce string
	fresh := func(authz string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, e.url, strings.NewReader(string(body)))
		req.Header.Set("Content-Type", "text/xml")
		req.Close = true // a new connection each time, as an attacker would use
		if authz != "" {
			req.Header.Set("Authorization", authz)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if authz == "" {
			p := parseAuthParams(strings.TrimPrefix(resp.Header.Get("WWW-Authenticate"), "Digest "))
			nonce = p["nonce"]
		}
		return resp.StatusCode
	}
	if code := fresh(""); code != http.StatusUnauthorized || nonce == "" {
		t.Fatalf("no challenge: %d", code)
	}
	uri := strings.TrimPrefix(e.url, "http://"+strings.SplitN(strings.TrimPrefix(e.url, "http://"), "/", 2)[0])
	if uri == "" {
		uri = "/"
	}
	authz := func(nc string) string {
		ha1 := md5hex("acs:Duet:" + testPassword)
		ha2 := md5hex("POST:" + uri)
		resp := md5hex(ha1 + ":" + nonce + ":" + nc + ":c0ffee:auth:" + ha2)
		return `Digest username="acs", realm="Duet", nonce="` + nonce + `", uri="` + uri + `", qop=auth, nc=` + nc + `, cnonce="c0ffee", response="` + resp + `"`
	}
	if code := fresh(authz("00000001")); code != http.StatusOK {
		t.Fatalf("first use: %d", code)
	}
	if code := fresh(authz("00000001")); code != http.StatusUnauthorized {
		t.Fatalf("replayed header accepted: %d", code)
	}
	if code := fresh(authz("00000002")); code != http.StatusOK {
		t.Fatalf("next nonce count refused: %d", code)
	}
}
