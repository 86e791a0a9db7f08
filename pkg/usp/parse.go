// Package usp builds and parses TR-369 USP Records and Messages over the
// generated schemas in proto/usp. It is pure: no I/O, no clock.
//
// Parsing validates what TR-369 and TR-369 "Handling of Records", R-MTP.5 require of a received record and
// its message; building produces the records a Controller sends (and, for
// the simulator, what an Agent sends).
package usp

import (
	"errors"
	"fmt"
	"math/bits"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/duet-dm/duet/proto/usp/uspmsg"
	"github.com/duet-dm/duet/proto/usp/usprecord"
)

// Sentinels for errors.Is on what ParseRecord returns. Every error it
// returns is a *ParseError wrapping exactly one of them.
var (
	// ErrWrongRecipient: to_id is not our endpoint ID. Drop the record
	// silently and count it (R-E2E.1).
	ErrWrongRecipient = errors.New("usp: record not addressed to us")
	// ErrSessionContext: the record uses an E2E session context, which Duet
	// does not support (TR-369 "End to End Session Context").
	ErrSessionContext = errors.New("usp: session context records are not supported")
	// ErrInvalidRecord: the record cannot be parsed or breaks a rule of TR-369 "Handling of Records".
	ErrInvalidRecord = errors.New("usp: invalid record")
	// ErrInvalidMsg: the record is fine but the Msg it carries is not.
	ErrInvalidMsg = errors.New("usp: invalid message")
)

// ParseError says why a record was refused and what is known about it, so
// the caller can decide between dropping it and answering with an Error
// (R-MTP.5).
type ParseError struct {
	Err    error  // one of the sentinels above
	Code   uint32 // the USP error code that describes the fault (TR-369 "Error Codes")
	Reason string
	FromID string // when it could be read
	MsgID  string // when it could be read
	// Replyable is true when R-MTP.5 allows answering with a USP Error
	// carrying Code: from_id valid, to_id ours, the Msg is a Request and its
	// msg_id was read. The return path is the caller's to know.
	Replyable bool
}

func (e *ParseError) Error() string { return e.Err.Error() + ": " + e.Reason }
func (e *ParseError) Unwrap() error { return e.Err }

// RecordKind says which record_type a parsed record holds.
type RecordKind int

const (
	RecordMsg              RecordKind = iota + 1 // no_session_context with a Msg
	RecordWebSocketConnect                       // websocket_connect
	RecordMQTTConnect                            // mqtt_connect
	RecordSTOMPConnect                           // stomp_connect
	RecordUDSConnect                             // uds_connect
	RecordDisconnect                             // disconnect
)

func (k RecordKind) String() string {
	switch k {
	case RecordMsg:
		return "msg"
	case RecordWebSocketConnect:
		return "websocket_connect"
	case RecordMQTTConnect:
		return "mqtt_connect"
	case RecordSTOMPConnect:
		return "stomp_connect"
	case RecordUDSConnect:
		return "uds_connect"
	case RecordDisconnect:
		return "disconnect"
	}
	return fmt.Sprintf("RecordKind(%d)", int(k))
}

// Record is a received and validated USP record.
type Record struct {
	Kind    RecordKind
	Version string // "Major.Minor" as sent
	FromID  string
	ToID    string

	// RecordMQTTConnect
	MQTTVersion     usprecord.MQTTConnectRecord_MQTTVersion
	SubscribedTopic string
	// RecordSTOMPConnect
	SubscribedDestination string
	// RecordDisconnect
	DisconnectReason string
	DisconnectCode   uint32

	// RecordMsg
	Msg   *uspmsg.Msg
	MsgID string
	// MsgType is derived from the body, not copied from the header: when
	// they disagree the body wins (R-MSG.10) and HeaderMismatch is set.
	MsgType        uspmsg.Header_MsgType
	HeaderMismatch bool
}

// Field numbers used for the wire-level oneof checks below. protobuf-go
// keeps only the last member of a oneof it decodes, but a oneof holding
// several members must be refused (R-ENC.3..5), so it is checked on the
// wire.
const (
	recordTypeFirst = 7  // no_session_context
	recordTypeLast  = 13 // uds_connect
	msgBodyField    = 2
	bodyRequest     = 1
	bodyResponse    = 2
	bodyError       = 3
)

// ParseRecord decodes and validates a Record addressed to ourID and, for a
// no_session_context record, the Msg inside it. On failure the error is a
// *ParseError; with ErrWrongRecipient the returned Record still carries
// FromID and ToID for logging.
func ParseRecord(b []byte, ourID string) (*Record, error) {
	var rec usprecord.Record
	if err := proto.Unmarshal(b, &rec); err != nil {
		return nil, &ParseError{Err: ErrInvalidRecord, Code: ErrCodeRecordNotParsed, Reason: "not a protobuf Record: " + err.Error()}
	}
	out := &Record{Version: rec.GetVersion(), FromID: rec.GetFromId(), ToID: rec.GetToId()}
	bad := func(code uint32, format string, args ...any) (*Record, error) {
		return nil, &ParseError{Err: ErrInvalidRecord, Code: code, FromID: out.FromID, Reason: fmt.Sprintf(format, args...)}
	}
	if !validVersion(out.Version) {
		return bad(ErrCodeInvalidRecordValue, "version %q is not Major.Minor", out.Version)
	}
	if out.ToID != ourID {
		// R-E2E.1: not ours. Keep the addresses for the caller's log.
		return out, &ParseError{Err: ErrWrongRecipient, Code: ErrCodeInvalidRecordValue, FromID: out.FromID,
			Reason: fmt.Sprintf("to_id %q is not %q", out.ToID, ourID)}
	}
	if out.FromID == "" {
		return bad(ErrCodeInvalidRecordValue, "from_id is empty")
	}
	mask, err := fieldMask(b)
	if err != nil {
		return bad(ErrCodeRecordNotParsed, "%v", err)
	}
	if n := bits.OnesCount64(mask & bitRange(recordTypeFirst, recordTypeLast)); n != 1 {
		if n == 0 {
			return bad(ErrCodeInvalidRecordValue, "record_type is missing or unknown")
		}
		return bad(ErrCodeInvalidRecordValue, "record_type holds %d members, want exactly one", n)
	}
	if _, ok := rec.GetRecordType().(*usprecord.Record_SessionContext); !ok && rec.GetPayloadSecurity() != usprecord.Record_PLAINTEXT {
		// R-E2E.41: TLS12 only inside a session context.
		return bad(ErrCodeSecureSessionUnsupported, "payload_security %v outside a session context", rec.GetPayloadSecurity())
	}
	switch rt := rec.GetRecordType().(type) {
	case *usprecord.Record_SessionContext:
		return nil, &ParseError{Err: ErrSessionContext, Code: ErrCodeSessionNotAllowed, FromID: out.FromID, Reason: "session_context record"}
	case *usprecord.Record_WebsocketConnect:
		out.Kind = RecordWebSocketConnect
	case *usprecord.Record_UdsConnect:
		out.Kind = RecordUDSConnect
	case *usprecord.Record_MqttConnect:
		v := rt.MqttConnect.GetVersion()
		if _, known := usprecord.MQTTConnectRecord_MQTTVersion_name[int32(v)]; !known {
			return bad(ErrCodeInvalidRecordValue, "unknown MQTT version %d", v) // R-ENC.2
		}
		out.Kind = RecordMQTTConnect
		out.MQTTVersion = v
		out.SubscribedTopic = rt.MqttConnect.GetSubscribedTopic()
	case *usprecord.Record_StompConnect:
		if v := rt.StompConnect.GetVersion(); v != usprecord.STOMPConnectRecord_V1_2 {
			return bad(ErrCodeInvalidRecordValue, "unknown STOMP version %d", v)
		}
		out.Kind = RecordSTOMPConnect
		out.SubscribedDestination = rt.StompConnect.GetSubscribedDestination()
	case *usprecord.Record_Disconnect:
		out.Kind = RecordDisconnect
		out.DisconnectReason = rt.Disconnect.GetReason()
		out.DisconnectCode = rt.Disconnect.GetReasonCode()
	case *usprecord.Record_NoSessionContext:
		payload := rt.NoSessionContext.GetPayload()
		if len(payload) == 0 {
			return bad(ErrCodeInvalidRecordValue, "no_session_context payload is empty") // R-E2E.26
		}
		msg, mt, mismatch, err := parseMsg(payload)
		if err != nil {
			err.FromID = out.FromID
			return nil, err
		}
		out.Kind = RecordMsg
		out.Msg = msg
		out.MsgID = msg.GetHeader().GetMsgId()
		out.MsgType = mt
		out.HeaderMismatch = mismatch
	}
	return out, nil
}

// ParseMsg decodes and validates a serialized usp.Msg on its own (header
// msg_id present, exactly one body member, exactly one Request/Response
// member) and returns it with its body-derived type (R-MSG.10). Errors are
// *ParseError wrapping ErrInvalidMsg.
func ParseMsg(b []byte) (*uspmsg.Msg, uspmsg.Header_MsgType, error) {
	msg, mt, _, err := parseMsg(b)
	if err != nil {
		return nil, 0, err
	}
	return msg, mt, nil
}

func parseMsg(b []byte) (*uspmsg.Msg, uspmsg.Header_MsgType, bool, *ParseError) {
	var msg uspmsg.Msg
	if err := proto.Unmarshal(b, &msg); err != nil {
		return nil, 0, false, &ParseError{Err: ErrInvalidMsg, Code: ErrCodeInvalidArguments, Reason: "payload is not a protobuf Msg: " + err.Error()}
	}
	msgID := msg.GetHeader().GetMsgId()
	_, isReq := msg.GetBody().GetMsgBody().(*uspmsg.Body_Request)
	bad := func(code uint32, format string, args ...any) (*uspmsg.Msg, uspmsg.Header_MsgType, bool, *ParseError) {
		return nil, 0, false, &ParseError{Err: ErrInvalidMsg, Code: code, MsgID: msgID,
			Replyable: isReq && msgID != "", Reason: fmt.Sprintf(format, args...)}
	}
	if msg.GetHeader() == nil {
		return bad(ErrCodeInvalidArguments, "header is missing")
	}
	if msgID == "" {
		return bad(ErrCodeInvalidArguments, "header msg_id is empty")
	}
	if msg.GetBody() == nil {
		return bad(ErrCodeInvalidArguments, "body is missing")
	}
	bodyMask, err := nestedMask(b, msgBodyField)
	if err != nil {
		return bad(ErrCodeInvalidArguments, "%v", err)
	}
	if n := bits.OnesCount64(bodyMask & bitRange(bodyRequest, bodyError)); n != 1 {
		// Zero known members (or only unknown ones) or several (R-ENC.3..5).
		if n > 1 {
			isReq = false // which member is the real one is unknowable
		}
		return bad(ErrCodeInvalidArguments, "body msg_body holds %d members, want exactly one", n)
	}
	var mt uspmsg.Header_MsgType
	switch body := msg.GetBody().GetMsgBody().(type) {
	case *uspmsg.Body_Request:
		mask, err := nestedMask(b, msgBodyField, bodyRequest)
		if err != nil {
			return bad(ErrCodeInvalidArguments, "%v", err)
		}
		if n := bits.OnesCount64(mask &^ 1); n > 1 {
			return bad(ErrCodeInvalidArguments, "request req_type holds %d members, want exactly one", n)
		}
		if body.Request.GetReqType() == nil {
			if mask&^1 != 0 {
				// A member from a newer schema: fail softly (TR-369 usp-record-1-4.proto, Record).
				return bad(ErrCodeMessageNotSupported, "request type not supported")
			}
			return bad(ErrCodeInvalidArguments, "request req_type is empty")
		}
		mt = RequestType(body.Request)
	case *uspmsg.Body_Response:
		mask, err := nestedMask(b, msgBodyField, bodyResponse)
		if err != nil {
			return bad(ErrCodeInvalidArguments, "%v", err)
		}
		if n := bits.OnesCount64(mask &^ 1); n > 1 {
			return bad(ErrCodeInvalidArguments, "response resp_type holds %d members, want exactly one", n)
		}
		if body.Response.GetRespType() == nil {
			return bad(ErrCodeInvalidArguments, "response resp_type is empty or unknown")
		}
		mt = ResponseType(body.Response)
	case *uspmsg.Body_Error:
		mt = uspmsg.Header_ERROR
	}
	return &msg, mt, mt != msg.GetHeader().GetMsgType(), nil
}

// RequestType returns the MsgType matching the member set in req, or ERROR
// when none is.
func RequestType(req *uspmsg.Request) uspmsg.Header_MsgType {
	switch req.GetReqType().(type) {
	case *uspmsg.Request_Get:
		return uspmsg.Header_GET
	case *uspmsg.Request_GetSupportedDm:
		return uspmsg.Header_GET_SUPPORTED_DM
	case *uspmsg.Request_GetInstances:
		return uspmsg.Header_GET_INSTANCES
	case *uspmsg.Request_Set:
		return uspmsg.Header_SET
	case *uspmsg.Request_Add:
		return uspmsg.Header_ADD
	case *uspmsg.Request_Delete:
		return uspmsg.Header_DELETE
	case *uspmsg.Request_Operate:
		return uspmsg.Header_OPERATE
	case *uspmsg.Request_Notify:
		return uspmsg.Header_NOTIFY
	case *uspmsg.Request_GetSupportedProtocol:
		return uspmsg.Header_GET_SUPPORTED_PROTO
	case *uspmsg.Request_Register:
		return uspmsg.Header_REGISTER
	case *uspmsg.Request_Deregister:
		return uspmsg.Header_DEREGISTER
	}
	return uspmsg.Header_ERROR
}

// ResponseType returns the MsgType matching the member set in resp, or
// ERROR when none is.
func ResponseType(resp *uspmsg.Response) uspmsg.Header_MsgType {
	switch resp.GetRespType().(type) {
	case *uspmsg.Response_GetResp:
		return uspmsg.Header_GET_RESP
	case *uspmsg.Response_GetSupportedDmResp:
		return uspmsg.Header_GET_SUPPORTED_DM_RESP
	case *uspmsg.Response_GetInstancesResp:
		return uspmsg.Header_GET_INSTANCES_RESP
	case *uspmsg.Response_SetResp:
		return uspmsg.Header_SET_RESP
	case *uspmsg.Response_AddResp:
		return uspmsg.Header_ADD_RESP
	case *uspmsg.Response_DeleteResp:
		return uspmsg.Header_DELETE_RESP
	case *uspmsg.Response_OperateResp:
		return uspmsg.Header_OPERATE_RESP
	case *uspmsg.Response_NotifyResp:
		return uspmsg.Header_NOTIFY_RESP
	case *uspmsg.Response_GetSupportedProtocolResp:
		return uspmsg.Header_GET_SUPPORTED_PROTO_RESP
	case *uspmsg.Response_RegisterResp:
		return uspmsg.Header_REGISTER_RESP
	case *uspmsg.Response_DeregisterResp:
		return uspmsg.Header_DEREGISTER_RESP
	}
	return uspmsg.Header_ERROR
}

// validVersion accepts "Major.Minor" with decimal digits on both sides.
func validVersion(v string) bool {
	major, minor, ok := strings.Cut(v, ".")
	return ok && isDigits(major) && isDigits(minor)
}

func isDigits(s string) bool {
	if s == "" || len(s) > 9 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func bitRange(lo, hi int) uint64 {
	var m uint64
	for i := lo; i <= hi; i++ {
		m |= 1 << i
	}
	return m
}

// fieldMask returns a bit per field number (below 64) present at the top
// level of the encoded message b.
func fieldMask(b []byte) (uint64, error) {
	var mask uint64
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, protowire.ParseError(n)
		}
		b = b[n:]
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return 0, protowire.ParseError(m)
		}
		if num < 64 {
			mask |= 1 << num
		}
		b = b[m:]
	}
	return mask, nil
}

// nestedMask follows path (message-typed field numbers; repeated
// occurrences merge, as protobuf does) and returns the union of the field
// masks found at its end.
func nestedMask(b []byte, path ...protowire.Number) (uint64, error) {
	if len(path) == 0 {
		return fieldMask(b)
	}
	var mask uint64
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, protowire.ParseError(n)
		}
		b = b[n:]
		if num == path[0] && typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return 0, protowire.ParseError(m)
			}
			sub, err := nestedMask(v, path[1:]...)
			if err != nil {
				return 0, err
			}
			mask |= sub
			b = b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return 0, protowire.ParseError(m)
		}
		b = b[m:]
	}
	return mask, nil
}
