package stomp

import (
	"fmt"
	"testing"
	"time"

	"github.com/duet-dm/duet/adapters/usp"
	"github.com/duet-dm/duet/adapters/usp/internal/usptest"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	pkgusp "github.com/duet-dm/duet/pkg/usp"
)

const benchAgents = 10

func benchGet(b *testing.B, addr, prefix string) {
	ep, bs := usptest.Endpoint(b, func(o *usp.Options) { o.OnboardValueChange = []string{}; o.Logger = usptest.Discard })
	tr := startTransport(b, ep, Options{BrokerAddr: addr, Login: "guest", Passcode: "guest", Destination: prefix + "ctrl-" + bus.NewID()[:12], Logger: usptest.Discard})
	var ids []string
	for i := range benchAgents {
		a := startAgent(b, addr, ep.ID(), tr.Destination(), fmt.Sprintf("os::00D09E-B%d-%s", i, bus.NewID()[:6]), prefix)
		rec, _ := pkgusp.MarshalSTOMPConnect(a.ID, ep.ID(), a.dest)
		if err := a.Send(rec); err != nil {
			b.Fatal(err)
		}
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

func BenchmarkGetRoundTripRabbitMQ(b *testing.B) {
	needRabbitSTOMP(b)
	benchGet(b, rabbitSTOMP, "/topic/")
}

func BenchmarkGetRoundTripEmbedded(b *testing.B) {
	br, err := StartEmbeddedBroker("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = br.Close() })
	benchGet(b, br.Addr(), "/queue/")
}
