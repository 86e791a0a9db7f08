package tlsutil_test

import (
	"crypto/tls"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/tlsutil"
	"github.com/duet-dm/duet/pkg/tlsutil/tlstest"
)

// serve accepts TLS connections on a random port and completes each
// handshake, until the test ends.
func serve(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				_ = c.(*tls.Conn).Handshake()
				_, _ = c.Write([]byte("x"))
				_ = c.Close()
			}()
		}
	}()
	return ln.Addr().String()
}

// serverSerial dials addr and returns the serial of the certificate the
// server presented.
func serverSerial(addr string, cfg *tls.Config) (*big.Int, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 30 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	// TLS 1.3: a refused client certificate shows on the first read.
	if _, err := c.Read(make([]byte, 1)); err != nil {
		return nil, err
	}
	return c.ConnectionState().PeerCertificates[0].SerialNumber, nil
}

// TestReloadPicksUpANewCertificate: a renewed certificate is served by the
// next connection without a restart, on the file check and on SIGHUP.
func TestReloadPicksUpANewCertificate(t *testing.T) {
	ca := tlstest.NewCA(t, "test CA")
	dir := t.TempDir()
	first := ca.IssueTo(dir, "127.0.0.1")
	r := tlsutil.NewReloader(time.Hour, nil) // only SIGHUP and ReloadAll
	src, err := r.Add(tlsutil.Files{Surface: "test", Cert: first.Cert, Key: first.Key})
	if err != nil {
		t.Fatal(err)
	}
	r.Start(true)
	defer r.Stop()
	addr := serve(t, src.ServerConfig(tls.NoClientCert))
	caOnly, err := tlsutil.Load(tlsutil.Files{Surface: "client", CA: ca.File})
	if err != nil {
		t.Fatal(err)
	}
	client := caOnly.ClientConfig("127.0.0.1")
	sn, err := serverSerial(addr, client)
	if err != nil || sn.Cmp(first.Serial) != 0 {
		t.Fatalf("first serial %v, %v; want %v", sn, err, first.Serial)
	}

	second := ca.IssueTo(dir, "127.0.0.1")
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	bustest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		sn, err := serverSerial(addr, client)
		if err != nil {
			return err
		}
		if sn.Cmp(second.Serial) != 0 {
			return fmt.Errorf("serial %v, want the renewed %v", sn, second.Serial)
		}
		return nil
	})

	// A broken file keeps the certificate in use.
	if err := os.WriteFile(second.Cert, []byte("not PEM"), 0o600); err != nil {
		t.Fatal(err)
	}
	r.ReloadAll()
	if sn, err := serverSerial(addr, client); err != nil || sn.Cmp(second.Serial) != 0 {
		t.Fatalf("after a broken renewal: serial %v, %v; want %v still", sn, err, second.Serial)
	}
}

// TestReloadOnFileChange: the periodic check alone finds a renewal.
func TestReloadOnFileChange(t *testing.T) {
	ca := tlstest.NewCA(t, "test CA")
	dir := t.TempDir()
	first := ca.IssueTo(dir, "localhost")
	r := tlsutil.NewReloader(20*time.Millisecond, nil)
	src, err := r.Add(tlsutil.Files{Surface: "test", Cert: first.Cert, Key: first.Key})
	if err != nil {
		t.Fatal(err)
	}
	r.Start(false)
	defer r.Stop()
	addr := serve(t, src.ServerConfig(tls.NoClientCert))
	caOnly, _ := tlsutil.Load(tlsutil.Files{Surface: "client", CA: ca.File})
	second := ca.IssueTo(dir, "localhost")
	bustest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		sn, err := serverSerial(addr, caOnly.ClientConfig("localhost"))
		if err != nil {
			return err
		}
		if sn.Cmp(second.Serial) != 0 {
			return errors.New("old certificate still served")
		}
		return nil
	})
}

// TestClientCertificates: a server with a client CA refuses a client
// without a certificate and one from another CA, accepts one it signed;
// a client refuses a server its CA did not sign or named otherwise.
func TestClientCertificates(t *testing.T) {
	ca, other := tlstest.NewCA(t, "test CA"), tlstest.NewCA(t, "other CA")
	srvPair := ca.Issue("localhost")
	srv, err := tlsutil.Load(tlsutil.Files{Surface: "server", Cert: srvPair.Cert, Key: srvPair.Key, CA: ca.File})
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, srv.ServerConfig(tls.RequireAndVerifyClientCert))
	good := ca.Issue("client")
	bad := other.Issue("client")
	for _, c := range []struct {
		name   string
		files  tlsutil.Files
		server string
		ok     bool
	}{
		{"no client certificate", tlsutil.Files{CA: ca.File}, "localhost", false},
		{"certificate of another CA", tlsutil.Files{CA: ca.File, Cert: bad.Cert, Key: bad.Key}, "localhost", false},
		{"certificate of the CA", tlsutil.Files{CA: ca.File, Cert: good.Cert, Key: good.Key}, "localhost", true},
		{"server of another CA", tlsutil.Files{CA: other.File, Cert: good.Cert, Key: good.Key}, "localhost", false},
		{"server under another name", tlsutil.Files{CA: ca.File, Cert: good.Cert, Key: good.Key}, "duet.example", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.files.Surface = "client"
			src, err := tlsutil.Load(c.files)
			if err != nil {
				t.Fatal(err)
			}
			_, err = serverSerial(addr, src.ClientConfig(c.server))
			if (err == nil) != c.ok {
				t.Fatalf("handshake error %v, want success %v", err, c.ok)
			}
		})
	}
}

func TestLoadRefusesHalfAPair(t *testing.T) {
	p := tlstest.NewCA(t, "ca").Issue("x")
	for _, f := range []tlsutil.Files{{Cert: p.Cert}, {Key: p.Key}, {}, {Cert: p.Cert, Key: filepath.Join(t.TempDir(), "missing")}} {
		if _, err := tlsutil.Load(f); err == nil {
			t.Errorf("Load(%+v) accepted", f)
		}
	}
}
