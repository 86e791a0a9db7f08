package websocket

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

func BenchmarkGetRoundTrip(b *testing.B) {
	ep, bs := usptest.Endpoint(b, func(o *usp.Options) { o.OnboardValueChange = []string{}; o.Logger = usptest.Discard })
	tr := startServer(b, ep, Options{Logger: usptest.Discard})
	var ids []string
	for i := range benchAgents {
		a := startAgent(b, "ws://"+tr.Addr()+"/usp", ep.ID(), fmt.Sprintf("os::00D09E-B%d-%s", i, bus.NewID()[:6]), nil)
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
