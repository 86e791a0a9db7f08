package mqtt

import (
	"context"
	"testing"
	"time"

	"github.com/duet-dm/duet/adapters/usp"
	"github.com/duet-dm/duet/adapters/usp/internal/usptest"
	"github.com/duet-dm/duet/pkg/sim/agent"
)

// TestSimAgent runs pkg/sim/agent (obuspa-like) against the adapter over
// Mosquitto with MQTT 5 and with MQTT 3.1.1.
func TestSimAgent(t *testing.T) {
	needMosquitto(t)
	for _, version := range []string{"5.0", "3.1.1"} {
		t.Run(version, func(t *testing.T) {
			ep, b := usptest.Endpoint(t, func(o *usp.Options) { o.RequestTimeout = 5 * time.Second })
			tr := startTransport(t, ep, Options{BrokerURL: "mqtt://" + mosquittoAddr, Topic: uniq("usp/controller")})
			a := usptest.SimAgent(t, ep.ID(), "MQTT")
			w := usptest.Watch(t, b, a.EndpointID())
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := agent.DialMQTT(ctx, a, agent.MQTTConfig{Broker: mosquittoAddr, ProtocolVersion: version, ControllerTopic: tr.Topic(), AgentTopic: uniq("usp/sim")})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.Close() })
			usptest.SimScenario(t, b, a, w)
		})
	}
}
