package controller

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func taskWith(t *testing.T, cmd *duetv1.Command, session string) store.Task {
	return store.Task{ID: cmd.GetId(), DeviceID: "dev", Command: mustMarshal(t, cmd), Session: session}
}

func newPlanQueue() *TaskQueue {
	return &TaskQueue{o: TaskQueueOptions{RebootTimeout: time.Minute, TransferTimeout: time.Hour, OperationTimeout: 2 * time.Hour}}
}

// TestPlanAwait: which first replies leave the task open, and for what.
func TestPlanAwait(t *testing.T) {
	q := newPlanQueue()
	reboot := taskWith(t, &duetv1.Command{Id: "t1", Op: &duetv1.Command_Operate{Operate: &duetv1.OperateRequest{Command: "Device.Reboot()", CommandKey: "k1"}}}, "usp")
	ping := taskWith(t, &duetv1.Command{Id: "t2", Op: &duetv1.Command_Operate{Operate: &duetv1.OperateRequest{Command: "Device.IP.Diagnostics.IPPing()", CommandKey: "k2"}}}, "usp")
	dl := taskWith(t, &duetv1.Command{Id: "t3", Op: &duetv1.Command_Operate{Operate: &duetv1.OperateRequest{Command: "Download()"}}}, "s1")
	for _, c := range []struct {
		name     string
		t        store.Task
		res      *duetv1.CommandResult
		subState string
		key      string
		timeout  time.Duration
	}{
		{"usp reboot", reboot, &duetv1.CommandResult{Result: &duetv1.CommandResult_Operate{Operate: &duetv1.OperateResult{ExecutedCommand: "Device.Reboot()"}}}, store.SubStateAwaitingBoot, "k1", time.Minute},
		{"usp async", ping, &duetv1.CommandResult{Result: &duetv1.CommandResult_Operate{Operate: &duetv1.OperateResult{Async: true, RequestPath: "Device.LocalAgent.Request.1."}}}, store.SubStateAwaitingCompletion, "k2", 2 * time.Hour},
		{"usp sync", ping, &duetv1.CommandResult{Result: &duetv1.CommandResult_Operate{Operate: &duetv1.OperateResult{}}}, "", "", 0},
		{"cwmp diagnostics", ping, &duetv1.CommandResult{Result: &duetv1.CommandResult_Operate{Operate: &duetv1.OperateResult{Async: true, RequestPath: "Device.IP.Diagnostics.IPPing."}}}, store.SubStateAwaitingCompletion, "k2", 2 * time.Hour},
		{"cwmp reboot", dl, &duetv1.CommandResult{Result: &duetv1.CommandResult_Reboot{Reboot: &duetv1.RebootResult{CommandKey: "rk"}}}, store.SubStateAwaitingBoot, "rk", time.Minute},
		{"status 1", dl, &duetv1.CommandResult{Result: &duetv1.CommandResult_Transfer{Transfer: &duetv1.TransferResult{CommandKey: "t3", Status: 1}}}, store.SubStateAwaitingCompletion, "t3", time.Hour},
		{"status 0", dl, &duetv1.CommandResult{Result: &duetv1.CommandResult_Transfer{Transfer: &duetv1.TransferResult{CommandKey: "t3"}}}, "", "", 0},
	} {
		task := c.t
		if c.name == "cwmp diagnostics" {
			task.Session = "s1"
			c.key = "Device.IP.Diagnostics.IPPing."
		}
		p, ok := q.planAwait(task, c.res)
		if ok != (c.subState != "") || p.subState != c.subState || p.key != c.key || p.timeout != c.timeout {
			t.Errorf("%s: plan %+v ok %v, want %s %q %s", c.name, p, ok, c.subState, c.key, c.timeout)
		}
	}
}

// TestCompletionMatchAndOutcome: a completion finishes the task whose key
// it carries, with the device's outcome.
func TestCompletionMatchAndOutcome(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Second)
	transferTask := store.Task{ID: "t", AwaitKey: "k", SubState: store.SubStateAwaitingCompletion,
		Result: mustMarshal(t, &duetv1.CommandResult{Result: &duetv1.CommandResult_Transfer{Transfer: &duetv1.TransferResult{CommandKey: "k", Status: 1}}})}
	tc := Completion{DeviceID: "dev", Time: now, Event: &duetv1.Event{Kind: &duetv1.Event_TransferComplete{TransferComplete: &duetv1.TransferComplete{
		CommandKey: "k", StartTime: timestamppb.New(now), CompleteTime: timestamppb.New(now),
		Error: &duetv1.Error{Code: duetv1.ErrorCode(devicemodel.CodeTransferFailed), Message: "Unexpected response 404", DeviceFault: 9016}}}}}
	kind, sub, match := completionMatcher(tc)
	if kind != "transfer" || sub != store.SubStateAwaitingCompletion || !match(transferTask) {
		t.Fatalf("transfer matcher: %s %s", kind, sub)
	}
	if other := transferTask; match(func() store.Task { other.AwaitKey = "x"; return other }()) {
		t.Fatal("matched another key")
	}
	o := completedOutcome(transferTask, tc)
	res := &duetv1.CommandResult{}
	_ = proto.Unmarshal(o.Result, res)
	if o.State != store.TaskFailed || o.DeviceFault != 9016 || o.ErrorCode != "transfer_failed" ||
		res.GetTransfer().GetFaultCode() != 9016 || res.GetTransfer().GetCompleteTime() == nil {
		t.Fatalf("transfer outcome %+v %v", o, res)
	}

	rebootTask := store.Task{ID: "r", AwaitKey: "rk", SubState: store.SubStateAwaitingBoot,
		Result: mustMarshal(t, &duetv1.CommandResult{Result: &duetv1.CommandResult_Reboot{Reboot: &duetv1.RebootResult{CommandKey: "rk"}}})}
	boot := Completion{DeviceID: "dev", Time: now, Event: &duetv1.Event{Kind: &duetv1.Event_Boot{Boot: &duetv1.Boot{CommandKey: "rk", Cause: "RemoteReboot"}}}}
	if _, _, m := completionMatcher(boot); !m(rebootTask) {
		t.Fatal("boot did not match its reboot")
	}
	local := Completion{DeviceID: "dev", Time: now, Event: &duetv1.Event{Kind: &duetv1.Event_Boot{Boot: &duetv1.Boot{}}}}
	if _, _, m := completionMatcher(local); m(store.Task{SubState: store.SubStateAwaitingBoot}) {
		t.Fatal("a boot without key matched")
	}
	o = completedOutcome(rebootTask, boot)
	_ = proto.Unmarshal(o.Result, res)
	if o.State != store.TaskSucceeded || res.GetReboot().GetCause() != "RemoteReboot" || !res.GetReboot().GetBootTime().AsTime().Equal(now) {
		t.Fatalf("reboot outcome %+v %v", o, res)
	}
	// A CWMP factory reset (no CommandKey) ends on 0 BOOTSTRAP.
	reset := store.Task{ID: "f", SubState: store.SubStateAwaitingBoot,
		Result: mustMarshal(t, &duetv1.CommandResult{Result: &duetv1.CommandResult_Reboot{Reboot: &duetv1.RebootResult{FactoryReset: true}}})}
	bs := Completion{DeviceID: "dev", Time: now, Event: &duetv1.Event{Kind: &duetv1.Event_Bootstrap{Bootstrap: &duetv1.Bootstrap{}}}}
	if _, _, m := completionMatcher(bs); !m(reset) || m(rebootTask) {
		t.Fatal("bootstrap matching")
	}

	opTask := store.Task{ID: "o", AwaitKey: "ok", SubState: store.SubStateAwaitingCompletion,
		Result: mustMarshal(t, &duetv1.CommandResult{Result: &duetv1.CommandResult_Operate{Operate: &duetv1.OperateResult{ExecutedCommand: "Device.IP.Diagnostics.IPPing()", Async: true}}})}
	oc := Completion{DeviceID: "dev", Time: now, Event: &duetv1.Event{Kind: &duetv1.Event_OperationComplete{OperationComplete: &duetv1.OperationComplete{
		CommandKey: "ok", OutputArgs: map[string]string{"SuccessCount": "3"}}}}}
	if _, _, m := completionMatcher(oc); !m(opTask) {
		t.Fatal("operation complete did not match")
	}
	o = completedOutcome(opTask, oc)
	_ = proto.Unmarshal(o.Result, res)
	if o.State != store.TaskSucceeded || res.GetOperate().GetOutputArgs()["SuccessCount"] != "3" {
		t.Fatalf("operate outcome %+v %v", o, res)
	}
	oc.Event.GetOperationComplete().Error = &duetv1.Error{Code: duetv1.ErrorCode(devicemodel.CodeCommandFailed), Message: "boom", DeviceFault: 7022}
	if o = completedOutcome(opTask, oc); o.State != store.TaskFailed || o.DeviceFault != 7022 || o.ErrorCode != "command_failed" {
		t.Fatalf("failed operate outcome %+v", o)
	}

	// CWMP diagnostics: the results under the object become output args.
	diag := store.Task{ID: "d", AwaitKey: "Device.IP.Diagnostics.IPPing.", SubState: store.SubStateAwaitingCompletion,
		Result: mustMarshal(t, &duetv1.CommandResult{Result: &duetv1.CommandResult_Operate{Operate: &duetv1.OperateResult{Async: true}}})}
	dc := Completion{DeviceID: "dev", Time: now, Event: &duetv1.Event{Kind: &duetv1.Event_DiagnosticsComplete{DiagnosticsComplete: &duetv1.DiagnosticsComplete{
		Params: []*duetv1.Parameter{{Path: "Device.IP.Diagnostics.IPPing.SuccessCount", Value: "1"}, {Path: "Device.IP.Diagnostics.TraceRoute.X", Value: "y"}}}}}}
	if _, _, m := completionMatcher(dc); !m(diag) {
		t.Fatal("diagnostics did not match")
	}
	o = completedOutcome(diag, dc)
	_ = proto.Unmarshal(o.Result, res)
	if args := res.GetOperate().GetOutputArgs(); len(args) != 1 || args["SuccessCount"] != "1" {
		t.Fatalf("diagnostics outputs %v", args)
	}
}

// TestAllPathsFailed: the one rule for operations on several paths.
func TestAllPathsFailed(t *testing.T) {
	get := func(paths ...string) store.Task {
		return taskWith(t, &duetv1.Command{Id: "g", Op: &duetv1.Command_Get{Get: &duetv1.GetRequest{Paths: paths}}}, "usp")
	}
	perr := func(p string) *duetv1.ParamError {
		return &duetv1.ParamError{Path: p, Code: duetv1.ErrorCode(devicemodel.CodeInvalidPath), DeviceFault: 7026, Message: "invalid path"}
	}
	getRes := func(errs ...*duetv1.ParamError) *duetv1.CommandResult {
		return &duetv1.CommandResult{Result: &duetv1.CommandResult_Get{Get: &duetv1.GetResult{Errors: errs}}}
	}
	err := allPathsFailed(get("Device.X."), getRes(perr("Device.X.")))
	if devicemodel.ErrorCode(err) != devicemodel.CodeInvalidPath {
		t.Fatalf("only path failed: %v", err)
	}
	if err := allPathsFailed(get("Device.X.", "Device.Y."), getRes(perr("Device.X."))); err != nil {
		t.Fatalf("one of two failed: %v", err)
	}
	if err := allPathsFailed(get("Device.X.", "Device.Y."), getRes(perr("Device.X."), perr("Device.Y."))); err == nil {
		t.Fatal("both failed but succeeded")
	}
	// A USP Set reports a failed object by its path.
	set := taskWith(t, &duetv1.Command{Id: "s", Op: &duetv1.Command_Set{Set: &duetv1.SetRequest{AllowPartial: true,
		Params: []*duetv1.Parameter{{Path: "Device.A.B"}, {Path: "Device.A.C"}}}}}, "usp")
	if err := allPathsFailed(set, &duetv1.CommandResult{Result: &duetv1.CommandResult_Set{Set: &duetv1.SetResult{Errors: []*duetv1.ParamError{perr("Device.A.")}}}}); err == nil {
		t.Fatal("set whose only object failed succeeded")
	}
	del := taskWith(t, &duetv1.Command{Id: "d", Op: &duetv1.Command_Delete{Delete: &duetv1.DeleteRequest{ObjectPaths: []string{"Device.A.1.", "Device.A.2."}}}}, "s")
	if err := allPathsFailed(del, &duetv1.CommandResult{Result: &duetv1.CommandResult_Delete{Delete: &duetv1.DeleteResult{DeletedPaths: []string{"Device.A.1."}, Errors: []*duetv1.ParamError{perr("Device.A.2.")}}}}); err != nil {
		t.Fatalf("partial delete: %v", err)
	}
}
