package mqtt

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/duet-dm/duet/adapters/usp"
	"github.com/duet-dm/duet/adapters/usp/internal/usptest"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/sim/agent"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
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

// TestSimAgentOneEventPerHappening: a simulated agent that ships a factory
// Boot! subscription, like real agents, reboots. It sends one Boot! per
// matching subscription (its own and Duet's) after a Connect record; Duet
// publishes one boot event, answers both Notifies, and checks the agent's
// subscriptions once (they survived; nothing is re-created). One connection
// is one online event. Issue 11 §4; before the fix: two boot events, two
// or three online events, onboarding twice.
func TestSimAgentOneEventPerHappening(t *testing.T) {
	needMosquitto(t)
	ep, b := usptest.Endpoint(t, func(o *usp.Options) { o.RequestTimeout = 5 * time.Second })
	tr := startTransport(t, ep, Options{BrokerURL: "mqtt://" + mosquittoAddr, Topic: uniq("usp/controller")})
	a := usptest.SimAgent(t, ep.ID(), "MQTT")
	w := usptest.Watch(t, b, a.EndpointID())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := agent.DialMQTT(ctx, a, agent.MQTTConfig{Broker: mosquittoAddr, ControllerTopic: tr.Topic(), AgentTopic: uniq("usp/sim")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	w.Wait("online", func(ev *duetv1.Event) bool { return ev.GetDevice().GetSerialNumber() != "" })
	bustest.CheckFor(t, 15*time.Second, 10*time.Millisecond, func() error {
		got := usptest.MustGet(t, b, a.EndpointID(), "Device.LocalAgent.Controller.1.OnBoardingComplete")
		if v := got["Device.LocalAgent.Controller.1.OnBoardingComplete"]; v != "true" {
			return fmt.Errorf("OnBoardingComplete = %q", v)
		}
		return nil
	})
	onboarded := usptest.MetricValue(t, "duet_usp_onboardings_total", map[string]string{"outcome": "ok"})
	boots := usptest.MetricValue(t, "duet_usp_notifications_total", map[string]string{"kind": "boot"})
	dups := usptest.MetricValue(t, "duet_usp_notifications_total", map[string]string{"kind": "duplicate"})

	a.Reboot()
	w.Wait("boot", nil)
	// Both Boot!s answered (each asked for a NotifyResp, NotifRetry).
	bustest.CheckFor(t, 15*time.Second, 10*time.Millisecond, func() error {
		if c.Connects() < 2 || a.PendingNotifies() != 0 {
			return fmt.Errorf("connects %d, Notifies unanswered %d", c.Connects(), a.PendingNotifies())
		}
		return nil
	})
	// A round trip after both: anything they caused is published by now
	// (one agent's events are in order).
	usptest.MustGet(t, b, a.EndpointID(), "Device.DeviceInfo.SoftwareVersion")
	if n := w.Count("boot"); n != 1 {
		t.Errorf("%d boot events for one reboot, want 1", n)
	}
	if n := w.Count("online"); n != 1 {
		t.Errorf("%d online events for one connection, want 1", n)
	}
	if d := usptest.MetricValue(t, "duet_usp_notifications_total", map[string]string{"kind": "boot"}) - boots; d != 1 {
		t.Errorf("duet_usp_notifications_total{kind=boot} grew by %v, want 1", d)
	}
	// The second Boot!, and any retransmission sent before its answer.
	if d := usptest.MetricValue(t, "duet_usp_notifications_total", map[string]string{"kind": "duplicate"}) - dups; d < 1 {
		t.Errorf("duet_usp_notifications_total{kind=duplicate} grew by %v, want at least 1", d)
	}
	// One check for the one happening: the Connect record's (a new
	// connection may follow a factory reset); the Boot!s coalesce with it.
	if d := usptest.MetricValue(t, "duet_usp_onboardings_total", map[string]string{"outcome": "ok"}) - onboarded; d > 1 {
		t.Errorf("onboarded %v more times after the reboot, want at most 1", d)
	}
}
