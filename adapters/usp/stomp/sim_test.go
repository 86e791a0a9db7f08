package stomp

import (
	"context"
	"testing"
	"time"

	"github.com/duet-dm/duet/adapters/usp"
	"github.com/duet-dm/duet/adapters/usp/internal/usptest"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/sim/agent"
)

// TestSimAgent runs pkg/sim/agent against the adapter over RabbitMQ.
func TestSimAgent(t *testing.T) {
	needRabbitSTOMP(t)
	ep, b := usptest.Endpoint(t, func(o *usp.Options) { o.RequestTimeout = 5 * time.Second })
	tr := startTransport(t, ep, Options{BrokerAddr: rabbitSTOMP, Login: "guest", Passcode: "guest", Destination: "/topic/ctrl-" + bus.NewID()[:12]})
	a := usptest.SimAgent(t, ep.ID(), "STOMP")
	w := usptest.Watch(t, b, a.EndpointID())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := agent.DialSTOMP(ctx, a, agent.STOMPConfig{Server: rabbitSTOMP, Destination: "/topic/sim-" + bus.NewID()[:12], ControllerDestination: tr.Destination(), Login: "guest", Passcode: "guest"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	usptest.SimScenario(t, b, a, w)
}
