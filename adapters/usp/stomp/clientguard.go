package stomp

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"

	"github.com/go-stomp/stomp/v3/frame"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/duet-dm/duet/adapters/usp"
)

var metricBrokerFramesRefused = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "duet_usp_stomp_broker_frames_refused_total",
	Help: "Frames from the external STOMP broker that closed Duet's connection before go-stomp read them, by reason (too_large, malformed).",
}, []string{"reason"})

// guardedConn is the connection Duet's STOMP client (go-stomp) runs on.
// go-stomp's frame reader allocates whatever a content-length header says,
// and reads a body without one until a NUL however long it is, so a
// hostile or broken broker (or whoever sits between) could grow Duet's
// memory without limit. Frames from the broker are read here first, by
// the embedded broker's bounded reader (readFrame), and handed on to
// go-stomp as they came; a frame beyond the bounds closes the connection
// (the transport reconnects) with a log line and a metric.
type guardedConn struct {
	nc net.Conn
	pr *io.PipeReader
}

// guard starts relaying nc's frames of at most maxBody body bytes.
func guard(nc net.Conn, maxBody int, log *slog.Logger) *guardedConn {
	pr, pw := io.Pipe()
	g := &guardedConn{nc: nc, pr: pr}
	go g.relay(pw, maxBody, log)
	return g
}

func (g *guardedConn) relay(pw *io.PipeWriter, maxBody int, log *slog.Logger) {
	br := newFrameReader(g.nc)
	w := frame.NewWriter(pw)
	for {
		f, err := readServerFrame(br, maxBody)
		if err != nil {
			if reason := refusal(err); reason != "" {
				metricBrokerFramesRefused.WithLabelValues(reason).Inc()
				log.Warn("STOMP broker sent a frame beyond the bounds; connection closed", "reason", reason, "max_body", maxBody, "err", err)
				_ = g.nc.Close()
			}
			_ = pw.CloseWithError(err)
			return
		}
		// nil is a heart-beat: go-stomp sees it too.
		if err := w.Write(f); err != nil {
			_ = g.nc.Close()
			return
		}
	}
}

// refusal names why err closed the connection ("" for a connection that
// merely ended).
func refusal(err error) string {
	switch {
	case errors.Is(err, errFrameTooLarge):
		return usp.RefuseTooLarge
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		return ""
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return "" // a read timeout or reset: the transport's own business
	}
	return "malformed"
}

func (g *guardedConn) Read(p []byte) (int, error)  { return g.pr.Read(p) }
func (g *guardedConn) Write(p []byte) (int, error) { return g.nc.Write(p) }

// Close closes the broker connection; the relay ends with it.
func (g *guardedConn) Close() error {
	err := g.nc.Close()
	_ = g.pr.Close()
	if err != nil {
		return fmt.Errorf("usp/stomp: close: %w", err)
	}
	return nil
}
