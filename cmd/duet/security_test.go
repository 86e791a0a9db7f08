package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/bus/bustest"
)

// syncBuffer is a bytes.Buffer safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestURLCredentialsNotPrinted: the password of DUET_NATS_URL appeared in
// the "duet is up" log line and the banner (issue 15 §9). Now neither
// the log nor stdout holds it.
func TestURLCredentialsNotPrinted(t *testing.T) {
	srv := bustest.StartServer(t) // no auth: it ignores the credentials
	natsURL := strings.Replace(srv.URL(), "nats://", "nats://duet:s3cret-pw@", 1)
	var out, errs syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	up := make(chan struct{})
	m := &Main{Stdout: &out, Stderr: &errs, Getenv: func(k string) string {
		return map[string]string{
			"DUET_NATS_URL":  natsURL,
			"DUET_ONLY":      "usp-ws",
			"DUET_HTTP_ADDR": "127.0.0.1:0",
			"DUET_WS_ADDR":   "127.0.0.1:0",
		}[k]
	}, Ready: func(Listeners) { close(up) }}
	done := make(chan error, 1)
	go func() { done <- m.serve(ctx, nil) }()
	select {
	case <-up:
	case err := <-done:
		t.Fatalf("serve: %v\n%s", err, errs.String())
	case <-time.After(60 * time.Second):
		t.Fatal("serve did not come up")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	all := out.String() + errs.String()
	if strings.Contains(all, "s3cret-pw") {
		t.Fatalf("the NATS password was printed:\n%s", all)
	}
	if !strings.Contains(out.String(), "duet:***@") {
		t.Fatalf("banner without the redacted URL:\n%s", out.String())
	}
}

// TestReadyzSaysNoMore: /readyz showed a failed check's error (database
// user, host, name) to anyone; now it says "not ready" and the reason
// goes to the log.
func TestReadyzSaysNoMore(t *testing.T) {
	var logs syncBuffer
	h := readyHandler([]readyCheck{{"postgres", func(context.Context) error {
		return errors.New(`failed to connect to user=duet database=prod host=10.9.8.7`)
	}}}, slog.New(slog.NewTextHandler(&logs, nil)))
	rec := httptest.NewRecorder()
	h(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != http.StatusServiceUnavailable || rec.Body.String() != "not ready\n" {
		t.Fatalf("readyz: %d %q", rec.Code, rec.Body.String())
	}
	if !strings.Contains(logs.String(), "10.9.8.7") {
		t.Fatalf("the reason is not logged: %s", logs.String())
	}
}

// TestIdleAPIConnectionsClosed: 200 idle API connections were still open
// after 75 s (issue 15 §8). With DUET_HTTP_IDLE_TIMEOUT the server closes
// a keep-alive connection that sends nothing more.
func TestIdleAPIConnectionsClosed(t *testing.T) {
	s := newSettings()
	if err := s.parse("serve", nil, func(k string) string {
		return map[string]string{"DUET_HTTP_IDLE_TIMEOUT": "1s", "DUET_ONLY": "controller"}[k]
	}, io.Discard); err != nil {
		t.Fatal(err)
	}
	cfg, err := s.checkServe()
	if err != nil {
		t.Fatal(err)
	}
	srv := httpServer(cfg, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}), slog.New(slog.NewTextHandler(io.Discard, nil)))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	// Generous: the server closes after 1 s idle; we wait up to 30.
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("idle connection not closed by the server: %v", err)
	}
}

// TestSlowBodyCutOff: a client that sends headers and then trickles (here:
// stops) its body is cut off after DUET_HTTP_READ_TIMEOUT.
func TestSlowBodyCutOff(t *testing.T) {
	s := newSettings()
	if err := s.parse("serve", nil, func(k string) string {
		return map[string]string{"DUET_HTTP_READ_TIMEOUT": "1s", "DUET_ONLY": "controller"}[k]
	}, io.Discard); err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	cfg, err := s.checkServe()
	if err != nil {
		t.Fatal(err)
	}
	srv := httpServer(cfg, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		got <- err
	}), slog.New(slog.NewTextHandler(io.Discard, nil)))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err == nil {
			t.Fatal("the body read succeeded")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a stalled body held the handler for 30 s")
	}
}
