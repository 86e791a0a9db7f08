package usp_test

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/duet-dm/duet/pkg/usp"
	"github.com/duet-dm/duet/proto/usp/uspmsg"
	"github.com/duet-dm/duet/proto/usp/usprecord"
)

var update = flag.Bool("update", false, "rewrite testdata/usp/*.bin")

const (
	agentID = "os::00256D-0123456789"
	ctrlID  = "self::duet-controller"
)

var testdataDir = filepath.Join("..", "..", "testdata", "usp")

// mustBytes panics on a marshal error: the inputs are fixed test data, so
// an error is a bug in the builder under test.
func mustBytes(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

func notify(msgID, subID string, sendResp bool, n *uspmsg.Notify) *uspmsg.Msg {
	n.SubscriptionId, n.SendResp = subID, sendResp
	return usp.NewRequest(msgID, &uspmsg.Request{ReqType: &uspmsg.Request_Notify{Notify: n}})
}

func resp(msgID string, r *uspmsg.Response) *uspmsg.Msg { return usp.NewResponse(msgID, r) }

// sample is one wire record as obuspa 11 would send it to the Controller
// (docs/testing.md, TR-369 "Message Transfer Protocols"–9): from the agent, to us, record version 1.3.
type sample struct {
	file    string
	kind    usp.RecordKind
	msgType uspmsg.Header_MsgType
	build   func(t testing.TB) []byte
}

func agentMsg(m *uspmsg.Msg) func(t testing.TB) []byte {
	return func(t testing.TB) []byte { return mustBytes(usp.MarshalMsgRecord(agentID, ctrlID, m)) }
}

var samples = []sample{
	{"websocket_connect.bin", usp.RecordWebSocketConnect, 0, func(t testing.TB) []byte {
		return mustBytes(usp.MarshalWebSocketConnect(agentID, ctrlID))
	}},
	{"mqtt_connect_v5.bin", usp.RecordMQTTConnect, 0, func(t testing.TB) []byte {
		return mustBytes(usp.MarshalMQTTConnect(agentID, ctrlID, usprecord.MQTTConnectRecord_V5, "usp/agent/"+agentID))
	}},
	{"stomp_connect.bin", usp.RecordSTOMPConnect, 0, func(t testing.TB) []byte {
		return mustBytes(usp.MarshalSTOMPConnect(agentID, ctrlID, "/queue/agent-1"))
	}},
	{"notify_boot.bin", usp.RecordMsg, uspmsg.Header_NOTIFY, agentMsg(notify("BOOT-1", "boot", true, &uspmsg.Notify{
		Notification: &uspmsg.Notify_Event_{Event: &uspmsg.Notify_Event{
			ObjPath: "Device.", EventName: "Boot!", // obuspa splits Device.Boot! (TR-369 "Notify")
			Params: map[string]string{
				"CommandKey":      "reboot-42",
				"Cause":           "RemoteReboot",
				"FirmwareUpdated": "false",
				"ParameterMap":    `{"Device.DeviceInfo.SoftwareVersion":"1.0.0","Device.DeviceInfo.UpTime":"3"}`,
			},
		}},
	}))},
	{"notify_value_change.bin", usp.RecordMsg, uspmsg.Header_NOTIFY, agentMsg(notify("VC-7", "vc", false, &uspmsg.Notify{
		Notification: &uspmsg.Notify_ValueChange_{ValueChange: &uspmsg.Notify_ValueChange{
			ParamPath: "Device.WiFi.SSID.1.SSID", ParamValue: "home-net",
		}},
	}))},
	{"notify_onboard.bin", usp.RecordMsg, uspmsg.Header_NOTIFY, agentMsg(notify("ONBOARD-1", "", true, &uspmsg.Notify{
		Notification: &uspmsg.Notify_OnBoardReq{OnBoardReq: &uspmsg.Notify_OnBoardRequest{
			Oui: "00256D", ProductClass: "SimGateway", SerialNumber: "0123456789",
			AgentSupportedProtocolVersions: usp.AgentSupportedVersions,
		}},
	}))},
	{"notify_oper_complete.bin", usp.RecordMsg, uspmsg.Header_NOTIFY, agentMsg(notify("OPC-3", "opc", true, &uspmsg.Notify{
		Notification: &uspmsg.Notify_OperComplete{OperComplete: &uspmsg.Notify_OperationComplete{
			ObjPath: "Device.IP.Diagnostics.", CommandName: "IPPing()", CommandKey: "ping-1",
			OperationResp: &uspmsg.Notify_OperationComplete_ReqOutputArgs{ReqOutputArgs: &uspmsg.Notify_OperationComplete_OutputArgs{
				OutputArgs: map[string]string{"Status": "Complete", "SuccessCount": "3", "FailureCount": "0"},
			}},
		}},
	}))},
	{"get_resp.bin", usp.RecordMsg, uspmsg.Header_GET_RESP, agentMsg(resp("get-1", &uspmsg.Response{RespType: &uspmsg.Response_GetResp{GetResp: &uspmsg.GetResp{
		ReqPathResults: []*uspmsg.GetResp_RequestedPathResult{
			{RequestedPath: "Device.DeviceInfo.", ResolvedPathResults: []*uspmsg.GetResp_ResolvedPathResult{{
				ResolvedPath: "Device.DeviceInfo.",
				ResultParams: map[string]string{"Manufacturer": "Duet", "ManufacturerOUI": "00256D", "SerialNumber": "0123456789", "SoftwareVersion": "1.0.0"},
			}}},
			{RequestedPath: "Device.Nope.", ErrCode: 7026, ErrMsg: "Invalid path"},
		},
	}}}))},
	{"set_resp.bin", usp.RecordMsg, uspmsg.Header_SET_RESP, agentMsg(resp("set-1", &uspmsg.Response{RespType: &uspmsg.Response_SetResp{SetResp: &uspmsg.SetResp{
		UpdatedObjResults: []*uspmsg.SetResp_UpdatedObjectResult{{
			RequestedPath: "Device.WiFi.SSID.1.",
			OperStatus: &uspmsg.SetResp_UpdatedObjectResult_OperationStatus{OperStatus: &uspmsg.SetResp_UpdatedObjectResult_OperationStatus_OperSuccess{
				OperSuccess: &uspmsg.SetResp_UpdatedObjectResult_OperationStatus_OperationSuccess{
					UpdatedInstResults: []*uspmsg.SetResp_UpdatedInstanceResult{{
						AffectedPath:  "Device.WiFi.SSID.1.",
						UpdatedParams: map[string]string{"SSID": "home-net"},
					}},
				},
			}},
		}},
	}}}))},
	{"add_resp.bin", usp.RecordMsg, uspmsg.Header_ADD_RESP, agentMsg(resp("add-1", &uspmsg.Response{RespType: &uspmsg.Response_AddResp{AddResp: &uspmsg.AddResp{
		CreatedObjResults: []*uspmsg.AddResp_CreatedObjectResult{{
			RequestedPath: "Device.LocalAgent.Subscription.",
			OperStatus: &uspmsg.AddResp_CreatedObjectResult_OperationStatus{OperStatus: &uspmsg.AddResp_CreatedObjectResult_OperationStatus_OperSuccess{
				OperSuccess: &uspmsg.AddResp_CreatedObjectResult_OperationStatus_OperationSuccess{
					InstantiatedPath: "Device.LocalAgent.Subscription.3.",
					UniqueKeys:       map[string]string{"Alias": "cpe-3", "ID": "boot", "Recipient": "Device.LocalAgent.Controller.1"},
				},
			}},
		}},
	}}}))},
	{"delete_resp.bin", usp.RecordMsg, uspmsg.Header_DELETE_RESP, agentMsg(resp("del-1", &uspmsg.Response{RespType: &uspmsg.Response_DeleteResp{DeleteResp: &uspmsg.DeleteResp{
		DeletedObjResults: []*uspmsg.DeleteResp_DeletedObjectResult{{
			RequestedPath: "Device.NAT.PortMapping.*.",
			OperStatus: &uspmsg.DeleteResp_DeletedObjectResult_OperationStatus{OperStatus: &uspmsg.DeleteResp_DeletedObjectResult_OperationStatus_OperSuccess{
				OperSuccess: &uspmsg.DeleteResp_DeletedObjectResult_OperationStatus_OperationSuccess{
					AffectedPaths: []string{"Device.NAT.PortMapping.1.", "Device.NAT.PortMapping.2."},
				},
			}},
		}},
	}}}))},
	{"operate_resp_sync.bin", usp.RecordMsg, uspmsg.Header_OPERATE_RESP, agentMsg(resp("op-1", &uspmsg.Response{RespType: &uspmsg.Response_OperateResp{OperateResp: &uspmsg.OperateResp{
		OperationResults: []*uspmsg.OperateResp_OperationResult{{
			ExecutedCommand: "Device.Reboot()",
			OperationResp:   &uspmsg.OperateResp_OperationResult_ReqOutputArgs{ReqOutputArgs: &uspmsg.OperateResp_OperationResult_OutputArgs{}},
		}},
	}}}))},
	{"operate_resp_async.bin", usp.RecordMsg, uspmsg.Header_OPERATE_RESP, agentMsg(resp("op-2", &uspmsg.Response{RespType: &uspmsg.Response_OperateResp{OperateResp: &uspmsg.OperateResp{
		OperationResults: []*uspmsg.OperateResp_OperationResult{{
			ExecutedCommand: "Device.IP.Diagnostics.IPPing()",
			OperationResp:   &uspmsg.OperateResp_OperationResult_ReqObjPath{ReqObjPath: "Device.LocalAgent.Request.1."},
		}},
	}}}))},
	{"error.bin", usp.RecordMsg, uspmsg.Header_ERROR, agentMsg(usp.NewError("set-2", 7004, "Invalid arguments",
		&uspmsg.Error_ParamError{ParamPath: "Device.WiFi.SSID.1.Enable", ErrCode: 7011, ErrMsg: "not a boolean"}))},
	{"disconnect.bin", usp.RecordDisconnect, 0, func(t testing.TB) []byte {
		return mustBytes(usp.MarshalDisconnect(agentID, ctrlID, "Configuration Change", 0))
	}},
}

// TestGenerateTestdata writes testdata/usp/*.bin with -update and otherwise
// checks the files still match what the builders produce.
func TestGenerateTestdata(t *testing.T) {
	for _, s := range samples {
		path := filepath.Join(testdataDir, s.file)
		b := s.build(t)
		if *update {
			if err := os.MkdirAll(testdataDir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test -run TestGenerateTestdata -update ./pkg/usp/)", err)
		}
		if !bytes.Equal(got, b) {
			t.Errorf("%s differs from the generator; rerun with -update if the change is intended", s.file)
		}
	}
}

func TestParseTestdata(t *testing.T) {
	for _, s := range samples {
		t.Run(s.file, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join(testdataDir, s.file))
			if err != nil {
				t.Fatal(err)
			}
			rec, err := usp.ParseRecord(b, ctrlID)
			if err != nil {
				t.Fatal(err)
			}
			if rec.Kind != s.kind || rec.FromID != agentID || rec.Version != "1.3" {
				t.Fatalf("got kind %v from %q version %q", rec.Kind, rec.FromID, rec.Version)
			}
			if s.kind == usp.RecordMsg {
				if rec.MsgType != s.msgType || rec.HeaderMismatch || rec.MsgID == "" {
					t.Fatalf("msg type %v mismatch %v id %q", rec.MsgType, rec.HeaderMismatch, rec.MsgID)
				}
			}
			// Addressed to someone else: dropped with the distinct sentinel.
			if _, err := usp.ParseRecord(b, "self::other"); !errors.Is(err, usp.ErrWrongRecipient) {
				t.Fatalf("wrong recipient: got %v", err)
			}
		})
	}
}

func TestParseTestdataFields(t *testing.T) {
	load := func(name string) *usp.Record {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(testdataDir, name))
		if err != nil {
			t.Fatal(err)
		}
		rec, err := usp.ParseRecord(b, ctrlID)
		if err != nil {
			t.Fatal(err)
		}
		return rec
	}
	if r := load("mqtt_connect_v5.bin"); r.MQTTVersion != usprecord.MQTTConnectRecord_V5 || r.SubscribedTopic != "usp/agent/"+agentID {
		t.Errorf("mqtt connect: %+v", r)
	}
	if r := load("stomp_connect.bin"); r.SubscribedDestination != "/queue/agent-1" {
		t.Errorf("stomp connect: %+v", r)
	}
	if r := load("disconnect.bin"); r.DisconnectReason != "Configuration Change" {
		t.Errorf("disconnect: %+v", r)
	}
	ev := load("notify_boot.bin").Msg.GetBody().GetRequest().GetNotify()
	if ev.GetSubscriptionId() != "boot" || !ev.GetSendResp() || ev.GetEvent().GetParams()["CommandKey"] != "reboot-42" ||
		ev.GetEvent().GetParams()["Cause"] != "RemoteReboot" {
		t.Errorf("boot: %v", ev)
	}
	e := usp.DomainError(load("error.bin").Msg.GetBody().GetError())
	if e.DeviceFault != 7004 || len(e.Params) != 1 || e.Params[0].DeviceFault != 7011 || e.Params[0].Path != "Device.WiFi.SSID.1.Enable" {
		t.Errorf("error: %+v", e)
	}
}
