package agent_test

import (
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/sim/agent"
	"github.com/duet-dm/duet/pkg/usp"
)

// TestFactoryBootSubscription: as real agents do, the factory model has a
// persistent Boot! subscription for the provisioned Controller, and a
// reboot sends one Boot! per matching subscription (the factory one and a
// Controller's), each with the Reboot() CommandKey.
func TestFactoryBootSubscription(t *testing.T) {
	a, err := agent.New(agent.Config{SerialNumber: "SNFB", ControllerID: ctrlID, RebootDowntime: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	c := &ctl{t: t, a: a}
	c.subscribe("duet-boot", "Event", "Device.Boot!", true, false)
	c.do(usp.NewOperate(c.id(), "Device.Reboot()", "rb-7", true, nil))
	o := c.next()
	if !o.Restart || o.Downtime != time.Minute || o.Gone {
		t.Fatalf("restart item %+v", o)
	}
	subs := map[string]bool{}
	for range 2 {
		_, n := c.nextNotify()
		if n.GetEvent().GetEventName() != "Boot!" || n.GetEvent().GetParams()["CommandKey"] != "rb-7" {
			t.Fatalf("boot %v", n)
		}
		subs[n.GetSubscriptionId()] = true
	}
	if !subs["factory-boot"] || !subs["duet-boot"] {
		t.Fatalf("Boot! went to %v, want one per subscription", subs)
	}
}

// TestScheduleTimerIsAsync: ScheduleTimer() answers with the Request
// object and completes later with OperationComplete carrying the key.
func TestScheduleTimerIsAsync(t *testing.T) {
	c := newAgent(t, "SNST")
	c.subscribe("oc", "OperationComplete", "Device.LocalAgent.", false, false)
	r := c.do(usp.NewOperate(c.id(), "Device.LocalAgent.ScheduleTimer()", "timer-1", true, map[string]string{"DelaySeconds": "0"}))
	res := r.Msg.GetBody().GetResponse().GetOperateResp().GetOperationResults()[0]
	if res.GetReqObjPath() == "" {
		t.Fatalf("ScheduleTimer() is not async: %v", res)
	}
	_, n := c.nextNotify()
	oc := n.GetOperComplete()
	if oc.GetCommandName() != "ScheduleTimer()" || oc.GetCommandKey() != "timer-1" || oc.GetReqOutputArgs() == nil {
		t.Fatalf("completion %v", n)
	}
	r = c.do(usp.NewOperate(c.id(), "Device.LocalAgent.ScheduleTimer()", "", true, map[string]string{"DelaySeconds": "x"}))
	if f := r.Msg.GetBody().GetResponse().GetOperateResp().GetOperationResults()[0].GetCmdFailure(); f.GetErrCode() != usp.ErrCodeInvalidCommandArguments {
		t.Fatalf("bad DelaySeconds: %v", r.Msg)
	}
}
