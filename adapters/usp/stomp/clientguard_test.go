package stomp

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/duet-dm/duet/adapters/usp"
	"github.com/duet-dm/duet/adapters/usp/internal/usptest"
	"github.com/duet-dm/duet/pkg/bus/bustest"
)

// hostileBroker is a STOMP peer on loopback that plays a broker well
// through Duet's connect (CONNECTED, the RECEIPT of the subscription
// probe), then sends flood on the connection. closed counts connections
// Duet closed while it was flooding.
type hostileBroker struct {
	ln     net.Listener
	flood  func(net.Conn) error
	conns  atomic.Int32
	closed atomic.Int32
}

func startHostileBroker(t *testing.T, flood func(net.Conn) error) *hostileBroker {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &hostileBroker{ln: ln, flood: flood}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.conns.Add(1)
			go h.serve(c)
		}
	}()
	return h
}

func (h *hostileBroker) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReaderSize(c, maxHeaderLine)
	w := frame.NewWriter(c)
	for {
		f, err := readFrame(br, 1<<20)
		if err != nil {
			return
		}
		if f == nil {
			continue
		}
		switch f.Command {
		case frame.STOMP, frame.CONNECT:
			_ = w.Write(frame.New(frame.CONNECTED, frame.Version, "1.2", frame.HeartBeat, "0,0"))
		case frame.SEND:
			if r := f.Header.Get(frame.Receipt); r != "" {
				_ = w.Write(frame.New(frame.RECEIPT, frame.ReceiptId, r))
				// Connected and subscribed: now the attack.
				if err := h.flood(c); err != nil {
					h.closed.Add(1)
				}
				return
			}
		}
	}
}

// TestClientBoundsBrokerFrames: Duet's STOMP client to an external broker
// reads the broker's frames through the bounded reader: a MESSAGE whose
// content-length announces a gigabyte, or a body without content-length
// that never ends, closes the connection before the body is read (log,
// metric duet_usp_stomp_broker_frames_refused_total{reason="too_large"}),
// and the transport reconnects. Before, go-stomp's reader allocated the
// announced gigabyte and waited for it, and read an endless body into
// memory without limit.
func TestClientBoundsBrokerFrames(t *testing.T) {
	const maxBody = 64 << 10
	for name, flood := range map[string]func(net.Conn) error{
		"content-length": func(c net.Conn) error {
			_, err := fmt.Fprintf(c, "MESSAGE\ndestination:/queue/usp.controller\nsubscription:0\nmessage-id:1\ncontent-length:%d\n\n", 1<<30)
			if err != nil {
				return err
			}
			return sendJunk(c, 16<<20)
		},
		"no content-length": func(c net.Conn) error {
			if _, err := fmt.Fprint(c, "MESSAGE\ndestination:/queue/usp.controller\nsubscription:0\nmessage-id:1\n\n"); err != nil {
				return err
			}
			return sendJunk(c, 16<<20)
		},
	} {
		t.Run(name, func(t *testing.T) {
			h := startHostileBroker(t, flood)
			before := testutil.ToFloat64(metricBrokerFramesRefused.WithLabelValues(usp.RefuseTooLarge))
			ep, _ := usptest.Endpoint(t)
			startTransport(t, ep, Options{BrokerAddr: h.ln.Addr().String(), MaxFrameBody: maxBody, HeartBeat: -1})
			bustest.CheckFor(t, 2*time.Minute, 50*time.Millisecond, func() error {
				if h.closed.Load() == 0 {
					return errors.New("the flooding broker's connection is still open")
				}
				return nil
			})
			if got := testutil.ToFloat64(metricBrokerFramesRefused.WithLabelValues(usp.RefuseTooLarge)) - before; got < 1 {
				t.Fatalf("refusals counted: %v", got)
			}
			// The transport connects again.
			bustest.CheckFor(t, 2*time.Minute, 50*time.Millisecond, func() error {
				if h.conns.Load() < 2 {
					return errors.New("no reconnection yet")
				}
				return nil
			})
		})
	}
}

// sendJunk writes n bytes with no NUL in them, then waits for the peer to
// close the connection: an error means it did (a write or the read
// failed), nil that it kept the connection open.
func sendJunk(c net.Conn, n int) error {
	chunk := []byte(strings.Repeat("x", 32<<10))
	for sent := 0; sent < n; sent += len(chunk) {
		_ = c.SetWriteDeadline(time.Now().Add(2 * time.Minute))
		if _, err := c.Write(chunk); err != nil {
			return err
		}
	}
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Minute))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	return err
}
