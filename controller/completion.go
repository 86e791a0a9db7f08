package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// A task ends on the device's real outcome, not on its first reply (issue
// 11 §1). The first reply of some commands only says "accepted":
//
//   - a transfer answered with Status 1 (TR-069 A.3.2.8 Download, A.3.2.9
//     Upload) ends on the TransferComplete (or AutonomousTransferComplete)
//     carrying its CommandKey (TR-069 A.3.3.2, A.3.3.3);
//   - a USP Operate answered with req_obj_path runs asynchronously and ends
//     on the OperationComplete notification carrying its command_key
//     (TR-369 "Asynchronous Operations", OperateResp / Notify
//     OperationComplete); a CWMP diagnostics run ends on "8 DIAGNOSTICS
//     COMPLETE" (TR-069 A.3.3.1, event codes);
//   - a reboot or factory reset ends when the device is back: USP Boot!
//     whose CommandKey is the Reboot()/FactoryReset() command_key (TR-181
//     Device.Boot!), CWMP "1 BOOT" with "M Reboot" carrying the CommandKey
//     (TR-069 A.3.1.1 Inform EventCodes), or "0 BOOTSTRAP" after a
//     FactoryReset (which has no CommandKey).
//
// Such a task stays dispatched with a sub-state (awaiting_completion,
// awaiting_boot) until the completion comes in a device event, or fails
// with timeout past its deadline.

var (
	metricTasksAwaiting = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_tasks_awaiting_total",
		Help: "Tasks the device accepted and finishes later, by sub-state (awaiting_completion, awaiting_boot).",
	}, []string{"sub_state"})
	metricTasksCompleted = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_tasks_completions_total",
		Help: "Device completions (transfer, operation, boot, diagnostics) by outcome: matched a waiting task, or unmatched.",
	}, []string{"kind", "outcome"})
	metricTasksTimedOut = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_tasks_await_timeouts_total",
		Help: "Tasks failed because the device's completion never came, by sub-state.",
	}, []string{"sub_state"})
)

// Defaults of the completion deadlines.
const (
	DefaultRebootTimeout    = 10 * time.Minute
	DefaultTransferTimeout  = time.Hour
	DefaultOperationTimeout = time.Hour
)

// isRebootCommand reports whether an Operate command restarts the device.
func isRebootCommand(c string) (reboot, factory bool) {
	root := devicemodel.DataModelRoot(c)
	switch c {
	case root + "Reboot()":
		return true, false
	case root + "FactoryReset()":
		return true, true
	}
	return false, false
}

// awaitPlan says what a successful first reply leaves open.
type awaitPlan struct {
	subState string
	key      string
	timeout  time.Duration
	// interim is the result shown while the task waits.
	interim *duetv1.CommandResult
}

// planAwait decides whether t, answered with res, waits for a completion.
func (q *TaskQueue) planAwait(t store.Task, res *duetv1.CommandResult) (awaitPlan, bool) {
	if res == nil {
		return awaitPlan{}, false
	}
	cmd := &duetv1.Command{}
	if proto.Unmarshal(t.Command, cmd) != nil {
		return awaitPlan{}, false
	}
	usp := t.Session == "usp"
	switch r := res.Result.(type) {
	case *duetv1.CommandResult_Reboot:
		// CWMP Reboot / FactoryReset RPC answered.
		return awaitPlan{subState: store.SubStateAwaitingBoot, key: r.Reboot.GetCommandKey(), timeout: q.o.RebootTimeout, interim: res}, true
	case *duetv1.CommandResult_Transfer:
		if r.Transfer.GetStatus() != 1 {
			return awaitPlan{}, false // Status 0: done already (TR-069 A.3.2.8)
		}
		return awaitPlan{subState: store.SubStateAwaitingCompletion, key: r.Transfer.GetCommandKey(), timeout: q.o.TransferTimeout, interim: res}, true
	case *duetv1.CommandResult_Operate:
		op := cmd.GetOperate()
		key := op.GetCommandKey()
		if key == "" {
			key = cmd.GetId() // what the USP adapter sends then
		}
		if reboot, factory := isRebootCommand(op.GetCommand()); reboot && usp {
			interim := &duetv1.CommandResult{CommandId: res.GetCommandId(), DeviceId: res.GetDeviceId(),
				Result: &duetv1.CommandResult_Reboot{Reboot: &duetv1.RebootResult{CommandKey: key, FactoryReset: factory}}}
			return awaitPlan{subState: store.SubStateAwaitingBoot, key: key, timeout: q.o.RebootTimeout, interim: interim}, true
		}
		if !r.Operate.GetAsync() {
			return awaitPlan{}, false
		}
		if !usp {
			// CWMP diagnostics: the key is the diagnostics object whose
			// results "8 DIAGNOSTICS COMPLETE" announces.
			return awaitPlan{subState: store.SubStateAwaitingCompletion, key: r.Operate.GetRequestPath(), timeout: q.o.OperationTimeout, interim: res}, true
		}
		return awaitPlan{subState: store.SubStateAwaitingCompletion, key: key, timeout: q.o.OperationTimeout, interim: res}, true
	}
	return awaitPlan{}, false
}

// await records that t waits for its completion.
func (q *TaskQueue) await(ctx context.Context, t store.Task, p awaitPlan) bool {
	b, err := proto.Marshal(p.interim)
	if err != nil {
		return false
	}
	aw, ok, err := q.o.Store.AwaitTask(ctx, t.ID, p.subState, p.key, time.Now().Add(p.timeout), b)
	if err != nil {
		q.log.Error("recording a task's wait for completion failed", "task", t.ID, "device", t.DeviceID, "err", err)
		return true // not finished either: the timeout sweep cannot see it, but a restart's orphan check can
	}
	if ok {
		metricTasksAwaiting.WithLabelValues(p.subState).Inc()
		q.log.Info("task accepted by the device; waiting for its completion", "task", t.ID, "device", t.DeviceID,
			"operation", t.Operation, "sub_state", p.subState, "key", p.key, "timeout", p.timeout)
		q.notify(t.ID)
		q.catchUp(ctx, aw)
	}
	return true
}

// catchUp looks for a completion that arrived before the task was marked
// awaiting (a quick async command: the registry saw its OperationComplete
// first and found no task to finish). Events are stored before the
// registry completes tasks, so between this and Complete none is missed.
func (q *TaskQueue) catchUp(ctx context.Context, t store.Task) {
	kinds := []string{"transfer_complete", "operation_complete", "diagnostics_complete"}
	if t.SubState == store.SubStateAwaitingBoot {
		kinds = []string{"boot", "bootstrap"}
	}
	for _, kind := range kinds {
		evs, _, err := q.o.Store.FindDeviceEvents(ctx, store.EventFilter{DeviceID: t.DeviceID, Kind: kind, Limit: 20})
		if err != nil {
			q.log.Warn("looking for an early completion failed", "task", t.ID, "device", t.DeviceID, "err", err)
			return
		}
		for _, e := range evs {
			if t.DispatchedAt != nil && e.Time.Before(t.DispatchedAt.Add(-time.Minute)) {
				continue // before the command went out (clocks may differ a little)
			}
			ev := &duetv1.Event{}
			if proto.Unmarshal(e.Payload, ev) != nil {
				continue
			}
			if ev.GetBootstrap() != nil && t.DispatchedAt != nil && e.Time.Before(*t.DispatchedAt) {
				continue // a keyless bootstrap counts only after the reset was sent
			}
			if ev.GetDiagnosticsComplete() != nil && t.DispatchedAt != nil && e.Time.Before(*t.DispatchedAt) {
				// Keyless too: a CPE runs the test after the session that
				// requested it, so an earlier "8 DIAGNOSTICS COMPLETE" is
				// an earlier run's (its results are still in the object).
				continue
			}
			c := Completion{DeviceID: t.DeviceID, Time: e.Time, Event: ev}
			k, _, match := completionMatcher(c)
			if k != "" && match(t) {
				metricTasksCompleted.WithLabelValues(k, "matched").Inc()
				if q.endAwaited(ctx, t, c) {
					q.rescan(ctx, []string{t.DeviceID}, true)
				}
				return
			}
		}
	}
}

// Completion is a device event that may finish an awaiting task.
type Completion struct {
	DeviceID string
	Time     time.Time
	Event    *duetv1.Event
}

// completionOf returns the completion an event carries, if any.
func completionOf(deviceID string, at time.Time, ev *duetv1.Event) (Completion, bool) {
	switch {
	case ev.GetBoot() != nil, ev.GetBootstrap() != nil, ev.GetTransferComplete() != nil,
		ev.GetOperationComplete() != nil, ev.GetDiagnosticsComplete() != nil:
		return Completion{DeviceID: deviceID, Time: at, Event: ev}, true
	}
	return Completion{}, false
}

// Complete finishes the awaiting tasks the completions match. It returns
// the devices whose task ended, so their queued tasks can go out.
func (q *TaskQueue) Complete(ctx context.Context, cs []Completion) ([]string, error) {
	var ended []string
	seen := map[string]bool{}
	for _, c := range cs {
		kind, subState, match := completionMatcher(c)
		if kind == "" {
			continue
		}
		ts, err := q.o.Store.AwaitingTasks(ctx, c.DeviceID, subState)
		if err != nil {
			return ended, err
		}
		var hit *store.Task
		for i := range ts {
			if match(ts[i]) {
				hit = &ts[i]
				break
			}
		}
		if hit == nil {
			metricTasksCompleted.WithLabelValues(kind, "unmatched").Inc()
			continue
		}
		metricTasksCompleted.WithLabelValues(kind, "matched").Inc()
		if q.endAwaited(ctx, *hit, c) && !seen[c.DeviceID] {
			seen[c.DeviceID] = true
			ended = append(ended, c.DeviceID)
		}
	}
	return ended, nil
}

// completionMatcher names a completion's kind and the sub-state and test
// of the tasks it can finish.
func completionMatcher(c Completion) (kind, subState string, match func(store.Task) bool) {
	ev := c.Event
	switch {
	case ev.GetBoot() != nil:
		key := ev.GetBoot().GetCommandKey()
		if key == "" {
			// A boot without the key is not the one we asked for (a
			// power cut, a local reboot).
			return "boot", store.SubStateAwaitingBoot, func(store.Task) bool { return false }
		}
		return "boot", store.SubStateAwaitingBoot, func(t store.Task) bool { return t.AwaitKey == key }
	case ev.GetBootstrap() != nil:
		// A CWMP FactoryReset has no CommandKey: the device's next
		// "0 BOOTSTRAP" is its completion.
		return "bootstrap", store.SubStateAwaitingBoot, func(t store.Task) bool {
			return t.AwaitKey == "" && interimResult(t).GetReboot().GetFactoryReset()
		}
	case ev.GetTransferComplete() != nil:
		tc := ev.GetTransferComplete()
		if tc.GetAutonomous() {
			// AutonomousTransferComplete has no CommandKey (TR-069
			// A.3.3.3): it completes the one transfer to its URL.
			return "transfer", store.SubStateAwaitingCompletion, func(t store.Task) bool {
				return interimResult(t).GetTransfer() != nil && tc.GetUrl() != "" && taskURL(t) == tc.GetUrl()
			}
		}
		return "transfer", store.SubStateAwaitingCompletion, func(t store.Task) bool {
			return t.AwaitKey == tc.GetCommandKey() && tc.GetCommandKey() != ""
		}
	case ev.GetOperationComplete() != nil:
		oc := ev.GetOperationComplete()
		return "operation", store.SubStateAwaitingCompletion, func(t store.Task) bool {
			return t.AwaitKey == oc.GetCommandKey() && oc.GetCommandKey() != "" && interimResult(t).GetOperate() != nil
		}
	case ev.GetDiagnosticsComplete() != nil:
		ps := ev.GetDiagnosticsComplete().GetParams()
		return "diagnostics", store.SubStateAwaitingCompletion, func(t store.Task) bool {
			if interimResult(t).GetOperate() == nil || !strings.HasSuffix(t.AwaitKey, ".") {
				return false
			}
			found := false
			for _, p := range ps {
				if p.GetPath() == t.AwaitKey+"DiagnosticsState" && strings.TrimSpace(p.GetValue()) == "Requested" {
					// The adapter reads every diagnostics object: this
					// one is still running; another one completed.
					return false
				}
				found = found || strings.HasPrefix(p.GetPath(), t.AwaitKey)
			}
			return found
		}
	}
	return "", "", nil
}

func interimResult(t store.Task) *duetv1.CommandResult {
	r := &duetv1.CommandResult{}
	if len(t.Result) > 0 {
		_ = proto.Unmarshal(t.Result, r)
	}
	return r
}

// taskURL is the url of a download or upload task's request.
func taskURL(t store.Task) string {
	var r struct {
		URL string `json:"url"`
	}
	_ = json.Unmarshal(t.Request, &r)
	return r.URL
}

// completedOutcome is how the completion c ends t.
func completedOutcome(t store.Task, c Completion) store.TaskOutcome {
	res := interimResult(t)
	res.Error = nil
	o := store.TaskOutcome{State: store.TaskSucceeded}
	fail := func(e *duetv1.Error, fallback devicemodel.Code) {
		if e == nil {
			return
		}
		o.State = store.TaskFailed
		code := devicemodel.Code(e.GetCode())
		if code == devicemodel.CodeUnspecified {
			code = fallback
		}
		o.ErrorCode = code.String()
		o.ErrorMessage = e.GetMessage()
		o.DeviceFault = int(e.GetDeviceFault())
		res.Error = e
	}
	ev := c.Event
	switch {
	case ev.GetBoot() != nil || ev.GetBootstrap() != nil:
		rb := res.GetReboot()
		if rb == nil {
			rb = &duetv1.RebootResult{CommandKey: t.AwaitKey}
		}
		rb.BootTime = timestamppb.New(c.Time)
		if b := ev.GetBoot(); b != nil {
			rb.Cause = b.GetCause()
			rb.FirmwareUpdated = b.GetFirmwareUpdated()
		}
		res.Result = &duetv1.CommandResult_Reboot{Reboot: rb}
	case ev.GetTransferComplete() != nil:
		tc := ev.GetTransferComplete()
		tr := res.GetTransfer()
		if tr == nil {
			// A USP Download() completed by TransferComplete!.
			tr = &duetv1.TransferResult{CommandKey: tc.GetCommandKey(), Status: 1, Upload: !tc.GetIsDownload()}
		}
		tr.StartTime, tr.CompleteTime = tc.GetStartTime(), tc.GetCompleteTime()
		tr.FaultCode, tr.FaultString = tc.GetError().GetDeviceFault(), tc.GetError().GetMessage()
		res.Result = &duetv1.CommandResult_Transfer{Transfer: tr}
		fail(tc.GetError(), devicemodel.CodeTransferFailed)
	case ev.GetOperationComplete() != nil:
		oc := ev.GetOperationComplete()
		op := res.GetOperate()
		op.OutputArgs = oc.GetOutputArgs()
		op.Async = true
		fail(oc.GetError(), devicemodel.CodeCommandFailed)
	case ev.GetDiagnosticsComplete() != nil:
		op := res.GetOperate()
		op.Async = true
		op.OutputArgs = map[string]string{}
		for _, p := range ev.GetDiagnosticsComplete().GetParams() {
			if strings.HasPrefix(p.GetPath(), t.AwaitKey) {
				op.OutputArgs[strings.TrimPrefix(p.GetPath(), t.AwaitKey)] = p.GetValue()
			}
		}
	}
	if b, err := proto.Marshal(res); err == nil {
		o.Result = b
	}
	return o
}

// finishAwaited records the end of an awaiting task and tells whoever
// waits; it reports whether this call ended it.
func (q *TaskQueue) finishAwaited(ctx context.Context, t store.Task, o store.TaskOutcome) bool {
	final, done, err := q.o.Store.FinishTask(ctx, t.ID, o)
	if err != nil {
		q.log.Error("recording a task's completion failed", "task", t.ID, "device", t.DeviceID, "err", err)
		return false
	}
	if !done {
		return false
	}
	metricTasksFinished.WithLabelValues(string(o.State)).Inc()
	q.log.Info("task completed by the device", "task", t.ID, "device", t.DeviceID, "operation", t.Operation,
		"state", o.State, "error", o.ErrorCode, "device_fault", o.DeviceFault)
	q.notify(t.ID)
	q.recordDiagnostic(ctx, final)
	if q.finished != nil {
		q.finished(ctx, final)
	}
	return true
}

// failOverdue fails the awaiting tasks whose completion did not come in
// time, with code timeout.
func (q *TaskQueue) failOverdue(ctx context.Context) {
	ts, err := q.o.Store.OverdueTasks(ctx)
	if err != nil {
		if ctx.Err() == nil {
			q.log.Warn("looking for overdue tasks failed", "err", err)
		}
		return
	}
	var ended []string
	for _, t := range ts {
		what := "its completion"
		if t.SubState == store.SubStateAwaitingBoot {
			what = "the device to come back"
		}
		waited := time.Duration(0)
		if t.DispatchedAt != nil {
			waited = time.Since(*t.DispatchedAt).Round(time.Second)
		}
		o := store.TaskOutcome{State: store.TaskFailed, Result: t.Result, ErrorCode: devicemodel.CodeTimeout.String(),
			ErrorMessage: fmt.Sprintf("waited %s for %s (key %q); it never came", waited, what, t.AwaitKey)}
		if q.finishAwaited(ctx, t, o) {
			metricTasksTimedOut.WithLabelValues(t.SubState).Inc()
			q.log.Warn("task timed out waiting for the device", "task", t.ID, "device", t.DeviceID, "sub_state", t.SubState)
			ended = append(ended, t.DeviceID)
		}
	}
	if len(ended) > 0 {
		q.rescan(ctx, ended, true)
	}
}
