// Package testagent is a small USP agent used by the adapter's tests and
// benchmarks until pkg/sim/agent is available: a tiny TR-181 data model that
// answers every Controller->Agent message type, a Subscription table, and
// helpers to send Notify messages. The wire is plugged in by the test (a
// real MQTT/STOMP/WebSocket client or a direct call).
package testagent

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/duet-dm/duet/pkg/devicemodel"
	pkgusp "github.com/duet-dm/duet/pkg/usp"
	"github.com/duet-dm/duet/proto/usp/uspmsg"
	"github.com/duet-dm/duet/proto/usp/usprecord"
)

// Agent is a simulated USP agent.
type Agent struct {
	ID           string
	ControllerID string
	// Send carries a record to the controller. Set before use.
	Send func(record []byte) error
	// Silent makes the agent ignore requests (never answer).
	Silent atomic.Bool
	// Delay, when set, answers each request after Delay(msg) in its own
	// goroutine, so answers can overtake each other.
	Delay func(*uspmsg.Msg) time.Duration

	mu        sync.Mutex
	params    map[string]string
	nextInst  map[string]int
	requests  map[string]int // by type
	notifResp []*uspmsg.Msg
	errors    []*uspmsg.Msg
	reqSeen   chan string // msg_ids of requests received, for tests
	wg        sync.WaitGroup
	seq       atomic.Int64
}

// New builds an agent with a baseline data model.
func New(id, controllerID string) *Agent {
	a := &Agent{ID: id, ControllerID: controllerID, nextInst: map[string]int{}, requests: map[string]int{}, reqSeen: make(chan string, 1024)}
	a.params = map[string]string{
		"Device.DeviceInfo.Manufacturer":    "Duet Test",
		"Device.DeviceInfo.ManufacturerOUI": "00D09E",
		"Device.DeviceInfo.ModelName":       "TA-1",
		"Device.DeviceInfo.ProductClass":    "TestAgent",
		"Device.DeviceInfo.SerialNumber":    "SN-" + id,
		"Device.DeviceInfo.SoftwareVersion": "1.0.0",
		"Device.DeviceInfo.HardwareVersion": "hw1",
		"Device.IP.Interface.1.Enable":      "true",
		"Device.IP.Interface.1.Alias":       "wan",
	}
	a.nextInst["Device.IP.Interface."] = 2
	a.nextInst["Device.LocalAgent.Subscription."] = 1
	return a
}

// Param returns a parameter value.
func (a *Agent) Param(path string) (string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	v, ok := a.params[path]
	return v, ok
}

// Requests returns how many requests of a type (e.g. "ADD") arrived.
func (a *Agent) Requests(typ string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.requests[typ]
}

// RequestSeen delivers the msg_id of each request received.
func (a *Agent) RequestSeen() <-chan string { return a.reqSeen }

// NotifyResps returns the NotifyResp messages received so far.
func (a *Agent) NotifyResps() []*uspmsg.Msg {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.notifResp)
}

// Errors returns the Error messages received so far.
func (a *Agent) Errors() []*uspmsg.Msg {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.errors)
}

// Subscriptions returns the IDs in Device.LocalAgent.Subscription.
func (a *Agent) Subscriptions() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var ids []string
	for k, v := range a.params {
		if strings.HasPrefix(k, "Device.LocalAgent.Subscription.") && strings.HasSuffix(k, ".ID") {
			ids = append(ids, v)
		}
	}
	slices.Sort(ids)
	return ids
}

// Wait waits for delayed answers to be sent.
func (a *Agent) Wait() { a.wg.Wait() }

// SendMsg wraps msg in a record to the controller and sends it.
func (a *Agent) SendMsg(msg *uspmsg.Msg) error {
	rec, err := pkgusp.MarshalMsgRecord(a.ID, a.ControllerID, msg)
	if err != nil {
		return err
	}
	return a.Send(rec)
}

// Notify sends a Notify request with msgID (generated when empty).
func (a *Agent) Notify(msgID string, n *uspmsg.Notify) (string, error) {
	if msgID == "" {
		msgID = fmt.Sprintf("notify-%s-%d", a.ID, a.seq.Add(1))
	}
	return msgID, a.SendMsg(pkgusp.NewRequest(msgID, &uspmsg.Request{ReqType: &uspmsg.Request_Notify{Notify: n}}))
}

// Boot sends Boot! with a CommandKey, as obuspa does after Reboot().
func (a *Agent) Boot(msgID, commandKey, cause string) (string, error) {
	return a.Notify(msgID, &uspmsg.Notify{SubscriptionId: "duet-boot", SendResp: true, Notification: &uspmsg.Notify_Event_{Event: &uspmsg.Notify_Event{
		ObjPath: "Device.", EventName: "Boot!", Params: map[string]string{"CommandKey": commandKey, "Cause": cause, "FirmwareUpdated": "false", "ParameterMap": "{}"}}}})
}

// Handle processes a record from the controller.
func (a *Agent) Handle(record []byte) {
	var rec usprecord.Record
	if err := proto.Unmarshal(record, &rec); err != nil || rec.GetToId() != a.ID {
		return
	}
	payload := rec.GetNoSessionContext().GetPayload()
	msg := &uspmsg.Msg{}
	if err := proto.Unmarshal(payload, msg); err != nil {
		return
	}
	switch msg.GetBody().GetMsgBody().(type) {
	case *uspmsg.Body_Response:
		a.mu.Lock()
		if msg.GetBody().GetResponse().GetNotifyResp() != nil {
			a.notifResp = append(a.notifResp, msg)
		}
		a.mu.Unlock()
		return
	case *uspmsg.Body_Error:
		a.mu.Lock()
		a.errors = append(a.errors, msg)
		a.mu.Unlock()
		return
	}
	req := msg.GetBody().GetRequest()
	typ := pkgusp.RequestType(req).String()
	a.mu.Lock()
	a.requests[typ]++
	a.mu.Unlock()
	select {
	case a.reqSeen <- msg.GetHeader().GetMsgId():
	default:
	}
	if a.Silent.Load() {
		return
	}
	answer := func() {
		resp := a.answer(msg.GetHeader().GetMsgId(), req)
		_ = a.SendMsg(resp)
	}
	if a.Delay != nil {
		d := a.Delay(msg)
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			time.Sleep(d) // simulated device latency, not test synchronisation
			answer()
		}()
		return
	}
	answer()
	// An async command completes right after its OperateResp.
	if op := req.GetOperate(); op != nil && op.GetCommand() == "Device.IP.Diagnostics.IPPing()" {
		_, _ = a.Notify("", &uspmsg.Notify{SubscriptionId: "duet-opc", SendResp: true, Notification: &uspmsg.Notify_OperComplete{OperComplete: &uspmsg.Notify_OperationComplete{
			ObjPath: "Device.IP.Diagnostics.", CommandName: "IPPing()", CommandKey: op.GetCommandKey(),
			OperationResp: &uspmsg.Notify_OperationComplete_ReqOutputArgs{ReqOutputArgs: &uspmsg.Notify_OperationComplete_OutputArgs{OutputArgs: map[string]string{"Status": "Complete", "SuccessCount": "3"}}}}}})
	}
}

func resp(id string, r *uspmsg.Response) *uspmsg.Msg { return pkgusp.NewResponse(id, r) }

func (a *Agent) answer(id string, req *uspmsg.Request) *uspmsg.Msg {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch r := req.GetReqType().(type) {
	case *uspmsg.Request_Get:
		out := &uspmsg.GetResp{}
		for _, p := range r.Get.GetParamPaths() {
			out.ReqPathResults = append(out.ReqPathResults, a.get(p, r.Get.GetMaxDepth()))
		}
		return resp(id, &uspmsg.Response{RespType: &uspmsg.Response_GetResp{GetResp: out}})
	case *uspmsg.Request_Set:
		out := &uspmsg.SetResp{}
		for _, o := range r.Set.GetUpdateObjs() {
			res := &uspmsg.SetResp_UpdatedObjectResult{RequestedPath: o.GetObjPath(), OperStatus: &uspmsg.SetResp_UpdatedObjectResult_OperationStatus{}}
			var bad []*uspmsg.SetResp_ParameterError
			for _, ps := range o.GetParamSettings() {
				full := o.GetObjPath() + ps.GetParam()
				if _, ok := a.params[full]; !ok {
					bad = append(bad, &uspmsg.SetResp_ParameterError{Param: ps.GetParam(), ErrCode: 7010, ErrMsg: "unsupported parameter"})
				} else if strings.HasPrefix(full, "Device.DeviceInfo.") {
					bad = append(bad, &uspmsg.SetResp_ParameterError{Param: ps.GetParam(), ErrCode: 7013, ErrMsg: "not writable"})
				}
			}
			if len(bad) > 0 {
				if !r.Set.GetAllowPartial() {
					return pkgusp.NewError(id, 7021, "required parameter failed", &uspmsg.Error_ParamError{ParamPath: o.GetObjPath() + bad[0].GetParam(), ErrCode: bad[0].GetErrCode(), ErrMsg: bad[0].GetErrMsg()})
				}
				res.OperStatus.OperStatus = &uspmsg.SetResp_UpdatedObjectResult_OperationStatus_OperFailure{OperFailure: &uspmsg.SetResp_UpdatedObjectResult_OperationStatus_OperationFailure{
					ErrCode: 7021, ErrMsg: "required parameter failed", UpdatedInstFailures: []*uspmsg.SetResp_UpdatedInstanceFailure{{AffectedPath: o.GetObjPath(), ParamErrs: bad}}}}
			} else {
				upd := map[string]string{}
				for _, ps := range o.GetParamSettings() {
					a.params[o.GetObjPath()+ps.GetParam()] = ps.GetValue()
					upd[ps.GetParam()] = ps.GetValue()
				}
				res.OperStatus.OperStatus = &uspmsg.SetResp_UpdatedObjectResult_OperationStatus_OperSuccess{OperSuccess: &uspmsg.SetResp_UpdatedObjectResult_OperationStatus_OperationSuccess{
					UpdatedInstResults: []*uspmsg.SetResp_UpdatedInstanceResult{{AffectedPath: o.GetObjPath(), UpdatedParams: upd}}}}
			}
			out.UpdatedObjResults = append(out.UpdatedObjResults, res)
		}
		return resp(id, &uspmsg.Response{RespType: &uspmsg.Response_SetResp{SetResp: out}})
	case *uspmsg.Request_Add:
		out := &uspmsg.AddResp{}
		for _, co := range r.Add.GetCreateObjs() {
			res := &uspmsg.AddResp_CreatedObjectResult{RequestedPath: co.GetObjPath(), OperStatus: &uspmsg.AddResp_CreatedObjectResult_OperationStatus{}}
			n, ok := a.nextInst[co.GetObjPath()]
			if !ok {
				if !r.Add.GetAllowPartial() {
					return pkgusp.NewError(id, 7019, "not a creatable object")
				}
				res.OperStatus.OperStatus = &uspmsg.AddResp_CreatedObjectResult_OperationStatus_OperFailure{OperFailure: &uspmsg.AddResp_CreatedObjectResult_OperationStatus_OperationFailure{ErrCode: 7019, ErrMsg: "not creatable"}}
			} else {
				a.nextInst[co.GetObjPath()] = n + 1
				inst := co.GetObjPath() + strconv.Itoa(n) + "."
				for _, ps := range co.GetParamSettings() {
					a.params[inst+ps.GetParam()] = ps.GetValue()
				}
				res.OperStatus.OperStatus = &uspmsg.AddResp_CreatedObjectResult_OperationStatus_OperSuccess{OperSuccess: &uspmsg.AddResp_CreatedObjectResult_OperationStatus_OperationSuccess{
					InstantiatedPath: inst, UniqueKeys: map[string]string{"Alias": "cpe-" + strconv.Itoa(n)}}}
			}
			out.CreatedObjResults = append(out.CreatedObjResults, res)
		}
		return resp(id, &uspmsg.Response{RespType: &uspmsg.Response_AddResp{AddResp: out}})
	case *uspmsg.Request_Delete:
		out := &uspmsg.DeleteResp{}
		for _, p := range r.Delete.GetObjPaths() {
			res := &uspmsg.DeleteResp_DeletedObjectResult{RequestedPath: p, OperStatus: &uspmsg.DeleteResp_DeletedObjectResult_OperationStatus{}}
			found := false
			for k := range a.params {
				if strings.HasPrefix(k, p) {
					delete(a.params, k)
					found = true
				}
			}
			if found {
				res.OperStatus.OperStatus = &uspmsg.DeleteResp_DeletedObjectResult_OperationStatus_OperSuccess{OperSuccess: &uspmsg.DeleteResp_DeletedObjectResult_OperationStatus_OperationSuccess{AffectedPaths: []string{p}}}
			} else {
				res.OperStatus.OperStatus = &uspmsg.DeleteResp_DeletedObjectResult_OperationStatus_OperFailure{OperFailure: &uspmsg.DeleteResp_DeletedObjectResult_OperationStatus_OperationFailure{ErrCode: 7016, ErrMsg: "no such object"}}
			}
			out.DeletedObjResults = append(out.DeletedObjResults, res)
		}
		return resp(id, &uspmsg.Response{RespType: &uspmsg.Response_DeleteResp{DeleteResp: out}})
	case *uspmsg.Request_Operate:
		res := &uspmsg.OperateResp_OperationResult{ExecutedCommand: r.Operate.GetCommand()}
		switch r.Operate.GetCommand() {
		case "Device.Reboot()", "Device.FactoryReset()":
			res.OperationResp = &uspmsg.OperateResp_OperationResult_ReqOutputArgs{ReqOutputArgs: &uspmsg.OperateResp_OperationResult_OutputArgs{}}
		case "Device.IP.Diagnostics.IPPing()":
			res.OperationResp = &uspmsg.OperateResp_OperationResult_ReqObjPath{ReqObjPath: "Device.LocalAgent.Request.1."}
		case "Device.SelfTest()":
			res.OperationResp = &uspmsg.OperateResp_OperationResult_ReqOutputArgs{ReqOutputArgs: &uspmsg.OperateResp_OperationResult_OutputArgs{OutputArgs: map[string]string{"Result": "ok", "Echo": r.Operate.GetInputArgs()["Echo"]}}}
		case "Device.Broken()":
			res.OperationResp = &uspmsg.OperateResp_OperationResult_CmdFailure{CmdFailure: &uspmsg.OperateResp_OperationResult_CommandFailure{ErrCode: 7022, ErrMsg: "broken"}}
		default:
			return pkgusp.NewError(id, 7026, "invalid path "+r.Operate.GetCommand())
		}
		return resp(id, &uspmsg.Response{RespType: &uspmsg.Response_OperateResp{OperateResp: &uspmsg.OperateResp{OperationResults: []*uspmsg.OperateResp_OperationResult{res}}}})
	case *uspmsg.Request_GetSupportedDm:
		out := &uspmsg.GetSupportedDMResp{}
		for _, p := range r.GetSupportedDm.GetObjPaths() {
			out.ReqObjResults = append(out.ReqObjResults, &uspmsg.GetSupportedDMResp_RequestedObjectResult{ReqObjPath: p, DataModelInstUri: "urn:broadband-forum-org:tr-181-2-19-0-usp",
				SupportedObjs: []*uspmsg.GetSupportedDMResp_SupportedObjectResult{{
					SupportedObjPath: "Device.IP.Interface.{i}.", Access: uspmsg.GetSupportedDMResp_OBJ_ADD_DELETE, IsMultiInstance: true,
					SupportedParams:   []*uspmsg.GetSupportedDMResp_SupportedParamResult{{ParamName: "Enable", Access: uspmsg.GetSupportedDMResp_PARAM_READ_WRITE, ValueType: uspmsg.GetSupportedDMResp_PARAM_BOOLEAN, ValueChange: uspmsg.GetSupportedDMResp_VALUE_CHANGE_ALLOWED}},
					SupportedCommands: []*uspmsg.GetSupportedDMResp_SupportedCommandResult{{CommandName: "Reset()", CommandType: uspmsg.GetSupportedDMResp_CMD_ASYNC, OutputArgNames: []string{"Status"}}},
					SupportedEvents:   []*uspmsg.GetSupportedDMResp_SupportedEventResult{{EventName: "Up!", ArgNames: []string{"When"}}},
					UniqueKeySets:     []*uspmsg.GetSupportedDMResp_SupportedUniqueKeySet{{KeyNames: []string{"Alias"}}},
				}}})
		}
		return resp(id, &uspmsg.Response{RespType: &uspmsg.Response_GetSupportedDmResp{GetSupportedDmResp: out}})
	case *uspmsg.Request_GetInstances:
		out := &uspmsg.GetInstancesResp{}
		for _, p := range r.GetInstances.GetObjPaths() {
			rr := &uspmsg.GetInstancesResp_RequestedPathResult{RequestedPath: p}
			seen := map[string]bool{}
			for k := range a.params {
				if rest, ok := strings.CutPrefix(k, p); ok {
					if i := strings.IndexByte(rest, '.'); i > 0 {
						if _, err := strconv.Atoi(rest[:i]); err == nil && !seen[rest[:i]] {
							seen[rest[:i]] = true
							rr.CurrInsts = append(rr.CurrInsts, &uspmsg.GetInstancesResp_CurrInstance{InstantiatedObjPath: p + rest[:i+1], UniqueKeys: map[string]string{"Alias": a.params[p+rest[:i+1]+"Alias"]}})
						}
					}
				}
			}
			if len(rr.CurrInsts) == 0 {
				rr.ErrCode, rr.ErrMsg = 7016, "no instances"
			}
			slices.SortFunc(rr.CurrInsts, func(x, y *uspmsg.GetInstancesResp_CurrInstance) int {
				return strings.Compare(x.GetInstantiatedObjPath(), y.GetInstantiatedObjPath())
			})
			out.ReqPathResults = append(out.ReqPathResults, rr)
		}
		return resp(id, &uspmsg.Response{RespType: &uspmsg.Response_GetInstancesResp{GetInstancesResp: out}})
	case *uspmsg.Request_GetSupportedProtocol:
		return resp(id, &uspmsg.Response{RespType: &uspmsg.Response_GetSupportedProtocolResp{GetSupportedProtocolResp: &uspmsg.GetSupportedProtocolResp{AgentSupportedProtocolVersions: "1.0,1.1,1.2,1.3"}}})
	}
	return pkgusp.NewError(id, 7001, "not supported")
}

// get resolves one Get path: grouped per object, full paths recomposed by
// the controller as resolved_path + key.
func (a *Agent) get(path string, depth uint32) *uspmsg.GetResp_RequestedPathResult {
	rr := &uspmsg.GetResp_RequestedPathResult{RequestedPath: path}
	byObj := map[string]map[string]string{}
	for k, v := range a.params {
		match := k == path
		if strings.HasSuffix(path, ".") && strings.HasPrefix(k, path) {
			rest := k[len(path):]
			match = depth == 0 || uint32(strings.Count(rest, ".")) < depth
		}
		if !match {
			continue
		}
		obj, name := devicemodel.SplitParameter(k)
		if byObj[obj] == nil {
			byObj[obj] = map[string]string{}
		}
		byObj[obj][name] = v
	}
	if len(byObj) == 0 && !strings.HasSuffix(path, "Subscription.") {
		rr.ErrCode, rr.ErrMsg = 7026, "invalid path"
		return rr
	}
	for _, obj := range slices.Sorted(maps.Keys(byObj)) {
		rr.ResolvedPathResults = append(rr.ResolvedPathResults, &uspmsg.GetResp_ResolvedPathResult{ResolvedPath: obj, ResultParams: byObj[obj]})
	}
	return rr
}
