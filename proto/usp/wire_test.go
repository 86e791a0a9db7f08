// Package usp_test pins the wire encoding of the generated USP schemas to
// bytes computed by hand from TR-369 usp-record-1-4.proto/TR-369 "Messages", so a wrong field number or type
// (varint where the table says fixed32, say) fails here.
package usp_test

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/duet-dm/duet/proto/usp/uspmsg"
	"github.com/duet-dm/duet/proto/usp/usprecord"
)

// h decodes hex written with spaces, newlines and // comments.
func h(t *testing.T, s string) []byte {
	t.Helper()
	var b strings.Builder
	for _, line := range strings.Split(s, "\n") {
		if i := strings.Index(line, "//"); i >= 0 {
			line = line[:i]
		}
		b.WriteString(strings.ReplaceAll(strings.ReplaceAll(line, " ", ""), "\t", ""))
	}
	out, err := hex.DecodeString(b.String())
	if err != nil {
		t.Fatalf("bad hex in test: %v", err)
	}
	return out
}

func TestWireEncoding(t *testing.T) {
	tests := []struct {
		name string
		msg  proto.Message
		want string // tag = field<<3 | wiretype (0 varint, 2 LEN, 5 fixed32)
	}{
		{
			name: "Get two paths max_depth",
			msg: &uspmsg.Msg{
				Header: &uspmsg.Header{MsgId: "g1", MsgType: uspmsg.Header_GET},
				Body: &uspmsg.Body{MsgBody: &uspmsg.Body_Request{Request: &uspmsg.Request{
					ReqType: &uspmsg.Request_Get{Get: &uspmsg.Get{
						ParamPaths: []string{"Device.A.", "Device.B"},
						MaxDepth:   2,
					}},
				}}},
			},
			want: `
			0a 06               // Msg.header = 1, LEN 6
			  0a 02 67 31       //   Header.msg_id = 1, LEN, "g1"
			  10 01             //   Header.msg_type = 2, varint GET(1)
			12 1e               // Msg.body = 2, LEN 30
			  0a 1c             //   Body.request = 1, LEN 28
			    0a 1a           //     Request.get = 1, LEN 26
			      0a 09 446576696365 2e 41 2e  // Get.param_paths = 1, "Device.A."
			      0a 08 446576696365 2e 42     // Get.param_paths = 1, "Device.B"
			      15 02000000                  // Get.max_depth = 2, fixed32 (2<<3|5) little-endian 2
			`,
		},
		{
			name: "NoSessionContext record",
			msg: &usprecord.Record{
				Version: "1.3", ToId: "a", FromId: "c",
				RecordType: &usprecord.Record_NoSessionContext{NoSessionContext: &usprecord.NoSessionContextRecord{Payload: []byte{1, 2}}},
			},
			want: `
			0a 03 312e33        // Record.version = 1, "1.3"
			12 01 61            // Record.to_id = 2, "a"
			1a 01 63            // Record.from_id = 3, "c"
			                    // payload_security PLAINTEXT(0) is the default: not encoded
			3a 04               // Record.no_session_context = 7, LEN 4
			  12 02 01 02       //   NoSessionContextRecord.payload = 2 (not 1), LEN 2
			`,
		},
		{
			name: "MQTTConnect record",
			msg: &usprecord.Record{
				Version: "1.3", ToId: "c", FromId: "a",
				RecordType: &usprecord.Record_MqttConnect{MqttConnect: &usprecord.MQTTConnectRecord{
					Version: usprecord.MQTTConnectRecord_V5, SubscribedTopic: "t/a",
				}},
			},
			want: `
			0a 03 312e33        // version = 1
			12 01 63            // to_id = 2
			1a 01 61            // from_id = 3
			52 07               // Record.mqtt_connect = 10, (10<<3|2 = 0x52), LEN 7
			  08 01             //   MQTTConnectRecord.version = 1, V5(1)
			  12 03 742f61      //   subscribed_topic = 2, "t/a"
			`,
		},
		{
			name: "Disconnect record fixed32 reason_code",
			msg: &usprecord.Record{
				Version: "1.3", ToId: "c", FromId: "a",
				PayloadSecurity: usprecord.Record_TLS12,
				RecordType: &usprecord.Record_Disconnect{Disconnect: &usprecord.DisconnectRecord{
					Reason: "x", ReasonCode: 7105,
				}},
			},
			want: `
			0a 03 312e33        // version = 1
			12 01 63            // to_id = 2
			1a 01 61            // from_id = 3
			20 01               // payload_security = 4, varint TLS12(1)
			62 08               // Record.disconnect = 12, (12<<3|2 = 0x62), LEN 8
			  0a 01 78          //   reason = 1, "x"
			  15 c11b0000       //   reason_code = 2, fixed32 7105 = 0x1bc1
			`,
		},
		{
			name: "NotifyResp",
			msg: &uspmsg.Msg{
				Header: &uspmsg.Header{MsgId: "n1", MsgType: uspmsg.Header_NOTIFY_RESP},
				Body: &uspmsg.Body{MsgBody: &uspmsg.Body_Response{Response: &uspmsg.Response{
					RespType: &uspmsg.Response_NotifyResp{NotifyResp: &uspmsg.NotifyResp{SubscriptionId: "s"}},
				}}},
			},
			want: `
			0a 06               // Msg.header = 1
			  0a 02 6e31        //   msg_id = 1, "n1"
			  10 10             //   msg_type = 2, NOTIFY_RESP(16)
			12 07               // Msg.body = 2
			  12 05             //   Body.response = 2
			    42 03           //     Response.notify_resp = 8, (8<<3|2 = 0x42)
			      0a 01 73      //       NotifyResp.subscription_id = 1, "s"
			`,
		},
		{
			name: "Error with ParamError",
			msg: &uspmsg.Msg{
				Header: &uspmsg.Header{MsgId: "e", MsgType: uspmsg.Header_ERROR},
				Body: &uspmsg.Body{MsgBody: &uspmsg.Body_Error{Error: &uspmsg.Error{
					ErrCode: 7004, ErrMsg: "bad",
					ParamErrs: []*uspmsg.Error_ParamError{{ParamPath: "Device.X", ErrCode: 7012, ErrMsg: "v"}},
				}}},
			},
			want: `
			0a 03               // Msg.header = 1
			  0a 01 65          //   msg_id = 1, "e"; msg_type ERROR(0) not encoded
			12 20               // Msg.body = 2, LEN 32
			  1a 1e             //   Body.error = 3, LEN 30
			    0d 5c1b0000     //     Error.err_code = 1, fixed32 (1<<3|5 = 0x0d), 7004 = 0x1b5c
			    12 03 626164    //     Error.err_msg = 2, "bad"
			    1a 12           //     Error.param_errs = 3, LEN 18
			      0a 08 446576696365 2e 58 //  ParamError.param_path = 1, "Device.X"
			      15 641b0000   //       ParamError.err_code = 2, fixed32 7012 = 0x1b64
			      1a 01 76      //       ParamError.err_msg = 3, "v"
			`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			want := h(t, tc.want)
			got, err := proto.MarshalOptions{Deterministic: true}.Marshal(tc.msg)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("encoding differs\n got  %x\n want %x", got, want)
			}
			back := tc.msg.ProtoReflect().New().Interface()
			if err := proto.Unmarshal(want, back); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(back, tc.msg) {
				t.Fatalf("round trip differs: %v vs %v", back, tc.msg)
			}
		})
	}
}
