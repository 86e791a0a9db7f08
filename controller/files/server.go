package files

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/ratelog"
	"github.com/duet-dm/duet/pkg/store"
)

var (
	metricTransfers = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_files_transfers_total",
		Help: "Transfers on the file listener, by direction (download: to a device, upload: from it; test_download, test_upload: throughput diagnostics) and outcome (complete, partial, aborted, not_found, failed, too_large).",
	}, []string{"direction", "outcome"})
	metricTransferBytes = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_files_transfer_bytes_total",
		Help: "Bytes sent to and received from devices on the file listener, by direction.",
	}, []string{"direction"})
	metricTransfersActive = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "duet_files_transfers_active",
		Help: "Transfers under way on the file listener, by direction.",
	}, []string{"direction"})
	metricRefused = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_files_refused_total",
		Help: "File listener requests refused before any transfer, by reason (no_token, malformed, signature, expired, wrong_kind, method).",
	}, []string{"reason"})
)

// ServerOptions configure NewServer.
type ServerOptions struct {
	Repository *Repository
	Signer     *Signer
	// Addr is the listen address (":7548").
	Addr string
	// TLSCert and TLSKey, both set, serve HTTPS.
	TLSCert, TLSKey string
	// ReadHeaderTimeout bounds a request's headers (default 10 s); bodies
	// and answers are not bounded in time (a firmware image on a slow
	// line takes long), only by IdleTimeout between reads.
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
	Logger            *slog.Logger
}

// Server is the file listener devices fetch files from and upload to.
type Server struct {
	o        ServerOptions
	log      *slog.Logger
	refusals *ratelog.Logger
	srv      *http.Server
	ln       net.Listener
	done     chan struct{}
	once     sync.Once
	// recordWG: transfer records written after a request ended.
	recordWG sync.WaitGroup
}

// NewServer checks options.
func NewServer(o ServerOptions) (*Server, error) {
	if o.Repository == nil || o.Signer == nil {
		return nil, errors.New("files: the listener needs a repository and a signer")
	}
	if (o.TLSCert == "") != (o.TLSKey == "") {
		return nil, errors.New("files: give both a TLS certificate and key, or neither")
	}
	if o.ReadHeaderTimeout <= 0 {
		o.ReadHeaderTimeout = 10 * time.Second
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 60 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	s := &Server{o: o, done: make(chan struct{})}
	s.log = o.Logger.With("component", "file-listener")
	s.refusals = ratelog.New(s.log, 0, 0)
	return s, nil
}

// Handler is the listener's HTTP handler (also for tests and benchmarks).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /files/{token}/{name...}", s.serveFile)
	mux.HandleFunc("HEAD /files/{token}/{name...}", s.serveFile)
	mux.HandleFunc("PUT /uploads/{token}", s.receive)
	mux.HandleFunc("POST /uploads/{token}", s.receive)
	mux.HandleFunc("GET /diagnostics/download/{token}", s.serveTest)
	mux.HandleFunc("HEAD /diagnostics/download/{token}", s.serveTest)
	mux.HandleFunc("PUT /diagnostics/upload/{token}", s.sinkTest)
	mux.HandleFunc("POST /diagnostics/upload/{token}", s.sinkTest)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		metricRefused.WithLabelValues("no_token").Inc()
		http.Error(w, "not found", http.StatusNotFound)
	})
	return mux
}

// Start binds the address and serves until Shutdown.
func (s *Server) Start() error {
	ln, err := net.Listen("tcp", s.o.Addr)
	if err != nil {
		return fmt.Errorf("files: listen %s: %w", s.o.Addr, err)
	}
	s.ln = ln
	s.srv = &http.Server{Handler: s.Handler(), ReadHeaderTimeout: s.o.ReadHeaderTimeout, IdleTimeout: s.o.IdleTimeout,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
	if s.o.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(s.o.TLSCert, s.o.TLSKey)
		if err != nil {
			_ = ln.Close()
			return fmt.Errorf("files: TLS certificate: %w", err)
		}
		s.srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		ln = tls.NewListener(ln, s.srv.TLSConfig)
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("file listener stopped", "err", err)
		}
	}()
	return nil
}

// Addr is the bound address.
func (s *Server) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Shutdown stops the listener, letting transfers under way finish until
// ctx ends. Safe to call twice.
func (s *Server) Shutdown(ctx context.Context) error {
	var err error
	s.once.Do(func() {
		if s.srv == nil {
			return
		}
		err = s.srv.Shutdown(ctx)
		<-s.done
		s.recordWG.Wait()
	})
	return err
}

// grant checks the request's token; it answers the refusal itself.
func (s *Server) grant(w http.ResponseWriter, r *http.Request, kind string) (Grant, bool) {
	g, err := s.o.Signer.Check(r.PathValue("token"), time.Now())
	reason := ""
	switch {
	case errors.Is(err, ErrTokenMalformed):
		reason = "malformed"
	case errors.Is(err, ErrTokenSignature):
		reason = "signature"
	case errors.Is(err, ErrTokenExpired):
		reason = "expired"
	case err != nil:
		reason = "malformed"
	case g.Kind != kind:
		reason = "wrong_kind"
	}
	if reason != "" {
		metricRefused.WithLabelValues(reason).Inc()
		s.refusals.Warn("file listener refused a request", "reason", reason, "method", r.Method, "remote", r.RemoteAddr, "device", g.DeviceID)
		http.Error(w, "forbidden: the URL carries no valid transfer token", http.StatusForbidden)
		return g, false
	}
	return g, true
}

// record logs and counts one transfer, and stores it without holding the
// request.
func (s *Server) record(t store.FileTransfer) {
	metricTransfers.WithLabelValues(t.Direction, t.Outcome).Inc()
	metricTransferBytes.WithLabelValues(t.Direction).Add(float64(t.Bytes))
	s.log.Info("file transfer", "direction", t.Direction, "device", t.DeviceID, "file", t.FileID, "bytes", t.Bytes,
		"duration", t.Duration.Round(time.Millisecond), "outcome", t.Outcome, "remote", t.Remote)
	s.recordWG.Add(1)
	go func() {
		defer s.recordWG.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.o.Repository.Store().RecordFileTransfer(ctx, t); err != nil {
			s.log.Warn("recording a file transfer failed", "file", t.FileID, "device", t.DeviceID, "err", err)
		}
	}()
}

// serveFile answers GET and HEAD of a file: Content-Length, ETag (the
// SHA-256), Accept-Ranges and one byte range (RFC 9110 §14); a request for
// several ranges gets the whole file (RFC 9110 §14.2 lets a server ignore
// Range).
func (s *Server) serveFile(w http.ResponseWriter, r *http.Request) {
	g, ok := s.grant(w, r, KindDownload)
	if !ok {
		return
	}
	start := time.Now()
	t := store.FileTransfer{FileID: g.FileID, DeviceID: g.DeviceID, Direction: "download", Remote: r.RemoteAddr}
	f, err := s.o.Repository.Store().FindFile(r.Context(), g.FileID)
	if err != nil {
		code := http.StatusInternalServerError
		t.Outcome = "failed"
		if devicemodel.ErrorCode(err) == devicemodel.CodeNotFound {
			code, t.Outcome = http.StatusNotFound, "not_found"
		}
		http.Error(w, http.StatusText(code), code)
		t.Duration = time.Since(start)
		s.record(t)
		return
	}
	h := w.Header()
	h.Set("Accept-Ranges", "bytes")
	h.Set("ETag", `"`+f.SHA256+`"`)
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Last-Modified", f.CreatedAt.UTC().Format(http.TimeFormat))
	from, to, partial, satisfiable := parseRange(r.Header.Get("Range"), f.Size)
	if ir := r.Header.Get("If-Range"); partial && ir != "" && ir != `"`+f.SHA256+`"` {
		from, to, partial = 0, f.Size-1, false // a different version: the whole file
	}
	if !satisfiable {
		h.Set("Content-Range", "bytes */"+strconv.FormatInt(f.Size, 10))
		http.Error(w, "range not satisfiable", http.StatusRequestedRangeNotSatisfiable)
		return
	}
	n := to - from + 1
	if f.Size == 0 {
		n = 0
	}
	h.Set("Content-Length", strconv.FormatInt(n, 10))
	status := http.StatusOK
	if partial {
		status = http.StatusPartialContent
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, to, f.Size))
	}
	if r.Method == http.MethodHead {
		w.WriteHeader(status)
		return
	}
	body, err := s.o.Repository.OpenAt(r.Context(), f.ID, from)
	if err != nil {
		s.log.Error("opening a file's bytes failed", "file", f.ID, "err", err)
		http.Error(w, "file unavailable", http.StatusServiceUnavailable)
		t.Outcome, t.Duration = "failed", time.Since(start)
		s.record(t)
		return
	}
	defer body.Close()
	metricTransfersActive.WithLabelValues("download").Inc()
	defer metricTransfersActive.WithLabelValues("download").Dec()
	w.WriteHeader(status)
	sent, err := io.CopyN(w, body, n)
	t.Bytes, t.Duration = sent, time.Since(start)
	switch {
	case err != nil:
		t.Outcome = "aborted"
		s.log.Warn("a download ended early", "file", f.ID, "device", g.DeviceID, "err", err)
	case partial:
		t.Outcome = "partial"
	default:
		t.Outcome = "complete"
	}
	s.record(t)
}

// parseRange reads one "bytes=" range of a file of size bytes. Without a
// usable Range header it gives the whole file (partial false).
func parseRange(h string, size int64) (from, to int64, partial, satisfiable bool) {
	whole := func() (int64, int64, bool, bool) { return 0, size - 1, false, true }
	spec, ok := strings.CutPrefix(strings.TrimSpace(h), "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return whole()
	}
	a, b, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return whole()
	}
	switch {
	case a == "" && b == "":
		return whole()
	case a == "":
		// The last b bytes.
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil || n < 0 {
			return whole()
		}
		if n == 0 || size == 0 {
			return 0, 0, true, false
		}
		return max(size-n, 0), size - 1, true, true
	}
	first, err := strconv.ParseInt(a, 10, 64)
	if err != nil || first < 0 {
		return whole()
	}
	last := size - 1
	if b != "" {
		l, err := strconv.ParseInt(b, 10, 64)
		if err != nil || l < first {
			return whole()
		}
		last = min(l, size-1)
	}
	if first >= size {
		return 0, 0, true, false
	}
	return first, last, true, true
}

// receive takes an upload from a device (a configuration backup, a log)
// into the repository, tied to the device.
func (s *Server) receive(w http.ResponseWriter, r *http.Request) {
	g, ok := s.grant(w, r, KindUpload)
	if !ok {
		return
	}
	start := time.Now()
	metricTransfersActive.WithLabelValues("upload").Inc()
	defer metricTransfersActive.WithLabelValues("upload").Dec()
	body := &countingBody{r: r.Body}
	name := fmt.Sprintf("%s-%s-%s", g.FileType, sanitize(g.DeviceID), start.UTC().Format("20060102T150405Z"))
	f, err := s.o.Repository.Put(r.Context(), Upload{Name: name, Type: g.FileType, DeviceID: g.DeviceID,
		UploadedBy: "device:" + g.DeviceID, ExpectedSize: -1}, body)
	t := store.FileTransfer{FileID: f.ID, DeviceID: g.DeviceID, Direction: "upload", Remote: r.RemoteAddr,
		Bytes: body.n, Duration: time.Since(start), Outcome: "complete"}
	if err != nil {
		code := http.StatusInternalServerError
		t.Outcome = "failed"
		if devicemodel.ErrorCode(err) == devicemodel.CodeResourcesExceeded {
			code, t.Outcome = http.StatusRequestEntityTooLarge, "too_large"
		}
		s.log.Warn("a device upload failed", "device", g.DeviceID, "err", err)
		http.Error(w, http.StatusText(code), code)
		s.record(t)
		return
	}
	s.record(t)
	w.Header().Set("Location", "/api/v1/files/"+f.ID)
	w.WriteHeader(http.StatusCreated)
}

type countingBody struct {
	r io.Reader
	n int64
}

func (c *countingBody) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// sanitize keeps what a file name allows of a device ID.
func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			b[i] = '_'
		}
	}
	if len(b) > 180 {
		b = b[:180]
	}
	return string(b)
}
