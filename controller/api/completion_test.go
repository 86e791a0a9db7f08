package api_test

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/controller/api"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

func uspEvent(id string, kind any) *duetv1.Event {
	ev := &duetv1.Event{Device: &duetv1.DeviceIdentity{Id: id, Protocol: duetv1.Protocol_PROTOCOL_USP},
		Reachability: &duetv1.Reachability{Transport: "mqtt"}}
	switch k := kind.(type) {
	case *duetv1.Boot:
		ev.Kind = &duetv1.Event_Boot{Boot: k}
	case *duetv1.OperationComplete:
		ev.Kind = &duetv1.Event_OperationComplete{OperationComplete: k}
	}
	return ev
}

// TestUSPRebootAwaitsBoot: the agent's OperateResp to Reboot() leaves the
// task dispatched (awaiting_boot) and the device rebooting; the Boot! with
// the task's key ends it, and the device's next task goes out only then.
func TestUSPRebootAwaitsBoot(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	const dev = "usp-reboot-1"
	e.seen(t, dev, duetv1.Protocol_PROTOCOL_USP, "online")
	a := &uspAdapter{}
	sub, err := e.bus.ServeCommands(bus.CommandSubject(devicemodel.ProtocolUSP, dev), "", func(ctx context.Context, cmd *duetv1.Command) *duetv1.CommandResult {
		a.mu.Lock()
		a.ops = append(a.ops, commandOp(cmd))
		a.mu.Unlock()
		if cmd.GetOperate() != nil {
			return &duetv1.CommandResult{Result: &duetv1.CommandResult_Operate{Operate: &duetv1.OperateResult{ExecutedCommand: "Device.Reboot()"}}}
		}
		return &duetv1.CommandResult{Result: &duetv1.CommandResult_Get{Get: &duetv1.GetResult{}}}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Stop)
	_, rb := e.createTask(t, dev, `{"operation":"reboot"}`)
	bustest.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		if tk := e.task(t, rb.ID); tk.SubState != "awaiting_boot" {
			return errString("reboot is " + tk.State + "/" + tk.SubState)
		}
		return nil
	})
	if _, d := getDevice(t, e, dev); d.State != "rebooting" || d.Online {
		t.Fatalf("device while rebooting: %+v", d)
	}
	_, get := e.createTask(t, dev, `{"operation":"get","paths":["Device.DeviceInfo."]}`)
	// A boot without the key (a power cut) does not end it.
	if err := e.bus.PublishEvent(context.Background(), uspEvent(dev, &duetv1.Boot{Cause: "LocalReboot"})); err != nil {
		t.Fatal(err)
	}
	if err := e.bus.PublishEvent(context.Background(), uspEvent(dev, &duetv1.Boot{CommandKey: rb.ID, Cause: "RemoteReboot"})); err != nil {
		t.Fatal(err)
	}
	done := e.waitState(t, rb.ID, "succeeded")
	var res struct {
		Reboot struct {
			CommandKey string `json:"command_key"`
			Cause      string `json:"cause"`
		} `json:"reboot"`
	}
	if json.Unmarshal(done.Result, &res) != nil || res.Reboot.CommandKey != rb.ID || res.Reboot.Cause != "RemoteReboot" {
		t.Fatalf("reboot result %s", done.Result)
	}
	e.waitState(t, get.ID, "succeeded")
	if _, d := getDevice(t, e, dev); d.State != "online" || !d.Online {
		t.Fatalf("device back: %+v", d)
	}
}

// TestEarlyOperationCompleteEndsTask: an OperationComplete the registry
// applied before the task was marked awaiting still ends it.
func TestEarlyOperationCompleteEndsTask(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	const dev = "usp-async-1"
	e.seen(t, dev, duetv1.Protocol_PROTOCOL_USP, "online")
	sub, err := e.bus.ServeCommands(bus.CommandSubject(devicemodel.ProtocolUSP, dev), "", func(ctx context.Context, cmd *duetv1.Command) *duetv1.CommandResult {
		before, _ := e.store.CountDeviceEvents(ctx, dev)
		oc := &duetv1.OperationComplete{Command: "Device.LocalAgent.ScheduleTimer()", CommandKey: cmd.GetOperate().GetCommandKey(),
			OutputArgs: map[string]string{"Fired": "yes"}}
		if err := e.bus.PublishEvent(ctx, uspEvent(dev, oc)); err != nil {
			t.Error(err)
		}
		waitEvents(t, e, dev, before+1)
		return &duetv1.CommandResult{Result: &duetv1.CommandResult_Operate{Operate: &duetv1.OperateResult{
			ExecutedCommand: "Device.LocalAgent.ScheduleTimer()", Async: true, RequestPath: "Device.LocalAgent.Request.1."}}}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Stop)
	_, op := e.createTask(t, dev, `{"operation":"operate","command":"Device.LocalAgent.ScheduleTimer()","input_args":{"DelaySeconds":"0"}}`)
	done := e.waitState(t, op.ID, "succeeded")
	var res struct {
		Operate struct {
			OutputArgs map[string]string `json:"output_args"`
		} `json:"operate"`
	}
	if json.Unmarshal(done.Result, &res) != nil || res.Operate.OutputArgs["Fired"] != "yes" {
		t.Fatalf("result %s", done.Result)
	}
}

type errString string

func (e errString) Error() string { return string(e) }

// TestAwaitDeadlineFailsOnTime: a task awaiting its completion fails with
// timeout when its deadline passes, not on the next sweep: with a sweep
// of an hour and a reboot timeout of 2 s, a reboot whose Boot! never
// comes fails within seconds. Before, only the sweep (every 5 s by
// default) looked for overdue tasks.
func TestAwaitDeadlineFailsOnTime(t *testing.T) {
	b, _ := bustest.Start(t)
	s, _ := storetest.Open(t)
	q, err := controller.NewTaskQueue(controller.TaskQueueOptions{Store: s, Bus: b,
		SweepInterval: time.Hour, CommandTimeout: 5 * time.Second, RebootTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(q.Stop)
	e := &env{bus: b, store: s, tasks: q}
	srv := httptest.NewServer(api.New(api.Options{Store: s, Tasks: q}))
	t.Cleanup(srv.Close)
	if _, e.token, err = s.CreateToken(context.Background(), "test admin", store.RoleAdmin); err != nil {
		t.Fatal(err)
	}
	e.api = srv
	e.startRegistry(t)
	const dev = "usp-deadline-1"
	e.seen(t, dev, duetv1.Protocol_PROTOCOL_USP, "online")
	sub, err := b.ServeCommands(bus.CommandSubject(devicemodel.ProtocolUSP, dev), "", func(ctx context.Context, cmd *duetv1.Command) *duetv1.CommandResult {
		return &duetv1.CommandResult{Result: &duetv1.CommandResult_Operate{Operate: &duetv1.OperateResult{ExecutedCommand: "Device.Reboot()"}}}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Stop)
	_, rb := e.createTask(t, dev, `{"operation":"reboot"}`)
	var tk api.TaskJSON
	bustest.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
		if tk = e.task(t, rb.ID); tk.State != "failed" {
			return errString("reboot is " + tk.State + "/" + tk.SubState)
		}
		return nil
	})
	if tk.Error == nil || tk.Error.Code != "timeout" {
		t.Fatalf("reboot that never came back: %+v %+v", tk, tk.Error)
	}
}
