package e2e

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/store/storetest"
	"github.com/duet-dm/duet/pkg/tlsutil"
	"github.com/duet-dm/duet/pkg/tlsutil/tlstest"
)

// TestEmbeddedBusIsClosed: `duet serve` with the embedded NATS refuses a
// plain NATS client, writes the roles' NKeys privately in the data
// directory, and an integrator's key reads events but sends no command
// (issue 15 §4).
func TestEmbeddedBusIsClosed(t *testing.T) {
	env := baseEnv(t, storetest.NewDatabase(t))
	d := startDuet(t, env, "serve")
	d.waitReady(60 * time.Second)
	url := "nats://127.0.0.1:" + env["DUET_NATS_PORT"]

	if nc, err := nats.Connect(url, nats.Timeout(30*time.Second)); err == nil {
		nc.Close()
		t.Fatal("a plain NATS client connected to the embedded bus")
	}
	dir := filepath.Join(env["DUET_DATA_DIR"], "bus")
	st, err := os.Stat(dir)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("%s: %v mode %v, want 0700", dir, err, st.Mode().Perm())
	}
	for _, f := range []string{"controller.nk", "cwmp.nk", "usp.nk", "integrator.nk", "seal.key"} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v, want mode 0600", f, err)
		}
	}

	errs := make(chan error, 8)
	opt, err := nats.NkeyOptionFromSeed(filepath.Join(dir, "integrator.nk"))
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(url, opt, nats.Timeout(30*time.Second),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
	if err != nil {
		t.Fatalf("the integrator key does not connect: %v", err)
	}
	defer nc.Close()
	sub, err := nc.SubscribeSync("duet.evt.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// A command published by the integrator is refused by the server.
	if err := nc.Publish("duet.cmd.usp.os~3A~3Avictim", []byte("x")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		if !errors.Is(err, nats.ErrPermissionViolation) {
			t.Fatalf("error %v, want a permissions violation", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the integrator's command was not refused")
	}
	// The subscription itself was allowed.
	if !sub.IsValid() {
		t.Fatal("the integrator's event subscription was refused")
	}
}

// https answers GET url with a client trusting ca.
func httpsGet(ca *tlsutil.Source, url string) (int, *tls.ConnectionState, error) {
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: ca.ClientConfig(""), DisableKeepAlives: true}}
	res, err := c.Get(url)
	if err != nil {
		return 0, nil, err
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, res.Body)
	return res.StatusCode, res.TLS, nil
}

// TestTLSSurfaces: the API, the CWMP ACS (requiring CPE client
// certificates), the WebSocket server and the embedded NATS all speak TLS
// with certificates of a private CA, and the API's certificate renewed on
// disk is served after SIGHUP without a restart (issue 15 §5).
func TestTLSSurfaces(t *testing.T) {
	ca := tlstest.NewCA(t, "duet test CA")
	apiDir := t.TempDir()
	api := ca.IssueTo(apiDir, "127.0.0.1")
	srv := ca.Issue("127.0.0.1")
	env := baseEnv(t, storetest.NewDatabase(t))
	env["DUET_HTTP_TLS_CERT"], env["DUET_HTTP_TLS_KEY"] = api.Cert, api.Key
	env["DUET_CWMP_TLS_CERT"], env["DUET_CWMP_TLS_KEY"], env["DUET_CWMP_TLS_CLIENT_CA"] = srv.Cert, srv.Key, ca.File
	env["DUET_WS_TLS_CERT"], env["DUET_WS_TLS_KEY"] = srv.Cert, srv.Key
	env["DUET_NATS_TLS_CERT"], env["DUET_NATS_TLS_KEY"] = srv.Cert, srv.Key
	d := startDuet(t, env, "serve")
	caOnly, err := tlsutil.Load(tlsutil.Files{Surface: "test", CA: ca.File})
	if err != nil {
		t.Fatal(err)
	}
	base := "https://" + env["DUET_HTTP_ADDR"]
	bustest.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		select {
		case <-d.done:
			d.exited = true
			t.Fatalf("duet exited: %v\n%s", d.err, d.out.String())
		default:
		}
		code, _, err := httpsGet(caOnly, base+"/readyz")
		if err != nil {
			return err
		}
		if code != 200 {
			return fmt.Errorf("readyz %d", code)
		}
		return nil
	})
	// Plain HTTP to the TLS port gets Go's 400, never the API.
	if res, err := http.Get("http://" + env["DUET_HTTP_ADDR"] + "/api/v1/devices"); err == nil {
		res.Body.Close()
		if res.StatusCode != http.StatusBadRequest {
			t.Fatalf("plain HTTP answered %d", res.StatusCode)
		}
	}
	if !strings.Contains(d.out.String(), "https://") {
		t.Error("the banner does not say https://")
	}

	// Renewal: new files, SIGHUP, the next connection has the new one.
	renewed := ca.IssueTo(apiDir, "127.0.0.1")
	d.signal(syscall.SIGHUP)
	bustest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		_, cs, err := httpsGet(caOnly, base+"/healthz")
		if err != nil {
			return err
		}
		if cs.PeerCertificates[0].SerialNumber.Cmp(renewed.Serial) != 0 {
			return errors.New("the API still serves the old certificate")
		}
		return nil
	})

	// CWMP: a CPE without a client certificate is refused at the
	// handshake; one with a certificate of the CA reaches the ACS.
	cwmpURL := "https://" + env["DUET_CWMP_ADDR"] + "/"
	if _, _, err := httpsGet(caOnly, cwmpURL); err == nil {
		t.Fatal("the ACS accepted a CPE without a client certificate")
	}
	cpe := ca.Issue("00D09E-ONT-SN1")
	withCert, err := tlsutil.Load(tlsutil.Files{Surface: "cpe", CA: ca.File, Cert: cpe.Cert, Key: cpe.Key})
	if err != nil {
		t.Fatal(err)
	}
	if code, _, err := httpsGet(withCert, cwmpURL); err != nil || code == 0 {
		t.Fatalf("a CPE with a client certificate: %d %v", code, err)
	}
	other := tlstest.NewCA(t, "other CA").Issue("00D09E-ONT-SN1")
	wrong, _ := tlsutil.Load(tlsutil.Files{Surface: "cpe", CA: ca.File, Cert: other.Cert, Key: other.Key})
	if _, _, err := httpsGet(wrong, cwmpURL); err == nil {
		t.Fatal("the ACS accepted a certificate of another CA")
	}

	// WebSocket: the TLS handshake succeeds with the CA (the upgrade
	// itself is the USP tests' business).
	if _, _, err := httpsGet(caOnly, "https://"+env["DUET_WS_ADDR"]+"/usp"); err != nil {
		t.Fatalf("wss: %v", err)
	}

	// NATS: TLS is required of network clients; with it and a key, in.
	url := "nats://127.0.0.1:" + env["DUET_NATS_PORT"]
	key, _ := nats.NkeyOptionFromSeed(filepath.Join(env["DUET_DATA_DIR"], "bus", string(bus.RoleIntegrator)+".nk"))
	if nc, err := nats.Connect(url, key, nats.Timeout(30*time.Second)); err == nil {
		nc.Close()
		t.Fatal("a NATS client without TLS connected")
	}
	nc, err := nats.Connect(url, key, nats.Secure(caOnly.ClientConfig("")), nats.Timeout(30*time.Second))
	if err != nil {
		t.Fatalf("NATS over TLS: %v", err)
	}
	nc.Close()
}
