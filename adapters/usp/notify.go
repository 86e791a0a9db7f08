package usp

import (
	"context"
	"maps"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	pkgusp "github.com/duet-dm/duet/pkg/usp"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
	"github.com/duet-dm/duet/proto/usp/uspmsg"
)

// notifyState de-duplicates Notify retransmissions (TR-369 "Message Transfer Protocols" R-MSG.4,
// TR-369 "Notify"): a duplicate that arrives before we answered is ignored; one that
// arrives after is answered again but not published again.
type notifyState struct {
	answered bool
	subID    string
	sendResp bool
}

type pendingReboot struct {
	command string
	key     string
	started time.Time
}

type asyncOp struct {
	command     string
	key         string
	requestPath string
	started     time.Time
}

// Bounds on per-agent tracking; the oldest entry is dropped past them.
const (
	maxRebootsPerAgent  = 8
	maxAsyncOpsPerAgent = 256
)

func (e *Endpoint) trackReboot(eid string, r pendingReboot) {
	e.mu.Lock()
	defer e.mu.Unlock()
	l, _ := e.reboots.get(eid)
	l = append(l, r)
	if len(l) > maxRebootsPerAgent {
		l = l[len(l)-maxRebootsPerAgent:]
	}
	e.reboots.put(eid, l)
}

func (e *Endpoint) takeReboot(eid, key string) (pendingReboot, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	l, _ := e.reboots.get(eid)
	for i, r := range l {
		if r.key == key {
			l = append(l[:i:i], l[i+1:]...)
			if len(l) == 0 {
				e.reboots.remove(eid)
			} else {
				e.reboots.put(eid, l)
			}
			return r, true
		}
	}
	return pendingReboot{}, false
}

func (e *Endpoint) trackAsync(eid string, op asyncOp) {
	e.mu.Lock()
	defer e.mu.Unlock()
	l, _ := e.asyncOps.get(eid)
	l = append(l, op)
	if len(l) > maxAsyncOpsPerAgent {
		l = l[len(l)-maxAsyncOpsPerAgent:]
	}
	e.asyncOps.put(eid, l)
}

func (e *Endpoint) takeAsync(eid, command, key string) (asyncOp, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	l, _ := e.asyncOps.get(eid)
	for i, op := range l {
		if op.key == key && (op.command == command || command == "") {
			l = append(l[:i:i], l[i+1:]...)
			if len(l) == 0 {
				e.asyncOps.remove(eid)
			} else {
				e.asyncOps.put(eid, l)
			}
			return op, true
		}
	}
	return asyncOp{}, false
}

// handleNotify runs in the receive path: it de-duplicates and queues the
// work; publishing and NotifyResp happen on the agent's event shard.
func (e *Endpoint) handleNotify(mtp MTP, from Address, eid, msgID string, n *uspmsg.Notify) {
	key := eid + "\x00" + msgID
	e.mu.Lock()
	st, dup := e.notifies.get(key)
	if !dup {
		st = &notifyState{subID: n.GetSubscriptionId(), sendResp: n.GetSendResp()}
		e.notifies.put(key, st)
	}
	answered := st.answered
	e.mu.Unlock()
	if dup {
		metricNotifications.WithLabelValues("duplicate").Inc()
		if answered && n.GetSendResp() {
			e.sendNotifyResp(mtp, from, eid, msgID, n.GetSubscriptionId())
		}
		return
	}
	if n.GetNotification() == nil {
		metricNotifications.WithLabelValues("invalid").Inc()
		e.mu.Lock()
		e.notifies.remove(key)
		e.mu.Unlock()
		// R-MTP.5 conditions hold; 7004 for a malformed oneof (TR-369 "Error Codes").
		e.replyError(mtp, from, eid, msgID, pkgusp.ErrCodeInvalidArguments, "notify without notification")
		return
	}
	isBoot := n.GetEvent().GetObjPath()+n.GetEvent().GetEventName() == "Device.Boot!"
	if e.seenBoot(eid, n) {
		// The same boot through another subscription (dedupe.go).
		e.answerDuplicate(mtp, from, eid, msgID, st, n)
		return
	}
	events, kind := e.notifyEvents(eid, n)
	metricNotifications.WithLabelValues(kind).Inc()

	remaining := len(events)
	failed := false
	done := func(ok bool) {
		// Runs on the agent's single shard worker, so no lock is needed
		// for remaining/failed.
		remaining--
		failed = failed || !ok
		if remaining > 0 {
			return
		}
		e.mu.Lock()
		if failed {
			// Not stored: forget it so the agent's retry is processed
			// afresh, and do not acknowledge (TR-369 "Notify").
			e.notifies.remove(key)
			if isBoot {
				e.bootSeen.remove(eid)
			}
		} else {
			st.answered = true
		}
		e.mu.Unlock()
		if !failed && n.GetSendResp() {
			e.sendNotifyResp(mtp, from, eid, msgID, n.GetSubscriptionId())
		}
	}
	if len(events) == 0 {
		remaining = 1
		if !e.submit(eid, func(context.Context) { done(true) }) {
			e.mu.Lock()
			e.notifies.remove(key)
			e.mu.Unlock()
		}
		return
	}
	for _, ev := range events {
		if !e.publish(eid, mtp, from, ev, done) {
			// Queue full: the Notify is dropped without NotifyResp; with
			// NotifRetry the agent sends it again (TR-369 Notify retry).
			e.mu.Lock()
			e.notifies.remove(key)
			if isBoot {
				e.bootSeen.remove(eid)
			}
			e.mu.Unlock()
			return
		}
	}
	if ev := n.GetEvent(); ev != nil && ev.GetObjPath()+ev.GetEventName() == "Device.Boot!" {
		switch {
		case isTrue(ev.GetParams()["FirmwareUpdated"]):
			// New firmware: read the identity facts again.
			e.startOnboarding(eid, onboardFull)
		case strings.HasSuffix(ev.GetParams()["Cause"], "FactoryReset"):
			// LocalFactoryReset / RemoteFactoryReset (TR-181 Device.Boot!
			// Cause): whatever ran before, Duet's rows are gone; check now.
			e.checkAfresh(eid)
		case n.GetSubscriptionId() != SubBoot:
			// Not through Duet's own (persistent) subscription: it may
			// have been wiped (a factory reset); check.
			e.startOnboarding(eid, onboardCheck)
		}
		// Through Duet's subscription: it survived the boot, and with it
		// every other row Duet created (all persistent).
	}
}

// sendNotifyResp answers a Notify: same msg_id, subscription_id copied
// [R-NOT.10], on the MTP and address the Notify came from (TR-369 "Notify").
func (e *Endpoint) sendNotifyResp(mtp MTP, from Address, eid, msgID, subID string) {
	m, addr := e.currentAddr(eid, mtp, from)
	msg := &uspmsg.Msg{
		Header: &uspmsg.Header{MsgId: msgID, MsgType: uspmsg.Header_NOTIFY_RESP},
		Body: &uspmsg.Body{MsgBody: &uspmsg.Body_Response{Response: &uspmsg.Response{RespType: &uspmsg.Response_NotifyResp{
			NotifyResp: &uspmsg.NotifyResp{SubscriptionId: subID}}}}},
	}
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	if err := e.send(ctx, m, addr, eid, msg); err != nil {
		e.log.Warn("cannot send NotifyResp", "device", eid, "msg_id", msgID, "err", err)
	}
}

// notifyEvents translates one Notify into bus events (docs/architecture.md event
// table) and names its kind for the metric.
func (e *Endpoint) notifyEvents(eid string, n *uspmsg.Notify) ([]*duetv1.Event, string) {
	switch nt := n.GetNotification().(type) {
	case *uspmsg.Notify_Event_:
		ev := nt.Event
		args := maps.Clone(ev.GetParams())
		if args == nil {
			args = map[string]string{}
		}
		switch ev.GetObjPath() + ev.GetEventName() {
		case "Device.Boot!":
			// TR-181 Device.LocalAgent events.
			b := &duetv1.Boot{CommandKey: args["CommandKey"], Cause: args["Cause"], FirmwareUpdated: isTrue(args["FirmwareUpdated"])}
			delete(args, "CommandKey")
			delete(args, "Cause")
			delete(args, "FirmwareUpdated")
			b.Args = args
			out := []*duetv1.Event{{Kind: &duetv1.Event_Boot{Boot: b}}}
			// Reboot()/FactoryReset() complete on the Boot! carrying their
			// CommandKey (TR-181 commands).
			if b.CommandKey != "" {
				if r, ok := e.takeReboot(eid, b.CommandKey); ok {
					out = append(out, &duetv1.Event{Kind: &duetv1.Event_OperationComplete{OperationComplete: &duetv1.OperationComplete{
						Command: r.command, CommandKey: r.key, OutputArgs: map[string]string{"Cause": b.Cause}}}})
				}
			}
			return out, "boot"
		case "Device.LocalAgent.Periodic!":
			return []*duetv1.Event{{Kind: &duetv1.Event_Periodic{Periodic: &duetv1.Periodic{}}}}, "periodic"
		case "Device.LocalAgent.TransferComplete!":
			tc := &duetv1.TransferComplete{CommandKey: args["CommandKey"], IsDownload: args["TransferType"] == "Download", Url: args["TransferURL"]}
			tc.StartTime = parseTime(args["StartTime"])
			tc.CompleteTime = parseTime(args["CompleteTime"])
			if fc, _ := strconv.ParseUint(args["FaultCode"], 10, 32); fc != 0 {
				de := pkgusp.DomainError(&uspmsg.Error{ErrCode: uint32(fc), ErrMsg: args["FaultString"]})
				tc.Error = &duetv1.Error{Code: duetv1.ErrorCode_ERROR_CODE_TRANSFER_FAILED, Message: de.Message, DeviceFault: uint32(fc)}
			}
			return []*duetv1.Event{{Kind: &duetv1.Event_TransferComplete{TransferComplete: tc}}}, "transfer_complete"
		default:
			return []*duetv1.Event{{Kind: &duetv1.Event_DeviceEvent{DeviceEvent: &duetv1.DeviceEvent{Path: ev.GetObjPath(), Name: ev.GetEventName(), Args: args}}}}, "device_event"
		}
	case *uspmsg.Notify_ValueChange_:
		return []*duetv1.Event{{Kind: &duetv1.Event_ValueChange{ValueChange: &duetv1.ValueChange{Params: []*duetv1.Parameter{
			{Path: nt.ValueChange.GetParamPath(), Value: nt.ValueChange.GetParamValue()}}}}}}, "value_change"
	case *uspmsg.Notify_ObjCreation:
		return []*duetv1.Event{{Kind: &duetv1.Event_ObjectCreated{ObjectCreated: &duetv1.ObjectCreated{
			Path: nt.ObjCreation.GetObjPath(), UniqueKeys: nt.ObjCreation.GetUniqueKeys()}}}}, "object_created"
	case *uspmsg.Notify_ObjDeletion:
		return []*duetv1.Event{{Kind: &duetv1.Event_ObjectDeleted{ObjectDeleted: &duetv1.ObjectDeleted{Path: nt.ObjDeletion.GetObjPath()}}}}, "object_deleted"
	case *uspmsg.Notify_OperComplete:
		oc := nt.OperComplete
		command := oc.GetObjPath() + oc.GetCommandName()
		out := &duetv1.OperationComplete{Command: command, CommandKey: oc.GetCommandKey()}
		switch r := oc.GetOperationResp().(type) {
		case *uspmsg.Notify_OperationComplete_ReqOutputArgs:
			out.OutputArgs = r.ReqOutputArgs.GetOutputArgs()
		case *uspmsg.Notify_OperationComplete_CmdFailure:
			de := pkgusp.DomainError(&uspmsg.Error{ErrCode: r.CmdFailure.GetErrCode(), ErrMsg: r.CmdFailure.GetErrMsg()})
			out.Error = &duetv1.Error{Code: duetv1.ErrorCode(de.Code), Message: de.Message, DeviceFault: de.DeviceFault}
		}
		if op, ok := e.takeAsync(eid, command, oc.GetCommandKey()); ok {
			e.log.Debug("async operate complete", "device", eid, "command", command, "request", op.requestPath, "took", time.Since(op.started))
		}
		return []*duetv1.Event{{Kind: &duetv1.Event_OperationComplete{OperationComplete: out}}}, "operation_complete"
	case *uspmsg.Notify_OnBoardReq:
		ob := nt.OnBoardReq
		return []*duetv1.Event{{
			Device: &duetv1.DeviceIdentity{Oui: ob.GetOui(), ProductClass: ob.GetProductClass(), SerialNumber: ob.GetSerialNumber()},
			Kind: &duetv1.Event_OnboardRequest{OnboardRequest: &duetv1.OnboardRequest{Oui: ob.GetOui(), ProductClass: ob.GetProductClass(),
				SerialNumber: ob.GetSerialNumber(), AgentVersions: ob.GetAgentSupportedProtocolVersions()}},
		}}, "onboard_request"
	}
	return nil, "unknown"
}

func parseTime(s string) *timestamppb.Timestamp {
	if s == "" {
		return nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || t.Year() <= 1 { // 0001-01-01 means unknown
		return nil
	}
	return timestamppb.New(t)
}

// isTrue reads a TR-106 boolean argument; anything unparseable is false.
func isTrue(v string) bool {
	b, _ := pkgusp.ParseBool(v)
	return b
}
