package agent_test

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/sim/agent"
	"github.com/duet-dm/duet/pkg/usp"
)

// captureFirst accepts one connection on a random port and returns what
// the client writes first. The brokers in the other tests cannot show the
// CONNECT/STOMP frames they received, so these check the bytes directly.
func captureFirst(t *testing.T, dial func(addr string)) []byte {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		var buf bytes.Buffer
		b := make([]byte, 4096)
		for buf.Len() < 40 || !bytes.Contains(buf.Bytes(), []byte("00256D")) {
			n, err := c.Read(b)
			buf.Write(b[:n])
			if err != nil {
				break
			}
		}
		got <- buf.Bytes()
	}()
	dial(ln.Addr().String())
	return <-got
}

func TestSTOMPFrameOnTheWire(t *testing.T) {
	a := newWireAgent(t, "CAP1", "STOMP")
	defer a.Close()
	b := captureFirst(t, func(addr string) {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		_, _ = agent.DialSTOMP(ctx, a, agent.STOMPConfig{Server: addr, Destination: "/queue/a", ControllerDestination: "/queue/c"})
	})
	// The STOMP command (not CONNECT), and endpoint-id with ':' as \c (TR-369 "STOMP Binding").
	if !bytes.HasPrefix(b, []byte("STOMP\n")) || !bytes.Contains(b, []byte("\nendpoint-id:os\\c\\c00256D-CAP1\n")) ||
		!bytes.Contains(b, []byte("accept-version:1.2")) {
		t.Fatalf("first frame:\n%q", b)
	}
}

func TestMQTT5ConnectOnTheWire(t *testing.T) {
	a := newWireAgent(t, "CAP2", "MQTT")
	defer a.Close()
	b := captureFirst(t, func(addr string) {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		_, _ = agent.DialMQTT(ctx, a, agent.MQTTConfig{Broker: addr, ControllerTopic: "c", AgentTopic: "a"})
	})
	// CONNECT (0x10), protocol level 5, User Property (0x26)
	// "usp-endpoint-id" = our ID, Request Response Information (0x19) = 1.
	prop := append([]byte{0x26, 0x00, 0x0f}, "usp-endpoint-id"...)
	prop = append(prop, 0x00, byte(len("os::00256D-CAP2")))
	prop = append(prop, "os::00256D-CAP2"...)
	if len(b) < 10 || b[0] != 0x10 || !bytes.Contains(b, []byte("MQTT\x05")) || !bytes.Contains(b, prop) || !bytes.Contains(b, []byte{0x19, 0x01}) {
		t.Fatalf("CONNECT:\n%x", b)
	}
}

// readSTOMPFrame reads one frame, honouring content-length (a USP body may
// hold NUL bytes).
func readSTOMPFrame(r *bufio.Reader) (string, map[string]string, []byte, error) {
	hdr := map[string]string{}
	cmd := ""
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return "", nil, nil, err
		}
		line = strings.TrimRight(line, "\r\n")
		if cmd == "" {
			if line != "" {
				cmd = line
			}
			continue
		}
		if line == "" {
			break
		}
		k, v, _ := strings.Cut(line, ":")
		if _, seen := hdr[k]; !seen {
			hdr[k] = v
		}
	}
	var body []byte
	if n, err := strconv.Atoi(hdr["content-length"]); err == nil {
		body = make([]byte, n+1)
		if _, err := io.ReadFull(r, body); err != nil {
			return "", nil, nil, err
		}
		body = body[:n]
	} else if body, err = r.ReadBytes(0); err == nil {
		body = body[:len(body)-1]
	}
	return cmd, hdr, body, nil
}

// Neither RabbitMQ nor go-stomp's server assigns destinations, so a
// scripted server on a local socket sends CONNECTED with subscribe-dest;
// the agent must subscribe there and announce it (TR-369 "STOMP Binding").
func TestSTOMPSubscribeDestFromServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type seen struct {
		subDest, connectDest, replyTo string
		err                           error
	}
	got := make(chan seen, 1)
	go func() {
		var s seen
		defer func() { got <- s }()
		c, err := ln.Accept()
		if err != nil {
			s.err = err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		r := bufio.NewReader(c)
		if _, _, _, s.err = readSTOMPFrame(r); s.err != nil {
			return
		}
		// "\c" in the value: the client must unescape it.
		if _, s.err = c.Write([]byte("CONNECTED\nversion:1.2\nsubscribe-dest:/queue/assigned\\c7\n\n\x00")); s.err != nil {
			return
		}
		var hdr map[string]string
		var body []byte
		if _, hdr, _, s.err = readSTOMPFrame(r); s.err != nil {
			return
		}
		s.subDest = hdr["destination"]
		if _, hdr, body, s.err = readSTOMPFrame(r); s.err != nil {
			return
		}
		s.replyTo = hdr["reply-to-dest"]
		rec, err := usp.ParseRecord(body, ctrlID)
		if err != nil {
			s.err = err
			return
		}
		s.connectDest = rec.SubscribedDestination
	}()
	a := newWireAgent(t, "CAP3", "STOMP")
	defer a.Close()
	c, err := agent.DialSTOMP(context.Background(), a, agent.STOMPConfig{Server: ln.Addr().String(), ControllerDestination: "/queue/c"})
	s := <-got
	if err != nil || s.err != nil {
		t.Fatalf("dial %v, server %v", err, s.err)
	}
	c.Close()
	// go-stomp escapes ':' again on the way out.
	if s.subDest != `/queue/assigned\c7` || s.replyTo != `/queue/assigned\c7` || s.connectDest != "/queue/assigned:7" {
		t.Fatalf("%+v", s)
	}
}
