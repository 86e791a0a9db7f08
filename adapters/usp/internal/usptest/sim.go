package usptest

import (
	"fmt"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/sim/agent"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// SimAgent builds a pkg/sim/agent agent provisioned for controllerID.
func SimAgent(t testing.TB, controllerID, proto string) *agent.Agent {
	t.Helper()
	a, err := agent.New(agent.Config{SerialNumber: "SIM" + bus.NewID()[:8], ControllerID: controllerID, MTPProtocol: proto,
		RetryMinWait: 20 * time.Millisecond, RetryMultiplier: 2000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	return a
}

// SimScenario drives a connected simulated agent through onboarding, a Get,
// a Set and a remote reboot completed by Boot! (docs/testing.md: Reboot()
// answers OperateResp, restarts, and the next Boot! carries the key).
func SimScenario(t *testing.T, b *bus.Bus, a *agent.Agent, w *Events) {
	t.Helper()
	eid := a.EndpointID()
	on := w.Wait("online", func(ev *duetv1.Event) bool { return ev.GetDevice().GetSerialNumber() != "" })
	if d := on.GetDevice(); d.GetManufacturer() != "Duet Simulator" || d.GetOui() != "00256D" {
		t.Fatalf("identity %v", d)
	}
	bustest.CheckFor(t, 15*time.Second, 10*time.Millisecond, func() error {
		got := MustGet(t, b, eid, "Device.LocalAgent.Subscription.")
		n := 0
		for p, v := range got {
			if len(p) > 3 && p[len(p)-3:] == ".ID" && len(v) > 5 && v[:5] == "duet-" {
				n++
			}
		}
		if n == 5 {
			return nil
		}
		return fmt.Errorf("%d duet subscriptions on the agent", n)
	})
	// Onboarding ends by marking Duet's Controller row complete, so the agent
	// stops repeating OnBoardRequest (TR-369 "Notifications", first contact).
	bustest.CheckFor(t, 15*time.Second, 10*time.Millisecond, func() error {
		got := MustGet(t, b, eid, "Device.LocalAgent.Controller.1.OnBoardingComplete")
		if v := got["Device.LocalAgent.Controller.1.OnBoardingComplete"]; v != "true" {
			return fmt.Errorf("OnBoardingComplete = %q", v)
		}
		return nil
	})
	res, err := Do(b, eid, &duetv1.Command{Op: &duetv1.Command_Set{Set: &duetv1.SetRequest{Params: []*duetv1.Parameter{{Path: "Device.DeviceInfo.ProvisioningCode", Value: "duet"}}}}})
	if err != nil || res.GetError() != nil {
		t.Fatalf("set: %v %v", res, err)
	}
	if got := MustGet(t, b, eid, "Device.DeviceInfo.ProvisioningCode"); got["Device.DeviceInfo.ProvisioningCode"] != "duet" {
		t.Fatalf("get after set: %v", got)
	}
	res, err = Do(b, eid, &duetv1.Command{Op: &duetv1.Command_Operate{Operate: &duetv1.OperateRequest{Command: "Device.Reboot()", CommandKey: "sim-reboot"}}})
	if err != nil || res.GetError() != nil {
		t.Fatalf("reboot: %v %v", res, err)
	}
	if oc := w.Wait("operation_complete", func(ev *duetv1.Event) bool { return ev.GetOperationComplete().GetCommandKey() == "sim-reboot" }).GetOperationComplete(); oc.GetCommand() != "Device.Reboot()" {
		t.Fatalf("reboot completion %v", oc)
	}
}
