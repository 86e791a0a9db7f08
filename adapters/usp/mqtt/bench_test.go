package mqtt

import (
	"fmt"
	"testing"
	"time"

	"github.com/duet-dm/duet/adapters/usp"
	"github.com/duet-dm/duet/adapters/usp/internal/usptest"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
)

const benchAgents = 10

func benchGet(b *testing.B, brokerAddr string, qos byte) {
	ep, bs := usptest.Endpoint(b, func(o *usp.Options) { o.OnboardValueChange = []string{}; o.Logger = usptest.Discard })
	tr := startTransport(b, ep, Options{BrokerURL: "mqtt://" + brokerAddr, Topic: uniq("usp/controller"), Logger: usptest.Discard, QoS: &qos})
	var ids []string
	for i := range benchAgents {
		a := startAgent(b, brokerAddr, ep.ID(), tr.Topic(), fmt.Sprintf("os::00D09E-B%d-%s", i, bus.NewID()[:6]))
		a.connectRecord(b)
		bustest.CheckFor(b, 15*time.Second, 5*time.Millisecond, func() error {
			if len(a.Subscriptions()) == 4 {
				return nil
			}
			return fmt.Errorf("onboarding of %s not done", a.ID)
		})
		ids = append(ids, a.ID)
	}
	usptest.BenchGet(b, bs, ids)
}

func BenchmarkGetRoundTripMosquitto(b *testing.B) {
	needMosquitto(b)
	benchGet(b, mosquittoAddr, 0)
}

// With QoS 1 the broker's PUBACK is in flight when the answer comes, and
// Mosquitto's default Nagle (set_tcp_nodelay false) holds the answer until
// our delayed ACK: ~44 ms per round trip. Kept to document why QoS 0 is
// the default.
func BenchmarkGetRoundTripMosquittoQoS1(b *testing.B) {
	needMosquitto(b)
	benchGet(b, mosquittoAddr, 1)
}

func BenchmarkGetRoundTripEmbedded(b *testing.B) {
	br, err := StartEmbeddedBroker("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = br.Close() })
	benchGet(b, br.Addr(), 0)
}
