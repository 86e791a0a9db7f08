package websocket

import (
	"context"
	"testing"
	"time"

	"github.com/duet-dm/duet/adapters/usp"
	"github.com/duet-dm/duet/adapters/usp/internal/usptest"
	"github.com/duet-dm/duet/pkg/sim/agent"
)

// TestSimAgent runs pkg/sim/agent against the WebSocket server.
func TestSimAgent(t *testing.T) {
	ep, b := usptest.Endpoint(t, func(o *usp.Options) { o.RequestTimeout = 5 * time.Second })
	tr := startServer(t, ep, Options{})
	a := usptest.SimAgent(t, ep.ID(), "WebSocket")
	w := usptest.Watch(t, b, a.EndpointID())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := agent.DialWebSocket(ctx, a, agent.WebSocketConfig{URL: "ws://" + tr.Addr() + "/usp"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	usptest.SimScenario(t, b, a, w)
}
