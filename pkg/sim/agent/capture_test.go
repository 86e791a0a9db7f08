package agent_test

import (
	"bytes"
	"context"
	"net"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/sim/agent"
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
	// The STOMP command (not CONNECT), and endpoint-id with ':' as \c (usp.md §8.3).
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
