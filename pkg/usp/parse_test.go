package usp_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/usp"
	"github.com/duet-dm/duet/proto/usp/uspmsg"
	"github.com/duet-dm/duet/proto/usp/usprecord"
)

func recordWith(t *testing.T, rec *usprecord.Record) []byte {
	t.Helper()
	b, err := proto.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func nsc(payload []byte) *usprecord.Record_NoSessionContext {
	return &usprecord.Record_NoSessionContext{NoSessionContext: &usprecord.NoSessionContextRecord{Payload: payload}}
}

func msgBytes(t *testing.T, m *uspmsg.Msg) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseRecordRejects(t *testing.T) {
	get := msgBytes(t, usp.NewGet("m1", []string{"Device."}, 0))
	good := func() *usprecord.Record {
		return &usprecord.Record{Version: "1.3", ToId: agentID, FromId: ctrlID, RecordType: nsc(get)}
	}
	withMsg := func(payload []byte) []byte {
		r := good()
		r.RecordType = nsc(payload)
		return recordWith(t, r)
	}
	header := msgBytes(t, &uspmsg.Msg{Header: &uspmsg.Header{MsgId: "m1", MsgType: uspmsg.Header_GET}})
	tests := []struct {
		name      string
		b         []byte
		sentinel  error
		code      uint32
		replyable bool
	}{
		{"garbage", []byte{0xff, 0xff}, usp.ErrInvalidRecord, 7100, false},
		{"no version", recordWith(t, func() *usprecord.Record { r := good(); r.Version = ""; return r }()), usp.ErrInvalidRecord, 7104, false},
		{"version not major.minor", recordWith(t, func() *usprecord.Record { r := good(); r.Version = "1"; return r }()), usp.ErrInvalidRecord, 7104, false},
		{"version letters", recordWith(t, func() *usprecord.Record { r := good(); r.Version = "1.x"; return r }()), usp.ErrInvalidRecord, 7104, false},
		{"wrong to_id", recordWith(t, func() *usprecord.Record { r := good(); r.ToId = "os::other"; return r }()), usp.ErrWrongRecipient, 7104, false},
		{"empty from_id", recordWith(t, func() *usprecord.Record { r := good(); r.FromId = ""; return r }()), usp.ErrInvalidRecord, 7104, false},
		{"no record type", recordWith(t, func() *usprecord.Record { r := good(); r.RecordType = nil; return r }()), usp.ErrInvalidRecord, 7104, false},
		// no_session_context followed by websocket_connect (field 9, empty).
		{"two record types", append(recordWith(t, good()), 0x4a, 0x00), usp.ErrInvalidRecord, 7104, false},
		{"empty payload", withMsg(nil), usp.ErrInvalidRecord, 7104, false},
		{"TLS12 outside session", recordWith(t, func() *usprecord.Record { r := good(); r.PayloadSecurity = usprecord.Record_TLS12; return r }()), usp.ErrInvalidRecord, 7102, false},
		{"session context", recordWith(t, func() *usprecord.Record {
			r := good()
			r.RecordType = &usprecord.Record_SessionContext{SessionContext: &usprecord.SessionContextRecord{SessionId: 2, SequenceId: 1}}
			return r
		}()), usp.ErrSessionContext, 7106, false},
		{"unknown MQTT version", recordWith(t, func() *usprecord.Record {
			r := good()
			r.RecordType = &usprecord.Record_MqttConnect{MqttConnect: &usprecord.MQTTConnectRecord{Version: 9}}
			return r
		}()), usp.ErrInvalidRecord, 7104, false},
		{"payload not a Msg", withMsg([]byte{0x0a, 0xff}), usp.ErrInvalidMsg, 7004, false},
		{"no header", withMsg(msgBytes(t, &uspmsg.Msg{Body: usp.NewGet("x", nil, 0).Body})), usp.ErrInvalidMsg, 7004, false},
		{"empty msg_id", withMsg(msgBytes(t, usp.NewGet("", []string{"Device."}, 0))), usp.ErrInvalidMsg, 7004, false},
		{"no body", withMsg(header), usp.ErrInvalidMsg, 7004, false},
		{"empty body", withMsg(append(header, 0x12, 0x00)), usp.ErrInvalidMsg, 7004, false},
		// A second Msg.body holding error: request and error both set.
		{"body two members", withMsg(append(get, 0x12, 0x02, 0x1a, 0x00)), usp.ErrInvalidMsg, 7004, false},
		// A second body.request holding set: get and set both set.
		{"request two members", withMsg(append(get, 0x12, 0x04, 0x0a, 0x02, 0x22, 0x00)), usp.ErrInvalidMsg, 7004, true},
		{"request empty", withMsg(append(header, 0x12, 0x02, 0x0a, 0x00)), usp.ErrInvalidMsg, 7004, true},
		// body.request with field 12, unknown to the 1.4 schema: fail softly.
		{"request from the future", withMsg(append(header, 0x12, 0x04, 0x0a, 0x02, 0x62, 0x00)), usp.ErrInvalidMsg, 7001, true},
		{"response empty", withMsg(append(header, 0x12, 0x02, 0x12, 0x00)), usp.ErrInvalidMsg, 7004, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := usp.ParseRecord(tc.b, agentID)
			var pe *usp.ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("want *ParseError, got %v", err)
			}
			if !errors.Is(err, tc.sentinel) || pe.Code != tc.code || pe.Replyable != tc.replyable {
				t.Fatalf("got %v code %d replyable %v; want %v code %d replyable %v", err, pe.Code, pe.Replyable, tc.sentinel, tc.code, tc.replyable)
			}
			if pe.Replyable && (pe.MsgID != "m1" || pe.FromID != ctrlID) {
				t.Fatalf("replyable error lacks ids: %+v", pe)
			}
		})
	}
	if _, err := usp.ParseRecord(recordWith(t, good()), agentID); err != nil {
		t.Fatalf("the good record itself: %v", err)
	}
}

// R-MSG.10: the body decides the type when the header disagrees.
func TestParseRecordTrustsBody(t *testing.T) {
	m := usp.NewGet("m1", []string{"Device."}, 0)
	m.Header.MsgType = uspmsg.Header_SET
	b, err := usp.MarshalMsgRecord(ctrlID, agentID, m)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := usp.ParseRecord(b, agentID)
	if err != nil {
		t.Fatal(err)
	}
	if rec.MsgType != uspmsg.Header_GET || !rec.HeaderMismatch {
		t.Fatalf("type %v mismatch %v", rec.MsgType, rec.HeaderMismatch)
	}
}

func TestBuildersRoundTrip(t *testing.T) {
	msgs := []struct {
		m    *uspmsg.Msg
		want uspmsg.Header_MsgType
	}{
		{usp.NewGet("1", []string{"Device.DeviceInfo.", "Device.WiFi.SSID.*.SSID"}, 2), uspmsg.Header_GET},
		{usp.NewSet("2", true, []usp.ObjectSettings{{Path: "Device.WiFi.SSID.1.", Params: []usp.ParamSetting{{Param: "SSID", Value: "x", Required: true}}}}), uspmsg.Header_SET},
		{usp.NewAdd("3", false, []usp.ObjectSettings{{Path: "Device.NAT.PortMapping.", Params: []usp.ParamSetting{{Param: "ExternalPort", Value: "80"}}}}), uspmsg.Header_ADD},
		{usp.NewDelete("4", false, []string{"Device.NAT.PortMapping.1."}), uspmsg.Header_DELETE},
		{usp.NewOperate("5", "Device.Reboot()", "ck", true, map[string]string{"Cause": "RemoteReboot"}), uspmsg.Header_OPERATE},
		{usp.NewGetSupportedDM("6", []string{"Device."}, usp.GSDMOptions{ReturnParams: true}), uspmsg.Header_GET_SUPPORTED_DM},
		{usp.NewGetInstances("7", []string{"Device.NAT.PortMapping."}, true), uspmsg.Header_GET_INSTANCES},
		{usp.NewGetSupportedProtocol("8", usp.ControllerSupportedVersions), uspmsg.Header_GET_SUPPORTED_PROTO},
		{usp.NewNotifyResp("9", "boot"), uspmsg.Header_NOTIFY_RESP},
		{usp.NewNotifyError("10", 7026, "nope"), uspmsg.Header_ERROR},
	}
	for _, tc := range msgs {
		b, err := usp.MarshalMsgRecord(ctrlID, agentID, tc.m)
		if err != nil {
			t.Fatal(err)
		}
		rec, err := usp.ParseRecord(b, agentID)
		if err != nil {
			t.Fatalf("%v: %v", tc.want, err)
		}
		if rec.MsgType != tc.want || rec.HeaderMismatch || rec.Version != usp.RecordVersion || rec.FromID != ctrlID {
			t.Fatalf("%v: got %+v", tc.want, rec)
		}
		if !proto.Equal(rec.Msg, tc.m) {
			t.Fatalf("%v: round trip differs", tc.want)
		}
	}
	// Notify errors may only use 7000–7006 (TR-369 "Error Codes").
	if c := usp.NewNotifyError("x", 7026, "").GetBody().GetError().GetErrCode(); c != 7000 {
		t.Fatalf("notify error code %d, want 7000", c)
	}
	if c := usp.NewNotifyError("x", 7005, "").GetBody().GetError().GetErrCode(); c != 7005 {
		t.Fatalf("notify error code %d, want 7005", c)
	}
}

func TestErrorCodeMapping(t *testing.T) {
	tests := []struct {
		usp  uint32
		code devicemodel.Code
	}{
		{0, devicemodel.CodeUnspecified},
		{7016, devicemodel.CodeNotFound}, {7026, devicemodel.CodeInvalidPath},
		{7010, devicemodel.CodeInvalidPath}, {7011, devicemodel.CodeInvalidType},
		{7012, devicemodel.CodeInvalidValue}, {7013, devicemodel.CodeNotWritable},
		{7001, devicemodel.CodeUnsupported}, {7002, devicemodel.CodeDenied},
		{7006, devicemodel.CodeDenied}, {7005, devicemodel.CodeResourcesExceeded},
		{7025, devicemodel.CodeConflict}, {7014, devicemodel.CodeConflict},
		{7022, devicemodel.CodeCommandFailed}, {7027, devicemodel.CodeCommandFailed},
		{7023, devicemodel.CodeCancelled}, {7018, devicemodel.CodeObjectNotCreatable},
		{7019, devicemodel.CodeObjectNotCreatable}, {7250, devicemodel.CodeInternal},
		{7850, devicemodel.CodeInternal},
	}
	for _, tc := range tests {
		if got := usp.ErrToCode(tc.usp); got != tc.code {
			t.Errorf("ErrToCode(%d) = %v, want %v", tc.usp, got, tc.code)
		}
	}
	// Every domain code maps to a defined, non-zero USP code, and the codes
	// with a single obvious USP counterpart survive a round trip.
	for c := devicemodel.CodeUnspecified; c <= devicemodel.CodeOutcomeUnknown; c++ {
		u := usp.CodeToErr(c)
		if usp.ErrCodeName(u) == "" {
			t.Errorf("CodeToErr(%v) = %d, not a defined code", c, u)
		}
	}
	for _, c := range []devicemodel.Code{devicemodel.CodeNotFound, devicemodel.CodeInvalidPath, devicemodel.CodeInvalidValue,
		devicemodel.CodeInvalidType, devicemodel.CodeNotWritable, devicemodel.CodeUnsupported, devicemodel.CodeDenied,
		devicemodel.CodeResourcesExceeded, devicemodel.CodeConflict, devicemodel.CodeCommandFailed, devicemodel.CodeCancelled,
		devicemodel.CodeObjectNotCreatable, devicemodel.CodeInvalidArgument, devicemodel.CodeInternal} {
		if back := usp.ErrToCode(usp.CodeToErr(c)); back != c {
			t.Errorf("%v -> %d -> %v", c, usp.CodeToErr(c), back)
		}
	}
	if got := usp.ErrCodeOf(&devicemodel.Error{Code: devicemodel.CodeInvalidPath, DeviceFault: 7008}); got != 7008 {
		t.Errorf("ErrCodeOf keeps a USP device fault: got %d", got)
	}
	if got := usp.ErrCodeOf(&devicemodel.Error{Code: devicemodel.CodeInvalidPath, DeviceFault: 9005}); got != 7026 {
		t.Errorf("ErrCodeOf with a CWMP fault: got %d", got)
	}
	if usp.ErrCodeOf(nil) != 0 || usp.ErrCodeOf(errors.New("x")) != 7003 {
		t.Error("ErrCodeOf nil/plain")
	}
}

func TestMTPHelpers(t *testing.T) {
	// TR-369 "MQTT Binding" spec example.
	topic := usp.MQTTReplyToTopic("usp/agents/cid:3AA3F8:my-unique-usp-id-42", "usp/controllers/oui:00256D:my-unique-bbf-id-42")
	if want := "usp/agents/cid:3AA3F8:my-unique-usp-id-42/reply-to=usp%2Fcontrollers%2Foui:00256D:my-unique-bbf-id-42"; topic != want {
		t.Fatalf("reply-to topic %q", topic)
	}
	base, reply, ok := usp.ParseMQTTReplyTo(topic)
	if !ok || base != "usp/agents/cid:3AA3F8:my-unique-usp-id-42" || reply != "usp/controllers/oui:00256D:my-unique-bbf-id-42" {
		t.Fatalf("parse: %q %q %v", base, reply, ok)
	}
	if _, r, ok := usp.ParseMQTTReplyTo("a/reply-to=x%2fy"); !ok || r != "x/y" {
		t.Fatalf("lower-case %%2f: %q", r)
	}
	for _, s := range []string{"usp/agent", "usp/agent/reply-to="} {
		if _, _, ok := usp.ParseMQTTReplyTo(s); ok {
			t.Errorf("%q has no reply-to", s)
		}
	}

	if got := usp.STOMPEscapeHeader("os::00256D-a\\b\nc\r"); got != `os\c\c00256D-a\\b\nc\r` {
		t.Fatalf("stomp escape %q", got)
	}
	if got, err := usp.STOMPUnescapeHeader(`os\c\c00256D-a\\b\nc\r`); err != nil || got != "os::00256D-a\\b\nc\r" {
		t.Fatalf("stomp unescape %q %v", got, err)
	}
	for _, bad := range []string{`a\t`, `a\`} {
		if _, err := usp.STOMPUnescapeHeader(bad); !errors.Is(err, usp.ErrBadSTOMPEscape) {
			t.Errorf("%q: %v", bad, err)
		}
	}

	// TR-369 "WebSocket Binding": obuspa encodes everything but -._~ ("%" included).
	if q := usp.WebSocketEIDQuery("os::00256D-0123%x"); q != "eid=os%3A%3A00256D-0123%25x" {
		t.Fatalf("eid query %q", q)
	}
	if eid, ok := usp.ParseWebSocketEID("foo=1&eid=os%3A%3A00256D-0123%25x"); !ok || eid != "os::00256D-0123%x" {
		t.Fatalf("eid parse %q %v", eid, ok)
	}
	if _, ok := usp.ParseWebSocketEID("foo=1"); ok {
		t.Fatal("no eid")
	}
	if id := usp.OSEndpointID("00256D", "SN 1"); id != "os::00256D-SN%201" {
		t.Fatalf("os id %q", id)
	}
	if !usp.IsUSPContentType("usp.msg") || !usp.IsUSPContentType("application/vnd.bbf.usp.msg") || usp.IsUSPContentType("application/json") {
		t.Fatal("content types")
	}
}

func TestParseBool(t *testing.T) {
	for s, want := range map[string]bool{"true": true, "1": true, "false": false, "0": false} {
		if got, err := usp.ParseBool(s); err != nil || got != want {
			t.Errorf("%q: %v %v", s, got, err)
		}
	}
	for _, s := range []string{"", "TRUE", "yes", "2"} {
		if _, err := usp.ParseBool(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
	if usp.FormatBool(true) != "true" || usp.FormatBool(false) != "false" {
		t.Error("FormatBool")
	}
}

func FuzzParseRecord(f *testing.F) {
	entries, err := os.ReadDir(testdataDir)
	if err != nil {
		f.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(testdataDir, e.Name()))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		rec, err := usp.ParseRecord(b, ctrlID)
		if err != nil {
			var pe *usp.ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error is not a *ParseError: %v", err)
			}
			return
		}
		if rec.Kind == usp.RecordMsg {
			if rec.Msg == nil || rec.MsgID == "" || rec.Msg.GetBody().GetMsgBody() == nil {
				t.Fatalf("accepted an invalid message: %v", rec.Msg)
			}
			// Whatever was accepted must re-encode and parse again.
			out, err := usp.MarshalMsgRecord(rec.FromID, ctrlID, rec.Msg)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := usp.ParseRecord(out, ctrlID); err != nil {
				t.Fatalf("re-encoded record refused: %v", err)
			}
		}
	})
}

func BenchmarkParseNotify(b *testing.B) {
	data, err := os.ReadFile(filepath.Join(testdataDir, "notify_boot.bin"))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := usp.ParseRecord(data, ctrlID); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBuildGet(b *testing.B) {
	paths := []string{"Device.DeviceInfo.", "Device.WiFi.SSID.*.SSID"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := usp.MarshalMsgRecord(ctrlID, agentID, usp.NewGet("msg-1", paths, 2)); err != nil {
			b.Fatal(err)
		}
	}
}
