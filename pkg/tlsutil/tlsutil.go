// Package tlsutil loads the certificates of every TLS surface of Duet (the
// API, the CWMP ACS, the USP WebSocket server, the embedded NATS server, and
// the client side of external NATS, MQTT and STOMP) and reloads them without
// a restart: when a file changes (checked every few seconds) or on SIGHUP
// (issue 15 §5; README, "Certificates").
//
// A Source is one certificate/key pair and an optional CA bundle. Its
// ServerConfig and ClientConfig read the current files on every handshake,
// so a renewed certificate is used by the next connection and established
// ones carry on.
package tlsutil

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	metricReloads = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_tls_reloads_total",
		Help: "Certificate reloads by surface and result (ok, error); an error keeps the previous certificate.",
	}, []string{"surface", "result"})
	metricExpiry = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "duet_tls_certificate_expiry_timestamp_seconds",
		Help: "When the certificate in use by each surface expires (Unix time).",
	}, []string{"surface"})
)

// Files names a surface's PEM files. Cert and Key go together; CA alone is
// a client that only verifies its server.
type Files struct {
	// Surface names the TLS surface in logs and metrics ("api", "nats").
	Surface string
	// Cert and Key: this side's certificate chain and private key.
	Cert, Key string
	// CA: the certificates that sign the peer's (the server's, for a
	// client; clients', for a server that asks for them).
	CA string
}

// Source is the current certificate and CA pool of one surface.
type Source struct {
	f     Files
	cert  atomic.Pointer[tls.Certificate]
	pool  atomic.Pointer[x509.CertPool]
	mu    sync.Mutex
	stamp string // digest of the files last loaded
}

// Load reads f's files.
func Load(f Files) (*Source, error) {
	if (f.Cert == "") != (f.Key == "") {
		return nil, fmt.Errorf("tls %s: a certificate needs its key, and a key its certificate", f.Surface)
	}
	if f.Cert == "" && f.CA == "" {
		return nil, fmt.Errorf("tls %s: no certificate and no CA", f.Surface)
	}
	s := &Source{f: f}
	if _, err := s.Reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// Files are the files s reads.
func (s *Source) Files() Files { return s.f }

// filesStamp is a digest of the files' contents: a renewal is seen
// whether it rewrote a file in place or renamed a new one over it, even
// within the file system's timestamp granularity. The files are small and
// read every few seconds.
func (s *Source) filesStamp() string {
	h := sha256.New()
	for _, p := range []string{s.f.Cert, s.f.Key, s.f.CA} {
		if p == "" {
			continue
		}
		data, err := os.ReadFile(p)
		if err != nil {
			fmt.Fprintf(h, "%s: %v\x00", p, err)
			continue
		}
		fmt.Fprintf(h, "%s:%d\x00", p, len(data))
		h.Write(data)
	}
	return string(h.Sum(nil))
}

// Reload reads the files again if they changed since the last load. A
// failure (a half-written file, a key that does not match) keeps what was
// loaded; the next check tries again.
func (s *Source) Reload() (changed bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	stamp := s.filesStamp()
	if stamp == s.stamp {
		return false, nil
	}
	if err := s.load(); err != nil {
		metricReloads.WithLabelValues(s.f.Surface, "error").Inc()
		return false, err
	}
	s.stamp = stamp
	metricReloads.WithLabelValues(s.f.Surface, "ok").Inc()
	return true, nil
}

func (s *Source) load() error {
	if s.f.Cert != "" {
		c, err := tls.LoadX509KeyPair(s.f.Cert, s.f.Key)
		if err != nil {
			return fmt.Errorf("tls %s: certificate %s / key %s: %w", s.f.Surface, s.f.Cert, s.f.Key, err)
		}
		if c.Leaf == nil && len(c.Certificate) > 0 {
			c.Leaf, _ = x509.ParseCertificate(c.Certificate[0])
		}
		if c.Leaf != nil {
			metricExpiry.WithLabelValues(s.f.Surface).Set(float64(c.Leaf.NotAfter.Unix()))
		}
		s.cert.Store(&c)
	}
	if s.f.CA != "" {
		pem, err := os.ReadFile(s.f.CA)
		if err != nil {
			return fmt.Errorf("tls %s: CA: %w", s.f.Surface, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("tls %s: CA %s holds no PEM certificate", s.f.Surface, s.f.CA)
		}
		s.pool.Store(pool)
	}
	return nil
}

// Certificate is the certificate in use (nil without one).
func (s *Source) Certificate() *tls.Certificate { return s.cert.Load() }

// CAPool is the CA pool in use (nil without a CA file).
func (s *Source) CAPool() *x509.CertPool { return s.pool.Load() }

// ServerConfig is a server's configuration: s's certificate, and client
// certificates asked for as clientAuth says, verified against s's CA.
func (s *Source) ServerConfig(clientAuth tls.ClientAuthType) *tls.Config {
	base := &tls.Config{MinVersion: tls.VersionTLS12}
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		c := &tls.Config{MinVersion: tls.VersionTLS12, ClientAuth: clientAuth, ClientCAs: s.CAPool()}
		if cert := s.Certificate(); cert != nil {
			c.Certificates = []tls.Certificate{*cert}
		}
		return c, nil
	}
	return base
}

// ClientConfig is a client's configuration: the server's certificate is
// verified against s's CA (the system's roots without one) and its name
// against serverName (the dialled host when empty); s's certificate, if
// any, is presented when the server asks, the current one each time.
func (s *Source) ClientConfig(serverName string) *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	if s == nil {
		return c
	}
	if s.f.Cert != "" {
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return s.Certificate(), nil
		}
	}
	// The CA pool is the one loaded now: crypto/tls verifies the chain
	// and the name (an IP address too) against RootCAs, which libraries
	// copy with the configuration. A changed CA bundle is used from the
	// next start; the client certificate is reloaded.
	c.RootCAs = s.CAPool()
	return c
}

// PinnedClientConfig trusts exactly s's own current certificate: for a
// client in the same process as the server that serves it (Duet's
// components on the embedded NATS), where no CA or name is involved.
func (s *Source) PinnedClientConfig() *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // replaced by the pin below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			c := s.Certificate()
			if c == nil || len(raw) == 0 || !bytes.Equal(raw[0], c.Certificate[0]) {
				return errors.New("tls: the server's certificate is not this process's own")
			}
			return nil
		},
	}
}

// Reloader checks its sources' files every interval and on SIGHUP.
type Reloader struct {
	log      *slog.Logger
	interval time.Duration
	mu       sync.Mutex
	sources  []*Source
	cancel   context.CancelFunc
	done     chan struct{}
	hup      chan os.Signal
}

// NewReloader makes a reloader checking every interval (default 5 s).
func NewReloader(interval time.Duration, log *slog.Logger) *Reloader {
	if interval <= 0 {
		interval = 5 * time.Second
	}
	if log == nil {
		log = slog.Default()
	}
	return &Reloader{log: log.With("component", "tls"), interval: interval}
}

// Add loads f and keeps it reloaded.
func (r *Reloader) Add(f Files) (*Source, error) {
	s, err := Load(f)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.sources = append(r.sources, s)
	r.mu.Unlock()
	return s, nil
}

// ReloadAll checks every source now (what SIGHUP does).
func (r *Reloader) ReloadAll() {
	r.mu.Lock()
	srcs := append([]*Source(nil), r.sources...)
	r.mu.Unlock()
	for _, s := range srcs {
		changed, err := s.Reload()
		switch {
		case err != nil:
			r.log.Error("certificate reload failed; the previous one stays in use", "surface", s.f.Surface, "err", err)
		case changed:
			attrs := []any{"surface", s.f.Surface}
			if c := s.Certificate(); c != nil && c.Leaf != nil {
				attrs = append(attrs, "not_after", c.Leaf.NotAfter.UTC().Format(time.RFC3339))
			}
			r.log.Info("certificate reloaded", attrs...)
		}
	}
}

// Start watches until Stop; with sighup it also reloads on SIGHUP.
func (r *Reloader) Start(sighup bool) {
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel, r.done = cancel, make(chan struct{})
	if sighup {
		r.hup = make(chan os.Signal, 1)
		signal.Notify(r.hup, syscall.SIGHUP)
	}
	go func() {
		defer close(r.done)
		t := time.NewTicker(r.interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			case <-r.hup: // nil without sighup: never ready
			}
			r.ReloadAll()
		}
	}()
}

// Stop ends the watch. Safe to call twice, or without Start.
func (r *Reloader) Stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	<-r.done
	if r.hup != nil {
		signal.Stop(r.hup)
	}
}
