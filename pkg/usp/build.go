package usp

import (
	"google.golang.org/protobuf/proto"

	"github.com/duet-dm/duet/proto/usp/uspmsg"
	"github.com/duet-dm/duet/proto/usp/usprecord"
)

// RecordVersion is the record version Duet sends. obuspa 11 reports "1.3"
// (TR-369 1.4.1); sending the same keeps older agents from treating our records
// as newer than they understand.
const RecordVersion = "1.3"

// ControllerSupportedVersions is what Duet sends in GetSupportedProtocol:
// the schemas in proto/usp are 1.4 and everything down to 1.0 is readable.
const ControllerSupportedVersions = "1.0,1.1,1.2,1.3,1.4"

// AgentSupportedVersions is what obuspa 11 answers to GetSupportedProtocol
// (TR-369 "GetSupportedProtocol"); the simulator uses it too.
const AgentSupportedVersions = "1.0,1.1,1.2,1.3"

// Deterministic so identical messages give identical bytes (test vectors,
// de-duplication by content).
var marshalOpts = proto.MarshalOptions{Deterministic: true}

// marshalRecord fills in the addressing of rec (version, to_id, from_id;
// payload_security stays PLAINTEXT) and serializes it.
func marshalRecord(fromID, toID string, rec *usprecord.Record) ([]byte, error) {
	rec.Version, rec.ToId, rec.FromId = RecordVersion, toID, fromID
	return marshalOpts.Marshal(rec)
}

// MarshalMsgRecord serializes msg and wraps it in a PLAINTEXT
// no_session_context Record from fromID to toID (TR-369, TR-369 "End to End Session Context": Duet
// sends no session context).
func MarshalMsgRecord(fromID, toID string, msg *uspmsg.Msg) ([]byte, error) {
	payload, err := marshalOpts.Marshal(msg)
	if err != nil {
		return nil, err
	}
	return marshalRecord(fromID, toID, &usprecord.Record{RecordType: &usprecord.Record_NoSessionContext{
		NoSessionContext: &usprecord.NoSessionContextRecord{Payload: payload},
	}})
}

// MarshalWebSocketConnect builds the WebSocketConnectRecord sent first on a
// new WebSocket connection (R-MTP.6).
func MarshalWebSocketConnect(fromID, toID string) ([]byte, error) {
	return marshalRecord(fromID, toID, &usprecord.Record{RecordType: &usprecord.Record_WebsocketConnect{WebsocketConnect: &usprecord.WebSocketConnectRecord{}}})
}

// MarshalMQTTConnect builds the MQTTConnectRecord carrying the sender's own
// reply topic (TR-369 usp-record-1-4.proto, record types).
func MarshalMQTTConnect(fromID, toID string, version usprecord.MQTTConnectRecord_MQTTVersion, subscribedTopic string) ([]byte, error) {
	return marshalRecord(fromID, toID, &usprecord.Record{RecordType: &usprecord.Record_MqttConnect{MqttConnect: &usprecord.MQTTConnectRecord{
		Version: version, SubscribedTopic: subscribedTopic,
	}}})
}

// MarshalSTOMPConnect builds the STOMPConnectRecord carrying the sender's
// own destination.
func MarshalSTOMPConnect(fromID, toID, subscribedDestination string) ([]byte, error) {
	return marshalRecord(fromID, toID, &usprecord.Record{RecordType: &usprecord.Record_StompConnect{StompConnect: &usprecord.STOMPConnectRecord{
		Version: usprecord.STOMPConnectRecord_V1_2, SubscribedDestination: subscribedDestination,
	}}})
}

// MarshalUDSConnect builds the UDSConnectRecord.
func MarshalUDSConnect(fromID, toID string) ([]byte, error) {
	return marshalRecord(fromID, toID, &usprecord.Record{RecordType: &usprecord.Record_UdsConnect{UdsConnect: &usprecord.UDSConnectRecord{}}})
}

// MarshalDisconnect builds a DisconnectRecord; code is 0 or one of the TR-369 record error codes.
// The receiver forgets any E2E session state (TR-369 "Handling of Records", R-MTP.5).
func MarshalDisconnect(fromID, toID, reason string, code uint32) ([]byte, error) {
	return marshalRecord(fromID, toID, &usprecord.Record{RecordType: &usprecord.Record_Disconnect{Disconnect: &usprecord.DisconnectRecord{
		Reason: reason, ReasonCode: code,
	}}})
}

// NewRequest wraps req in a Msg whose header type matches the request.
func NewRequest(msgID string, req *uspmsg.Request) *uspmsg.Msg {
	return &uspmsg.Msg{
		Header: &uspmsg.Header{MsgId: msgID, MsgType: RequestType(req)},
		Body:   &uspmsg.Body{MsgBody: &uspmsg.Body_Request{Request: req}},
	}
}

// NewResponse wraps resp in a Msg whose header type matches the response.
// msgID must be the request's (TR-369 "Message structure").
func NewResponse(msgID string, resp *uspmsg.Response) *uspmsg.Msg {
	return &uspmsg.Msg{
		Header: &uspmsg.Header{MsgId: msgID, MsgType: ResponseType(resp)},
		Body:   &uspmsg.Body{MsgBody: &uspmsg.Body_Response{Response: resp}},
	}
}

// NewError builds an Error message answering the request msgID.
func NewError(msgID string, code uint32, text string, paramErrs ...*uspmsg.Error_ParamError) *uspmsg.Msg {
	return &uspmsg.Msg{
		Header: &uspmsg.Header{MsgId: msgID, MsgType: uspmsg.Header_ERROR},
		Body: &uspmsg.Body{MsgBody: &uspmsg.Body_Error{Error: &uspmsg.Error{
			ErrCode: code, ErrMsg: text, ParamErrs: paramErrs,
		}}},
	}
}

// NewNotifyError builds the Error a Controller may send instead of a
// NotifyResp; only 7000–7006 are allowed there (TR-369 "Error Codes"), so any other
// code becomes 7000. Prefer NotifyResp: the Agent retries until it gets one
// (TR-369 "Notify").
func NewNotifyError(msgID string, code uint32, text string) *uspmsg.Msg {
	if code < ErrCodeMessageFailed || code > ErrCodePermissionDenied {
		code = ErrCodeMessageFailed
	}
	return NewError(msgID, code, text)
}

// NewNotifyResp acknowledges the Notify msgID. subscriptionID must be copied
// from the Notify (R-NOT.10).
func NewNotifyResp(msgID, subscriptionID string) *uspmsg.Msg {
	return NewResponse(msgID, &uspmsg.Response{RespType: &uspmsg.Response_NotifyResp{
		NotifyResp: &uspmsg.NotifyResp{SubscriptionId: subscriptionID},
	}})
}

// NewGet builds a Get. maxDepth 0 returns full subtrees (TR-369 "Get").
func NewGet(msgID string, paths []string, maxDepth uint32) *uspmsg.Msg {
	return NewRequest(msgID, &uspmsg.Request{ReqType: &uspmsg.Request_Get{Get: &uspmsg.Get{
		ParamPaths: paths, MaxDepth: maxDepth,
	}}})
}

// ParamSetting is one parameter of an Add or Set object.
type ParamSetting struct {
	Param    string // relative to the object path
	Value    string // TR-106 string form (TR-106 value encoding, as TR-369 "Messages" uses it)
	Required bool   // the object fails if this parameter fails (TR-369 "allow_partial and required")
}

// ObjectSettings is one object of an Add (a table path) or Set (an object,
// instance or search path).
type ObjectSettings struct {
	Path   string
	Params []ParamSetting
}

// NewSet builds a Set (TR-369 "Set", TR-369 "allow_partial and required").
func NewSet(msgID string, allowPartial bool, objs []ObjectSettings) *uspmsg.Msg {
	set := &uspmsg.Set{AllowPartial: allowPartial}
	for _, o := range objs {
		uo := &uspmsg.Set_UpdateObject{ObjPath: o.Path}
		for _, p := range o.Params {
			uo.ParamSettings = append(uo.ParamSettings, &uspmsg.Set_UpdateParamSetting{Param: p.Param, Value: p.Value, Required: p.Required})
		}
		set.UpdateObjs = append(set.UpdateObjs, uo)
	}
	return NewRequest(msgID, &uspmsg.Request{ReqType: &uspmsg.Request_Set{Set: set}})
}

// NewAdd builds an Add (TR-369 "Add", TR-369 "allow_partial and required").
func NewAdd(msgID string, allowPartial bool, objs []ObjectSettings) *uspmsg.Msg {
	add := &uspmsg.Add{AllowPartial: allowPartial}
	for _, o := range objs {
		co := &uspmsg.Add_CreateObject{ObjPath: o.Path}
		for _, p := range o.Params {
			co.ParamSettings = append(co.ParamSettings, &uspmsg.Add_CreateParamSetting{Param: p.Param, Value: p.Value, Required: p.Required})
		}
		add.CreateObjs = append(add.CreateObjs, co)
	}
	return NewRequest(msgID, &uspmsg.Request{ReqType: &uspmsg.Request_Add{Add: add}})
}

// NewDelete builds a Delete of instance or search paths (TR-369 "Delete").
func NewDelete(msgID string, allowPartial bool, paths []string) *uspmsg.Msg {
	return NewRequest(msgID, &uspmsg.Request{ReqType: &uspmsg.Request_Delete{Delete: &uspmsg.Delete{
		AllowPartial: allowPartial, ObjPaths: paths,
	}}})
}

// NewOperate builds an Operate (TR-369 "Operate"). commandKey comes back in
// OperationComplete, Request.{i}.CommandKey and Boot!.
func NewOperate(msgID, command, commandKey string, sendResp bool, args map[string]string) *uspmsg.Msg {
	return NewRequest(msgID, &uspmsg.Request{ReqType: &uspmsg.Request_Operate{Operate: &uspmsg.Operate{
		Command: command, CommandKey: commandKey, SendResp: sendResp, InputArgs: args,
	}}})
}

// GSDMOptions are the flags of a GetSupportedDM (TR-369 "GetSupportedDM").
type GSDMOptions struct {
	FirstLevelOnly      bool
	ReturnCommands      bool
	ReturnEvents        bool
	ReturnParams        bool
	ReturnUniqueKeySets bool
}

// NewGetSupportedDM builds a GetSupportedDM.
func NewGetSupportedDM(msgID string, paths []string, o GSDMOptions) *uspmsg.Msg {
	return NewRequest(msgID, &uspmsg.Request{ReqType: &uspmsg.Request_GetSupportedDm{GetSupportedDm: &uspmsg.GetSupportedDM{
		ObjPaths: paths, FirstLevelOnly: o.FirstLevelOnly, ReturnCommands: o.ReturnCommands,
		ReturnEvents: o.ReturnEvents, ReturnParams: o.ReturnParams, ReturnUniqueKeySets: o.ReturnUniqueKeySets,
	}}})
}

// NewGetInstances builds a GetInstances (TR-369 "GetInstances").
func NewGetInstances(msgID string, paths []string, firstLevelOnly bool) *uspmsg.Msg {
	return NewRequest(msgID, &uspmsg.Request{ReqType: &uspmsg.Request_GetInstances{GetInstances: &uspmsg.GetInstances{
		ObjPaths: paths, FirstLevelOnly: firstLevelOnly,
	}}})
}

// NewGetSupportedProtocol builds a GetSupportedProtocol; versions is a
// comma list such as ControllerSupportedVersions.
func NewGetSupportedProtocol(msgID, versions string) *uspmsg.Msg {
	return NewRequest(msgID, &uspmsg.Request{ReqType: &uspmsg.Request_GetSupportedProtocol{
		GetSupportedProtocol: &uspmsg.GetSupportedProtocol{ControllerSupportedProtocolVersions: versions},
	}})
}
