package usp

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/devicemodel"
	pkgusp "github.com/duet-dm/duet/pkg/usp"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
	"github.com/duet-dm/duet/proto/usp/uspmsg"
)

func TestOptionsValidation(t *testing.T) {
	if _, err := New(Options{}); err == nil {
		t.Fatal("New without EndpointID succeeded")
	}
	b, _ := bustest.Start(t)
	if _, err := New(Options{EndpointID: "x", Bus: b, OnboardValueChange: []string{"Device..Bad"}}); err == nil {
		t.Fatal("bad OnboardValueChange path accepted")
	}
}

func TestEveryMessageTypeRoundTrip(t *testing.T) {
	f := newFixture(t)
	a := f.agent("os::00D09E-RT1")
	w := watchEvents(t, f.bus, a.ID)
	f.connect(a)
	on := w.wait("online", nil)
	if on.GetReachability().GetTransport() != "loop" || on.GetReachability().GetAdapterId() != "test" {
		t.Fatalf("reachability %v", on.GetReachability())
	}

	// Get with max_depth: parameters come back with full paths.
	res := f.mustDo(a.ID, &duetv1.Command{Op: &duetv1.Command_Get{Get: &duetv1.GetRequest{Paths: []string{"Device.DeviceInfo.", "Device.Nope."}, MaxDepth: 1}}})
	got := map[string]string{}
	for _, p := range res.GetGet().GetParams() {
		got[p.GetPath()] = p.GetValue()
	}
	if got["Device.DeviceInfo.Manufacturer"] != "Duet Test" || len(got) != 7 {
		t.Fatalf("get params %v", got)
	}
	if errs := res.GetGet().GetErrors(); len(errs) != 1 || errs[0].GetDeviceFault() != 7026 || errs[0].GetCode() != duetv1.ErrorCode_ERROR_CODE_INVALID_PATH || errs[0].GetPath() != "Device.Nope." {
		t.Fatalf("get errors %v", errs)
	}

	// Set grouped per object, partial failure reported per parameter.
	res = f.mustDo(a.ID, &duetv1.Command{Op: &duetv1.Command_Set{Set: &duetv1.SetRequest{AllowPartial: true, Params: []*duetv1.Parameter{
		{Path: "Device.IP.Interface.1.Alias", Value: "lan"}, {Path: "Device.IP.Interface.1.Enable", Value: "false"},
		{Path: "Device.DeviceInfo.SerialNumber", Value: "x"}}}}})
	if v, _ := a.Param("Device.IP.Interface.1.Alias"); v != "lan" || a.Requests("SET") != 1 {
		t.Fatalf("set not applied in one request: alias %q, %d SETs", v, a.Requests("SET"))
	}
	if len(res.GetSet().GetUpdated()) != 2 || len(res.GetSet().GetErrors()) != 2 || res.GetSet().GetErrors()[1].GetDeviceFault() != 7013 ||
		res.GetSet().GetErrors()[1].GetPath() != "Device.DeviceInfo.SerialNumber" || res.GetSet().GetErrors()[1].GetCode() != duetv1.ErrorCode_ERROR_CODE_NOT_WRITABLE {
		t.Fatalf("set result %v", res.GetSet())
	}
	// Without allow_partial the agent answers Error 7021 with param errors.
	res, err := f.do(a.ID, &duetv1.Command{Op: &duetv1.Command_Set{Set: &duetv1.SetRequest{Params: []*duetv1.Parameter{{Path: "Device.DeviceInfo.SerialNumber", Value: "x"}}}}})
	if err != nil || res.GetError().GetDeviceFault() != 7021 || len(res.GetError().GetParams()) != 1 || res.GetError().GetParams()[0].GetDeviceFault() != 7013 {
		t.Fatalf("atomic set failure: %v %v", res, err)
	}

	// Add with params relative and absolute.
	res = f.mustDo(a.ID, &duetv1.Command{Op: &duetv1.Command_Add{Add: &duetv1.AddRequest{ObjectPath: "Device.IP.Interface.", Params: []*duetv1.Parameter{
		{Path: "Alias", Value: "guest"}, {Path: "Device.IP.Interface.Enable", Value: "true"}}}}})
	if res.GetAdd().GetInstancePath() != "Device.IP.Interface.2." || res.GetAdd().GetUniqueKeys()["Alias"] != "cpe-2" {
		t.Fatalf("add result %v", res.GetAdd())
	}
	if v, _ := a.Param("Device.IP.Interface.2.Alias"); v != "guest" {
		t.Fatalf("added alias %q", v)
	}
	res, _ = f.do(a.ID, &duetv1.Command{Op: &duetv1.Command_Add{Add: &duetv1.AddRequest{ObjectPath: "Device.DeviceInfo."}}})
	if res.GetError().GetCode() != duetv1.ErrorCode_ERROR_CODE_OBJECT_NOT_CREATABLE || res.GetError().GetDeviceFault() != 7019 {
		t.Fatalf("add failure %v", res)
	}

	// GetInstances.
	res = f.mustDo(a.ID, &duetv1.Command{Op: &duetv1.Command_GetInstances{GetInstances: &duetv1.GetInstancesRequest{Paths: []string{"Device.IP.Interface."}}}})
	if insts := res.GetGetInstances().GetInstances(); len(insts) != 2 || insts[1].GetPath() != "Device.IP.Interface.2." || insts[1].GetUniqueKeys()["Alias"] != "guest" {
		t.Fatalf("instances %v", res.GetGetInstances())
	}

	// Delete: one success, one failure.
	res = f.mustDo(a.ID, &duetv1.Command{Op: &duetv1.Command_Delete{Delete: &duetv1.DeleteRequest{AllowPartial: true, ObjectPaths: []string{"Device.IP.Interface.2.", "Device.IP.Interface.9."}}}})
	if d := res.GetDelete(); !slices.Equal(d.GetDeletedPaths(), []string{"Device.IP.Interface.2."}) || len(d.GetErrors()) != 1 || d.GetErrors()[0].GetCode() != duetv1.ErrorCode_ERROR_CODE_NOT_FOUND {
		t.Fatalf("delete %v", d)
	}

	// Operate: sync with output args, async with request path then
	// operation_complete, command failure, and an Error message.
	res = f.mustDo(a.ID, &duetv1.Command{Op: &duetv1.Command_Operate{Operate: &duetv1.OperateRequest{Command: "Device.SelfTest()", InputArgs: map[string]string{"Echo": "hi"}}}})
	if o := res.GetOperate(); o.GetAsync() || o.GetOutputArgs()["Echo"] != "hi" || o.GetExecutedCommand() != "Device.SelfTest()" {
		t.Fatalf("sync operate %v", o)
	}
	res = f.mustDo(a.ID, &duetv1.Command{Op: &duetv1.Command_Operate{Operate: &duetv1.OperateRequest{Command: "Device.IP.Diagnostics.IPPing()", CommandKey: "ping-1"}}})
	if o := res.GetOperate(); !o.GetAsync() || o.GetRequestPath() != "Device.LocalAgent.Request.1." {
		t.Fatalf("async operate %v", o)
	}
	oc := w.wait("operation_complete", nil).GetOperationComplete()
	if oc.GetCommand() != "Device.IP.Diagnostics.IPPing()" || oc.GetCommandKey() != "ping-1" || oc.GetOutputArgs()["Status"] != "Complete" {
		t.Fatalf("operation complete %v", oc)
	}
	res, _ = f.do(a.ID, &duetv1.Command{Op: &duetv1.Command_Operate{Operate: &duetv1.OperateRequest{Command: "Device.Broken()"}}})
	if res.GetError().GetCode() != duetv1.ErrorCode_ERROR_CODE_COMMAND_FAILED || res.GetError().GetDeviceFault() != 7022 {
		t.Fatalf("command failure %v", res)
	}
	res, _ = f.do(a.ID, &duetv1.Command{Op: &duetv1.Command_Operate{Operate: &duetv1.OperateRequest{Command: "Device.Nothing()"}}})
	if res.GetError().GetCode() != duetv1.ErrorCode_ERROR_CODE_INVALID_PATH || res.GetError().GetDeviceFault() != 7026 {
		t.Fatalf("error message mapping %v", res)
	}

	// GetSupportedDM and GetSupportedProtocol.
	res = f.mustDo(a.ID, &duetv1.Command{Op: &duetv1.Command_GetSupportedDm{GetSupportedDm: &duetv1.GetSupportedDMRequest{Paths: []string{"Device.IP."}, ReturnParams: true, ReturnCommands: true}}})
	obj := res.GetGetSupportedDm().GetObjects()[0]
	if obj.GetPath() != "Device.IP.Interface.{i}." || !obj.GetMultiInstance() || obj.GetAccess() != "add_delete" ||
		obj.GetParams()[0].GetType() != duetv1.ParamType_PARAM_TYPE_BOOLEAN || obj.GetParams()[0].GetAccess() != duetv1.Writability_WRITABILITY_READ_WRITE ||
		!obj.GetCommands()[0].GetAsync() || obj.GetEvents()[0].GetName() != "Up!" || !slices.Equal(obj.GetUniqueKeys(), []string{"Alias"}) {
		t.Fatalf("gsdm %v", obj)
	}
	res = f.mustDo(a.ID, &duetv1.Command{Op: &duetv1.Command_GetSupportedProtocol{GetSupportedProtocol: &duetv1.GetSupportedProtocolRequest{}}})
	if res.GetGetSupportedProtocol().GetAgentVersions() != "1.0,1.1,1.2,1.3" {
		t.Fatalf("gsp %v", res)
	}
	// CWMP-only operations are refused clearly.
	res, _ = f.do(a.ID, &duetv1.Command{Op: &duetv1.Command_CwmpRpc{CwmpRpc: &duetv1.CwmpRpc{Method: "Upload"}}})
	if res.GetError().GetCode() != duetv1.ErrorCode_ERROR_CODE_UNSUPPORTED {
		t.Fatalf("cwmp rpc over usp: %v", res)
	}
}

func TestConcurrentRequestsNeverCross(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.MaxInFlightPerAgent = 64 })
	a := f.agent("os::00D09E-CONC")
	a.Delay = func(*uspmsg.Msg) time.Duration { return time.Duration(rand.IntN(20)) * time.Millisecond }
	b := f.agent("os::00D09E-CONC2")
	f.connect(a)
	f.connect(b)
	const n = 60
	for i := range n {
		f.mustDo(a.ID, &duetv1.Command{Op: &duetv1.Command_Add{Add: &duetv1.AddRequest{ObjectPath: "Device.IP.Interface.", Params: []*duetv1.Parameter{{Path: "Alias", Value: fmt.Sprintf("if-%d", i+2)}}}}})
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range n {
		wg.Add(2)
		go func() {
			defer wg.Done()
			path := fmt.Sprintf("Device.IP.Interface.%d.Alias", i+2)
			res, err := f.do(a.ID, &duetv1.Command{Op: &duetv1.Command_Get{Get: &duetv1.GetRequest{Paths: []string{path}}}})
			if err != nil {
				errs <- err
				return
			}
			ps := res.GetGet().GetParams()
			if len(ps) != 1 || ps[0].GetPath() != path || ps[0].GetValue() != fmt.Sprintf("if-%d", i+2) {
				errs <- fmt.Errorf("asked %s, got %v", path, ps)
			}
		}()
		go func() {
			defer wg.Done()
			res, err := f.do(b.ID, &duetv1.Command{Op: &duetv1.Command_Get{Get: &duetv1.GetRequest{Paths: []string{"Device.DeviceInfo.SerialNumber"}}}})
			if err != nil {
				errs <- err
				return
			}
			if ps := res.GetGet().GetParams(); len(ps) != 1 || ps[0].GetValue() != "SN-"+b.ID {
				errs <- fmt.Errorf("agent b got %v", ps)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	a.Wait()
}

func TestBadRecordsAreDroppedAndCounted(t *testing.T) {
	f := newFixture(t)
	a := f.agent("os::00D09E-BAD")
	f.connect(a)

	before := metricValue(t, "duet_usp_records_dropped_total", map[string]string{"reason": DropGarbage})
	err := f.ep.HandleRecord(f.mtp, Address{Reply: a.ID}, []byte{0xff, 0x01, 0x02, 0x03})
	var re *RecordError
	if !errors.As(err, &re) || re.Reason != DropGarbage {
		t.Fatalf("garbage: %v", err)
	}
	if after := metricValue(t, "duet_usp_records_dropped_total", map[string]string{"reason": DropGarbage}); after != before+1 {
		t.Fatalf("garbage counter %v -> %v", before, after)
	}

	// A record for another controller is dropped [R-E2E.1].
	rec, _ := pkgusp.MarshalMsgRecord(a.ID, "self::someone-else", pkgusp.NewGet("x", []string{"Device."}, 0))
	if err := f.ep.HandleRecord(f.mtp, Address{Reply: a.ID}, rec); !errors.As(err, &re) || re.Reason != DropWrongToID {
		t.Fatalf("wrong to_id: %v", err)
	}
	// A response nobody waits for is ignored.
	rec, _ = pkgusp.MarshalMsgRecord(a.ID, f.ep.ID(), pkgusp.NewNotifyResp("nobody-asked", ""))
	if err := f.ep.HandleRecord(f.mtp, Address{Reply: a.ID}, rec); !errors.As(err, &re) || re.Reason != DropUnknownMsgID {
		t.Fatalf("unknown msg_id: %v", err)
	}
	// Empty input and a session-context record.
	if err := f.ep.HandleRecord(f.mtp, Address{}, nil); !errors.As(err, &re) {
		t.Fatalf("empty record accepted: %v", err)
	}
	// A request a Controller does not serve gets Error 7001 (R-MTP.5 holds).
	if err := a.SendMsg(pkgusp.NewRequest("reg-1", &uspmsg.Request{ReqType: &uspmsg.Request_Register{Register: &uspmsg.Register{}}})); err != nil {
		t.Fatal(err)
	}
	checkFor(t, "error 7001 reply", func() bool {
		es := a.Errors()
		return len(es) == 1 && es[0].GetHeader().GetMsgId() == "reg-1" && es[0].GetBody().GetError().GetErrCode() == 7001
	})

	// A Request the parser refuses but whose msg_id it read gets an Error
	// (R-MTP.5); one without a msg_id gets nothing.
	bad := &uspmsg.Msg{Header: &uspmsg.Header{MsgId: "bad-1", MsgType: uspmsg.Header_GET}, Body: &uspmsg.Body{MsgBody: &uspmsg.Body_Request{Request: &uspmsg.Request{}}}}
	if err := a.SendMsg(bad); !errors.As(err, &re) || re.Reason != DropBadPayload {
		t.Fatalf("invalid request: %v", err)
	}
	checkFor(t, "error reply to an invalid request", func() bool {
		for _, m := range a.Errors() {
			if m.GetHeader().GetMsgId() == "bad-1" && m.GetBody().GetError().GetErrCode() != 0 {
				return true
			}
		}
		return false
	})
	noID := &uspmsg.Msg{Header: &uspmsg.Header{}, Body: &uspmsg.Body{MsgBody: &uspmsg.Body_Request{Request: &uspmsg.Request{}}}}
	if err := a.SendMsg(noID); !errors.As(err, &re) {
		t.Fatalf("request without msg_id: %v", err)
	}

	// Nothing else is affected.
	res := f.mustDo(a.ID, &duetv1.Command{Op: &duetv1.Command_Get{Get: &duetv1.GetRequest{Paths: []string{"Device.DeviceInfo.ModelName"}}}})
	if res.GetGet().GetParams()[0].GetValue() != "TA-1" {
		t.Fatal(res)
	}
	if n := len(a.Errors()); n != 2 {
		t.Fatalf("%d Error replies, want 2 (Register and the invalid Get)", n)
	}
}

func TestFuzzishRecordsNeverPanic(t *testing.T) {
	f := newFixture(t)
	good, _ := pkgusp.MarshalMsgRecord("os::x", f.ep.ID(), pkgusp.NewGet("1", []string{"Device."}, 0))
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		b := slices.Clone(good)
		switch i % 3 {
		case 0:
			b = b[:r.IntN(len(b))]
		case 1:
			b[r.IntN(len(b))] ^= byte(1 + r.IntN(255))
		default:
			b = make([]byte, r.IntN(64))
			for j := range b {
				b[j] = byte(r.Uint32())
			}
		}
		_ = f.ep.HandleRecord(f.mtp, Address{Reply: "os::x"}, b)
	}
}

func TestAgentDisconnectMidRequest(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.RequestTimeout = 30 * time.Second })
	a := f.agent("os::00D09E-GONE")
	other := f.agent("os::00D09E-STAY")
	w := watchEvents(t, f.bus, a.ID)
	f.connect(a)
	f.connect(other)
	// Drain onboarding traffic so the silent period only covers our Get.
	checkFor(t, "onboarding", func() bool { return len(a.Subscriptions()) == 5 })
	a.Silent.Store(true)
	for len(a.RequestSeen()) > 0 {
		<-a.RequestSeen()
	}
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		res, err := f.do(a.ID, &duetv1.Command{Op: &duetv1.Command_Get{Get: &duetv1.GetRequest{Paths: []string{"Device."}}}})
		if err == nil && res.GetError() != nil {
			err = fmt.Errorf("%v: %s", res.GetError().GetCode(), res.GetError().GetMessage())
			if res.GetError().GetCode() == duetv1.ErrorCode_ERROR_CODE_UNAVAILABLE {
				err = nil
			}
		} else if err == nil {
			err = errors.New("get succeeded on a silent agent")
		}
		done <- err
	}()
	select {
	case <-a.RequestSeen():
	case <-time.After(10 * time.Second):
		t.Fatal("request never reached the agent")
	}
	f.disconnect(a)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("failure took %s", time.Since(start))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("request did not fail when the agent disconnected")
	}
	if off := w.wait("offline", nil); off.GetOffline().GetReason() == "" {
		t.Fatal("offline without reason")
	}
	// The agent is forgotten: a new command finds nobody serving it.
	checkFor(t, "command subscription removed", func() bool {
		_, err := f.do(a.ID, &duetv1.Command{Op: &duetv1.Command_Get{Get: &duetv1.GetRequest{Paths: []string{"Device."}}}})
		return devicemodel.ErrorCode(err) == devicemodel.CodeUnavailable
	})
	// The other agent is unaffected.
	f.mustDo(other.ID, &duetv1.Command{Op: &duetv1.Command_Get{Get: &duetv1.GetRequest{Paths: []string{"Device.DeviceInfo."}}}})
}

func TestRequestTimeout(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.RequestTimeout = 200 * time.Millisecond; o.OnboardValueChange = []string{} })
	a := f.agent("os::00D09E-SLOW")
	a.Silent.Store(true)
	f.connect(a)
	res, err := f.do(a.ID, &duetv1.Command{Op: &duetv1.Command_Get{Get: &duetv1.GetRequest{Paths: []string{"Device."}}}})
	if err != nil || res.GetError().GetCode() != duetv1.ErrorCode_ERROR_CODE_TIMEOUT {
		t.Fatalf("want timeout, got %v %v", res, err)
	}
}

func TestNotifyDedupAndNotifyResp(t *testing.T) {
	f := newFixture(t)
	a := f.agent("os::00D09E-NOTE")
	w := watchEvents(t, f.bus, a.ID)
	f.connect(a)
	vc := &uspmsg.Notify{SubscriptionId: "duet-vc-1", SendResp: true, Notification: &uspmsg.Notify_ValueChange_{ValueChange: &uspmsg.Notify_ValueChange{
		ParamPath: "Device.DeviceInfo.SoftwareVersion", ParamValue: "2.0"}}}
	if _, err := a.Notify("vc-1", vc); err != nil {
		t.Fatal(err)
	}
	ev := w.wait("value_change", nil)
	if p := ev.GetValueChange().GetParams()[0]; p.GetPath() != "Device.DeviceInfo.SoftwareVersion" || p.GetValue() != "2.0" {
		t.Fatal(ev)
	}
	checkFor(t, "NotifyResp", func() bool { return len(a.NotifyResps()) == 1 })
	r := a.NotifyResps()[0]
	if r.GetHeader().GetMsgId() != "vc-1" || r.GetBody().GetResponse().GetNotifyResp().GetSubscriptionId() != "duet-vc-1" {
		t.Fatalf("NotifyResp %v", r)
	}
	// The agent did not see our answer and retransmits: answered again,
	// published once (TR-369 "Notify").
	if _, err := a.Notify("vc-1", vc); err != nil {
		t.Fatal(err)
	}
	checkFor(t, "second NotifyResp", func() bool { return len(a.NotifyResps()) == 2 })
	// send_resp=false: published, never answered.
	if _, err := a.Notify("per-1", &uspmsg.Notify{SubscriptionId: "duet-periodic", Notification: &uspmsg.Notify_Event_{Event: &uspmsg.Notify_Event{ObjPath: "Device.LocalAgent.", EventName: "Periodic!"}}}); err != nil {
		t.Fatal(err)
	}
	w.wait("periodic", nil) // events of one agent are ordered: the duplicate would be before it
	if n := w.count("value_change"); n != 1 {
		t.Fatalf("value_change published %d times", n)
	}
	// Every other kind.
	notes := []*uspmsg.Notify{
		{SendResp: true, Notification: &uspmsg.Notify_Event_{Event: &uspmsg.Notify_Event{ObjPath: "Device.LocalAgent.", EventName: "TransferComplete!", Params: map[string]string{
			"CommandKey": "fw-1", "TransferType": "Download", "TransferURL": "http://x/fw", "FaultCode": "7000", "FaultString": "bad", "StartTime": "2026-01-01T00:00:00Z"}}}},
		{Notification: &uspmsg.Notify_Event_{Event: &uspmsg.Notify_Event{ObjPath: "Device.LocalAgent.", EventName: "WakeUp!", Params: map[string]string{"a": "b"}}}},
		{Notification: &uspmsg.Notify_ObjCreation{ObjCreation: &uspmsg.Notify_ObjectCreation{ObjPath: "Device.IP.Interface.5.", UniqueKeys: map[string]string{"Alias": "x"}}}},
		{Notification: &uspmsg.Notify_ObjDeletion{ObjDeletion: &uspmsg.Notify_ObjectDeletion{ObjPath: "Device.IP.Interface.5."}}},
		{Notification: &uspmsg.Notify_OperComplete{OperComplete: &uspmsg.Notify_OperationComplete{ObjPath: "Device.DeviceInfo.FirmwareImage.2.", CommandName: "Download()", CommandKey: "fw-1",
			OperationResp: &uspmsg.Notify_OperationComplete_CmdFailure{CmdFailure: &uspmsg.Notify_OperationComplete_CommandFailure{ErrCode: 7023, ErrMsg: "cancelled"}}}}},
		{SendResp: true, Notification: &uspmsg.Notify_OnBoardReq{OnBoardReq: &uspmsg.Notify_OnBoardRequest{Oui: "00D09E", ProductClass: "TA", SerialNumber: "S1", AgentSupportedProtocolVersions: "1.3"}}},
	}
	for _, n := range notes {
		if _, err := a.Notify("", n); err != nil {
			t.Fatal(err)
		}
	}
	tc := w.wait("transfer_complete", nil).GetTransferComplete()
	if tc.GetCommandKey() != "fw-1" || !tc.GetIsDownload() || tc.GetError().GetDeviceFault() != 7000 || tc.GetStartTime() == nil {
		t.Fatalf("transfer complete %v", tc)
	}
	if de := w.wait("device_event", nil).GetDeviceEvent(); de.GetName() != "WakeUp!" || de.GetArgs()["a"] != "b" {
		t.Fatalf("device event %v", de)
	}
	if oc := w.wait("object_created", nil).GetObjectCreated(); oc.GetPath() != "Device.IP.Interface.5." {
		t.Fatal(oc)
	}
	w.wait("object_deleted", nil)
	if oc := w.wait("operation_complete", nil).GetOperationComplete(); oc.GetError().GetCode() != duetv1.ErrorCode_ERROR_CODE_CANCELLED || oc.GetCommand() != "Device.DeviceInfo.FirmwareImage.2.Download()" {
		t.Fatal(oc)
	}
	ob := w.wait("onboard_request", nil)
	if ob.GetDevice().GetSerialNumber() != "S1" || ob.GetOnboardRequest().GetAgentVersions() != "1.3" {
		t.Fatal(ob)
	}
	// 2 value change answers + transfer complete + onboard request.
	checkFor(t, "NotifyResp for send_resp only", func() bool { return len(a.NotifyResps()) == 4 })
}

func TestOnboardingCreatesSubscriptionsOnce(t *testing.T) {
	f := newFixture(t, func(o *Options) {
		o.OnboardValueChange = []string{"Device.DeviceInfo.SoftwareVersion", "Device.DeviceInfo.HardwareVersion"}
	})
	a := f.agent("os::00D09E-ONB")
	w := watchEvents(t, f.bus, a.ID)
	okBefore := metricValue(t, "duet_usp_onboardings_total", map[string]string{"outcome": "ok"})
	f.connect(a)
	on := w.wait("online", func(ev *duetv1.Event) bool { return ev.GetDevice().GetManufacturer() != "" })
	if d := on.GetDevice(); d.GetOui() != "00D09E" || d.GetSerialNumber() != "SN-"+a.ID || d.GetSoftwareVersion() != "1.0.0" || d.GetHardwareVersion() != "hw1" || d.GetModelName() != "TA-1" || d.GetProductClass() != "TestAgent" {
		t.Fatalf("identity %v", d)
	}
	want := []string{"duet-boot", "duet-opc", "duet-periodic", "duet-transfer", "duet-vc-1", "duet-vc-2"}
	checkFor(t, "subscriptions", func() bool { return slices.Equal(a.Subscriptions(), want) })
	// The agent holds the rows before Duet has read its AddResp: wait for
	// the onboarding to finish, or the disconnect below cuts it short (and
	// a failed first onboarding is, rightly, not counted as ok).
	checkFor(t, "first onboarding", func() bool {
		return metricValue(t, "duet_usp_onboardings_total", map[string]string{"outcome": "ok"}) >= okBefore+1
	})
	if v, _ := a.Param("Device.LocalAgent.Subscription.1.NotifRetry"); v != "true" {
		t.Fatalf("boot subscription NotifRetry %q", v)
	}
	if v, _ := a.Param("Device.LocalAgent.Subscription.1.Persistent"); v != "true" {
		t.Fatalf("boot subscription Persistent %q", v)
	}

	// Reconnect twice, once with Boot!: onboarding runs again but adds nothing.
	for i := range 2 {
		f.disconnect(a)
		w.wait("offline", nil)
		f.connect(a)
		if _, err := a.Boot("", "", "LocalReboot"); err != nil {
			t.Fatal(err)
		}
		w.wait("boot", nil)
		checkFor(t, "onboarding again", func() bool {
			return metricValue(t, "duet_usp_onboardings_total", map[string]string{"outcome": "ok"}) >= okBefore+float64(i+2)
		})
	}
	if n := a.Requests("ADD"); n != 1 {
		t.Fatalf("%d Add requests, want 1", n)
	}
	if got := a.Subscriptions(); !slices.Equal(got, want) {
		t.Fatalf("subscriptions after reconnects %v", got)
	}
}

func TestRebootCompletesOnBoot(t *testing.T) {
	f := newFixture(t)
	a := f.agent("os::00D09E-RBT")
	w := watchEvents(t, f.bus, a.ID)
	f.connect(a)
	res := f.mustDo(a.ID, &duetv1.Command{Op: &duetv1.Command_Operate{Operate: &duetv1.OperateRequest{Command: "Device.Reboot()", CommandKey: "reboot-42"}}})
	if res.GetOperate().GetAsync() {
		t.Fatal("Reboot() is sync")
	}
	// A Boot! with another key completes nothing.
	if _, err := a.Boot("", "other", "LocalReboot"); err != nil {
		t.Fatal(err)
	}
	if b := w.wait("boot", nil).GetBoot(); b.GetCommandKey() != "other" {
		t.Fatal(b)
	}
	if _, err := a.Boot("", "reboot-42", "RemoteReboot"); err != nil {
		t.Fatal(err)
	}
	b := w.wait("boot", func(ev *duetv1.Event) bool { return ev.GetBoot().GetCommandKey() == "reboot-42" }).GetBoot()
	if b.GetCause() != "RemoteReboot" || b.GetFirmwareUpdated() || b.GetArgs()["ParameterMap"] != "{}" {
		t.Fatalf("boot %v", b)
	}
	oc := w.wait("operation_complete", nil).GetOperationComplete()
	if oc.GetCommand() != "Device.Reboot()" || oc.GetCommandKey() != "reboot-42" {
		t.Fatalf("reboot completion %v", oc)
	}
	if n := w.count("operation_complete"); n != 1 {
		t.Fatalf("%d completions", n)
	}
}

func TestShutdownIsIdempotent(t *testing.T) {
	f := newFixture(t)
	a := f.agent("os::00D09E-SD")
	f.connect(a)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.ep.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.ep.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	var re *RecordError
	if err := f.ep.HandleRecord(f.mtp, Address{Reply: a.ID}, []byte{}); !errors.As(err, &re) {
		t.Fatalf("record after shutdown: %v", err)
	}
}

func TestInFlightBoundAndShutdownFailsPending(t *testing.T) {
	f := newFixture(t, func(o *Options) {
		o.MaxInFlightPerAgent = 1
		o.RequestTimeout = 30 * time.Second
		o.OnboardValueChange = []string{}
	})
	a := f.agent("os::00D09E-BOUND")
	a.Silent.Store(true)
	f.connect(a)
	// Onboarding holds the only slot (the agent never answers): a command
	// with a short deadline cannot get one.
	select {
	case <-a.RequestSeen():
	case <-time.After(10 * time.Second):
		t.Fatal("onboarding request never sent")
	}
	res, err := f.do(a.ID, &duetv1.Command{Timeout: durationpb.New(200 * time.Millisecond), Op: &duetv1.Command_Get{Get: &duetv1.GetRequest{Paths: []string{"Device."}}}})
	if err != nil || res.GetError().GetCode() != duetv1.ErrorCode_ERROR_CODE_RESOURCES_EXCEEDED {
		t.Fatalf("want resources_exceeded, got %v %v", res, err)
	}
	if n := a.Requests("GET"); n != 1 {
		t.Fatalf("%d Gets reached the agent, want only onboarding's", n)
	}
	// Shutdown fails what is in flight at once.
	failedBefore := metricValue(t, "duet_usp_onboardings_total", map[string]string{"outcome": "failed"})
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.ep.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("shutdown took %s", d)
	}
	if v := metricValue(t, "duet_usp_onboardings_total", map[string]string{"outcome": "failed"}); v != failedBefore+1 {
		t.Fatal("the pending onboarding request was not failed")
	}
}

// TestKeepAliveTakesSilentAgentOffline: over a brokered MTP nothing tells
// the controller an agent died; a silent agent is probed and, without an
// answer, goes offline. One that answers stays online.
func TestKeepAliveTakesSilentAgentOffline(t *testing.T) {
	f := newFixture(t, func(o *Options) {
		o.KeepAliveInterval = 300 * time.Millisecond
		o.RequestTimeout = 500 * time.Millisecond
		o.OnboardValueChange = []string{}
	})
	dead := f.agent("os::00D09E-DEAD")
	alive := f.agent("os::00D09E-ALIVE")
	wDead := watchEvents(t, f.bus, dead.ID)
	wAlive := watchEvents(t, f.bus, alive.ID)
	f.connect(dead)
	f.connect(alive)
	checkFor(t, "onboarding", func() bool { return len(dead.Subscriptions()) == 4 && len(alive.Subscriptions()) == 4 })
	dead.Silent.Store(true)
	off := wDead.wait("offline", nil)
	if !strings.Contains(off.GetOffline().GetReason(), "keep-alive") {
		t.Fatalf("offline reason %q", off.GetOffline().GetReason())
	}
	// The live agent was probed too (it is idle) and answered.
	checkFor(t, "keep-alive probe answered", func() bool { return alive.Requests("GET_SUPPORTED_PROTO") > 0 })
	if wAlive.count("offline") != 0 {
		t.Fatal("an agent that answers its keep-alive went offline")
	}
	f.mustDo(alive.ID, &duetv1.Command{Op: &duetv1.Command_Get{Get: &duetv1.GetRequest{Paths: []string{"Device.DeviceInfo."}}}})
}
