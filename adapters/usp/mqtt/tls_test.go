package mqtt

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/adapters/usp/internal/usptest"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/tlsutil"
	"github.com/duet-dm/duet/pkg/tlsutil/tlstest"
)

// privateMosquittoTLS starts a Mosquitto of the test's own on a random
// port, with a TLS listener that requires a client certificate of ca
// (issue 15 §5: TLS to external brokers).
func privateMosquittoTLS(t *testing.T, ca *tlstest.CA) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	srv := ca.Issue("127.0.0.1", "localhost")
	dir := t.TempDir()
	conf := filepath.Join(dir, "mosquitto.conf")
	// The test's files are readable by its user only: "user root" keeps a
	// Mosquitto started as root from switching to an account that cannot
	// read them (ignored when not root).
	err = os.WriteFile(conf, []byte(fmt.Sprintf(`listener %d 127.0.0.1
cafile %s
certfile %s
keyfile %s
require_certificate true
allow_anonymous true
persistence false
log_dest stderr
user root
`, port, ca.File, srv.Cert, srv.Key)), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("mosquitto", "-c", conf)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start mosquitto: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("mosquitto:\n%s", out.String())
		}
	})
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	bustest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.Close()
		}
		return err
	})
	return addr
}

// TestTLSToExternalBroker: Duet connects to a Mosquitto that requires TLS
// and a client certificate, with a private CA; without its certificate, or
// trusting another CA, it does not.
func TestTLSToExternalBroker(t *testing.T) {
	ca := tlstest.NewCA(t, "broker CA")
	addr := privateMosquittoTLS(t, ca)
	client := ca.Issue("duet")
	withCert, err := tlsutil.Load(tlsutil.Files{Surface: "mqtt", CA: ca.File, Cert: client.Cert, Key: client.Key})
	if err != nil {
		t.Fatal(err)
	}
	ep, _ := usptest.Endpoint(t)
	tr := startTransport(t, ep, Options{BrokerURL: "mqtts://" + addr, Topic: uniq("usp/tls"), TLS: withCert.ClientConfig(""),
		ConnectTimeout: 30 * time.Second})
	if tr == nil {
		t.Fatal("no transport")
	}

	noCert, _ := tlsutil.Load(tlsutil.Files{Surface: "mqtt", CA: ca.File})
	otherCA, _ := tlsutil.Load(tlsutil.Files{Surface: "mqtt", CA: tlstest.NewCA(t, "other").File, Cert: client.Cert, Key: client.Key})
	for name, src := range map[string]*tlsutil.Source{"no client certificate": noCert, "another CA": otherCA} {
		t.Run(name, func(t *testing.T) {
			ep, _ := usptest.Endpoint(t)
			tr, err := New(Options{Endpoint: ep, BrokerURL: "tls://" + addr, Topic: uniq("usp/tls"), TLS: src.ClientConfig(""),
				ConnectTimeout: 3 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = tr.Shutdown(ctx)
			}()
			if err := tr.Start(); err == nil {
				t.Fatal("connected")
			}
		})
	}
}
