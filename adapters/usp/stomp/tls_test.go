package stomp

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/duet-dm/duet/adapters/usp/internal/usptest"
	"github.com/duet-dm/duet/pkg/tlsutil"
	"github.com/duet-dm/duet/pkg/tlsutil/tlstest"
)

// tlsFront is a STOMP broker behind TLS that requires a client
// certificate: a TLS listener that passes each connection on to the
// embedded broker. (RabbitMQ's TLS listener needs a broker restart with a
// new configuration, too heavy for a test; the STOMP client's TLS is the
// same either way.)
func tlsFront(t *testing.T, ca *tlstest.CA) string {
	t.Helper()
	br, err := StartEmbeddedBroker("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = br.Close() })
	pair := ca.Issue("127.0.0.1")
	src, err := tlsutil.Load(tlsutil.Files{Surface: "stomp-test", Cert: pair.Cert, Key: pair.Key, CA: ca.File})
	if err != nil {
		t.Fatal(err)
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", src.ServerConfig(tls.RequireAndVerifyClientCert))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if err := c.(*tls.Conn).Handshake(); err != nil {
					return
				}
				b, err := net.Dial("tcp", br.Addr())
				if err != nil {
					return
				}
				defer b.Close()
				done := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(b, c); done <- struct{}{} }()
				go func() { _, _ = io.Copy(c, b); done <- struct{}{} }()
				<-done
			}()
		}
	}()
	return l.Addr().String()
}

// TestTLSToExternalBroker: STOMP over TLS with a private CA and a client
// certificate (issue 15 §5); without the certificate or trusting another CA
// the transport does not start.
func TestTLSToExternalBroker(t *testing.T) {
	ca := tlstest.NewCA(t, "broker CA")
	addr := tlsFront(t, ca)
	client := ca.Issue("duet")
	good, err := tlsutil.Load(tlsutil.Files{Surface: "stomp", CA: ca.File, Cert: client.Cert, Key: client.Key})
	if err != nil {
		t.Fatal(err)
	}
	ep, _ := usptest.Endpoint(t)
	startTransport(t, ep, Options{BrokerAddr: addr, TLS: good.ClientConfig(""), ConnectTimeout: 30 * time.Second})

	noCert, _ := tlsutil.Load(tlsutil.Files{Surface: "stomp", CA: ca.File})
	otherCA, _ := tlsutil.Load(tlsutil.Files{Surface: "stomp", CA: tlstest.NewCA(t, "other").File, Cert: client.Cert, Key: client.Key})
	for name, src := range map[string]*tlsutil.Source{"no client certificate": noCert, "another CA": otherCA} {
		t.Run(name, func(t *testing.T) {
			ep, _ := usptest.Endpoint(t)
			tr, err := New(Options{Endpoint: ep, BrokerAddr: addr, TLS: src.ClientConfig(""), ConnectTimeout: 5 * time.Second})
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
