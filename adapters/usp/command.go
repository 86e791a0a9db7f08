package usp

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/devicemodel"
	pkgusp "github.com/duet-dm/duet/pkg/usp"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
	"github.com/duet-dm/duet/proto/usp/uspmsg"
)

// request sends one USP request to eid and waits for the Response or Error
// with the same msg_id. Errors:
//   - CodeUnavailable: the agent is not connected to this process, the MTP
//     refused the record, or the agent went away while we waited;
//   - CodeTimeout: no answer before ctx (or RequestTimeout) ended;
//   - CodeResourcesExceeded: MaxInFlightPerAgent slots stayed busy until
//     the deadline.
//
// An Error message from the agent is returned as a *uspmsg.Msg, not as a Go
// error: callers map it.
func (e *Endpoint) request(ctx context.Context, eid string, typ uspmsg.Header_MsgType, req *uspmsg.Request) (*uspmsg.Msg, error) {
	label := strings.ToLower(typ.String())
	start := time.Now()
	msg, err := e.doRequest(ctx, eid, typ, req)
	outcome := "ok"
	switch {
	case err != nil:
		switch devicemodel.ErrorCode(err) {
		case devicemodel.CodeTimeout:
			outcome = "timeout"
		case devicemodel.CodeUnavailable:
			outcome = "unavailable"
		default:
			outcome = "failed"
		}
	case msg.GetBody().GetError() != nil:
		outcome = "error"
	}
	metricRequests.WithLabelValues(label, outcome).Inc()
	metricRequestSeconds.WithLabelValues(label).Observe(time.Since(start).Seconds())
	return msg, err
}

func (e *Endpoint) doRequest(ctx context.Context, eid string, typ uspmsg.Header_MsgType, req *uspmsg.Request) (*uspmsg.Msg, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, e.opts.RequestTimeout)
		defer cancel()
	}
	s := e.session(eid)
	if s == nil {
		return nil, devicemodel.Errorf(devicemodel.CodeUnavailable, "usp agent %s is not connected to adapter %s", eid, e.opts.AdapterID)
	}
	select {
	case s.sem <- struct{}{}:
		defer func() { <-s.sem }()
	case <-ctx.Done():
		return nil, devicemodel.Errorf(devicemodel.CodeResourcesExceeded, "%d requests to %s already in flight", cap(s.sem), eid)
	}
	msgID := e.nextMsgID(strings.ToLower(typ.String()))
	ch := make(chan reply, 1)
	e.mu.Lock()
	if s.gone {
		e.mu.Unlock()
		return nil, devicemodel.Errorf(devicemodel.CodeUnavailable, "usp agent %s disconnected", eid)
	}
	s.pending[msgID] = ch
	mtp, addr := s.mtp, s.addr
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		if s.pending != nil {
			delete(s.pending, msgID)
		}
		e.mu.Unlock()
	}()
	msg := &uspmsg.Msg{
		Header: &uspmsg.Header{MsgId: msgID, MsgType: typ},
		Body:   &uspmsg.Body{MsgBody: &uspmsg.Body_Request{Request: req}},
	}
	if addr.Reply == "" && addr.EndpointID == "" {
		return nil, devicemodel.Errorf(devicemodel.CodeUnavailable, "no return address known for usp agent %s", eid)
	}
	if err := e.send(ctx, mtp, addr, eid, msg); err != nil {
		return nil, devicemodel.Errorf(devicemodel.CodeUnavailable, "send to %s over %s: %v", eid, mtp.Name(), err)
	}
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, r.err
		}
		return r.msg, nil
	case <-ctx.Done():
		// A disconnect fails pending requests and then stops the command
		// subscription, which cancels ctx: both may be ready at once, and
		// the agent's fate is the truer answer.
		select {
		case r := <-ch:
			if r.err != nil {
				return nil, r.err
			}
			return r.msg, nil
		default:
		}
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, devicemodel.Errorf(devicemodel.CodeTimeout, "usp agent %s did not answer %s (msg_id %s) in time", eid, typ, msgID)
		}
		return nil, devicemodel.Errorf(devicemodel.CodeCancelled, "request %s to %s cancelled", msgID, eid)
	}
}

// respError converts an Error message into the domain error (7xxx kept in
// DeviceFault), via pkg/usp's table.
func respError(m *uspmsg.Msg) error {
	if e := m.GetBody().GetError(); e != nil {
		return pkgusp.DomainError(e)
	}
	return nil
}

func paramErr(path string, code uint32, msg string) *duetv1.ParamError {
	return &duetv1.ParamError{Path: path, Code: duetv1.ErrorCode(pkgusp.ErrToCode(code)), DeviceFault: code, Message: msg}
}

func unexpected(want string, m *uspmsg.Msg) error {
	return devicemodel.Errorf(devicemodel.CodeInternal, "agent answered %s with %T", want, m.GetBody().GetResponse().GetRespType())
}

// execute runs one bus command against an agent. It always returns a result.
func (e *Endpoint) execute(ctx context.Context, eid string, cmd *duetv1.Command) *duetv1.CommandResult {
	res, err := e.executeOp(ctx, eid, cmd)
	if err != nil {
		return bus.ResultError(cmd, err)
	}
	res.CommandId = cmd.GetId()
	res.DeviceId = cmd.GetDeviceId()
	return res
}

func (e *Endpoint) executeOp(ctx context.Context, eid string, cmd *duetv1.Command) (*duetv1.CommandResult, error) {
	switch op := cmd.GetOp().(type) {
	case *duetv1.Command_Get:
		r, err := e.get(ctx, eid, op.Get.GetPaths(), op.Get.GetMaxDepth())
		if err != nil {
			return nil, err
		}
		return &duetv1.CommandResult{Result: &duetv1.CommandResult_Get{Get: r}}, nil
	case *duetv1.Command_Set:
		return e.set(ctx, eid, op.Set)
	case *duetv1.Command_Add:
		return e.add(ctx, eid, op.Add)
	case *duetv1.Command_Delete:
		return e.delete(ctx, eid, op.Delete)
	case *duetv1.Command_Operate:
		return e.operate(ctx, eid, cmd.GetId(), op.Operate)
	case *duetv1.Command_GetSupportedDm:
		return e.getSupportedDM(ctx, eid, op.GetSupportedDm)
	case *duetv1.Command_GetInstances:
		return e.getInstances(ctx, eid, op.GetInstances)
	case *duetv1.Command_GetSupportedProtocol:
		v := op.GetSupportedProtocol.GetControllerVersions()
		if v == "" {
			v = "1.0,1.1,1.2,1.3"
		}
		m, err := e.request(ctx, eid, uspmsg.Header_GET_SUPPORTED_PROTO, &uspmsg.Request{ReqType: &uspmsg.Request_GetSupportedProtocol{
			GetSupportedProtocol: &uspmsg.GetSupportedProtocol{ControllerSupportedProtocolVersions: v}}})
		if err != nil {
			return nil, err
		}
		if err := respError(m); err != nil {
			return nil, err
		}
		r := m.GetBody().GetResponse().GetGetSupportedProtocolResp()
		if r == nil {
			return nil, unexpected("GetSupportedProtocol", m)
		}
		return &duetv1.CommandResult{Result: &duetv1.CommandResult_GetSupportedProtocol{GetSupportedProtocol: &duetv1.GetSupportedProtocolResult{AgentVersions: r.GetAgentSupportedProtocolVersions()}}}, nil
	case nil:
		return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "command without operation")
	default:
		// Attributes map to Subscription objects, CWMP RPCs and connection
		// requests have no USP meaning; not implemented by this adapter.
		return nil, devicemodel.Errorf(devicemodel.CodeUnsupported, "%T is not supported over USP", op)
	}
}

func (e *Endpoint) get(ctx context.Context, eid string, paths []string, depth uint32) (*duetv1.GetResult, error) {
	if len(paths) == 0 {
		return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "get without paths")
	}
	m, err := e.request(ctx, eid, uspmsg.Header_GET, &uspmsg.Request{ReqType: &uspmsg.Request_Get{Get: &uspmsg.Get{ParamPaths: paths, MaxDepth: depth}}})
	if err != nil {
		return nil, err
	}
	if err := respError(m); err != nil {
		return nil, err
	}
	r := m.GetBody().GetResponse().GetGetResp()
	if r == nil {
		return nil, unexpected("Get", m)
	}
	out := &duetv1.GetResult{}
	for _, rp := range r.GetReqPathResults() {
		if rp.GetErrCode() != 0 {
			out.Errors = append(out.Errors, paramErr(rp.GetRequestedPath(), rp.GetErrCode(), rp.GetErrMsg()))
			continue
		}
		for _, res := range rp.GetResolvedPathResults() {
			for _, k := range slices.Sorted(maps.Keys(res.GetResultParams())) {
				out.Params = append(out.Params, &duetv1.Parameter{Path: res.GetResolvedPath() + k, Value: res.GetResultParams()[k]})
			}
		}
	}
	return out, nil
}

func (e *Endpoint) set(ctx context.Context, eid string, req *duetv1.SetRequest) (*duetv1.CommandResult, error) {
	if len(req.GetParams()) == 0 {
		return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "set without parameters")
	}
	// One UpdateObject per object, in first-seen order (TR-369 "Set").
	var objs []*uspmsg.Set_UpdateObject
	byObj := map[string]*uspmsg.Set_UpdateObject{}
	for _, p := range req.GetParams() {
		obj, name := devicemodel.SplitParameter(p.GetPath())
		if obj == "" || name == "" {
			return nil, devicemodel.Errorf(devicemodel.CodeInvalidPath, "set: %q is not a parameter path", p.GetPath())
		}
		u := byObj[obj]
		if u == nil {
			u = &uspmsg.Set_UpdateObject{ObjPath: obj}
			byObj[obj] = u
			objs = append(objs, u)
		}
		// required=true: a failing parameter fails its object, like an
		// atomic CWMP SetParameterValues; allow_partial decides whether
		// other objects still apply (TR-369 "allow_partial and required").
		u.ParamSettings = append(u.ParamSettings, &uspmsg.Set_UpdateParamSetting{Param: name, Value: p.GetValue(), Required: true})
	}
	m, err := e.request(ctx, eid, uspmsg.Header_SET, &uspmsg.Request{ReqType: &uspmsg.Request_Set{Set: &uspmsg.Set{AllowPartial: req.GetAllowPartial(), UpdateObjs: objs}}})
	if err != nil {
		return nil, err
	}
	if err := respError(m); err != nil {
		return nil, err
	}
	r := m.GetBody().GetResponse().GetSetResp()
	if r == nil {
		return nil, unexpected("Set", m)
	}
	out := &duetv1.SetResult{}
	for _, o := range r.GetUpdatedObjResults() {
		st := o.GetOperStatus()
		if f := st.GetOperFailure(); f != nil {
			out.Errors = append(out.Errors, paramErr(o.GetRequestedPath(), f.GetErrCode(), f.GetErrMsg()))
			for _, inst := range f.GetUpdatedInstFailures() {
				for _, pe := range inst.GetParamErrs() {
					out.Errors = append(out.Errors, paramErr(inst.GetAffectedPath()+pe.GetParam(), pe.GetErrCode(), pe.GetErrMsg()))
				}
			}
			continue
		}
		for _, inst := range st.GetOperSuccess().GetUpdatedInstResults() {
			for _, k := range slices.Sorted(maps.Keys(inst.GetUpdatedParams())) {
				out.Updated = append(out.Updated, &duetv1.Parameter{Path: inst.GetAffectedPath() + k, Value: inst.GetUpdatedParams()[k]})
			}
			for _, pe := range inst.GetParamErrs() {
				out.Errors = append(out.Errors, paramErr(inst.GetAffectedPath()+pe.GetParam(), pe.GetErrCode(), pe.GetErrMsg()))
			}
		}
	}
	return &duetv1.CommandResult{Result: &duetv1.CommandResult_Set{Set: out}}, nil
}

func (e *Endpoint) add(ctx context.Context, eid string, req *duetv1.AddRequest) (*duetv1.CommandResult, error) {
	obj := req.GetObjectPath()
	if !strings.HasSuffix(obj, ".") {
		return nil, devicemodel.Errorf(devicemodel.CodeInvalidPath, "add: %q is not an object path (no trailing dot)", obj)
	}
	co := &uspmsg.Add_CreateObject{ObjPath: obj}
	for _, p := range req.GetParams() {
		name := strings.TrimPrefix(p.GetPath(), obj) // absolute or relative
		co.ParamSettings = append(co.ParamSettings, &uspmsg.Add_CreateParamSetting{Param: name, Value: p.GetValue(), Required: true})
	}
	m, err := e.request(ctx, eid, uspmsg.Header_ADD, &uspmsg.Request{ReqType: &uspmsg.Request_Add{Add: &uspmsg.Add{AllowPartial: req.GetAllowPartial(), CreateObjs: []*uspmsg.Add_CreateObject{co}}}})
	if err != nil {
		return nil, err
	}
	if err := respError(m); err != nil {
		return nil, err
	}
	r := m.GetBody().GetResponse().GetAddResp()
	if r == nil || len(r.GetCreatedObjResults()) == 0 {
		return nil, unexpected("Add", m)
	}
	st := r.GetCreatedObjResults()[0].GetOperStatus()
	if f := st.GetOperFailure(); f != nil {
		return nil, pkgusp.DomainError(&uspmsg.Error{ErrCode: f.GetErrCode(), ErrMsg: f.GetErrMsg()})
	}
	ok := st.GetOperSuccess()
	out := &duetv1.AddResult{InstancePath: ok.GetInstantiatedPath(), UniqueKeys: ok.GetUniqueKeys()}
	for _, pe := range ok.GetParamErrs() {
		out.ParamErrors = append(out.ParamErrors, paramErr(ok.GetInstantiatedPath()+pe.GetParam(), pe.GetErrCode(), pe.GetErrMsg()))
	}
	return &duetv1.CommandResult{Result: &duetv1.CommandResult_Add{Add: out}}, nil
}

func (e *Endpoint) delete(ctx context.Context, eid string, req *duetv1.DeleteRequest) (*duetv1.CommandResult, error) {
	if len(req.GetObjectPaths()) == 0 {
		return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "delete without paths")
	}
	m, err := e.request(ctx, eid, uspmsg.Header_DELETE, &uspmsg.Request{ReqType: &uspmsg.Request_Delete{Delete: &uspmsg.Delete{AllowPartial: req.GetAllowPartial(), ObjPaths: req.GetObjectPaths()}}})
	if err != nil {
		return nil, err
	}
	if err := respError(m); err != nil {
		return nil, err
	}
	r := m.GetBody().GetResponse().GetDeleteResp()
	if r == nil {
		return nil, unexpected("Delete", m)
	}
	out := &duetv1.DeleteResult{}
	for _, o := range r.GetDeletedObjResults() {
		st := o.GetOperStatus()
		if f := st.GetOperFailure(); f != nil {
			out.Errors = append(out.Errors, paramErr(o.GetRequestedPath(), f.GetErrCode(), f.GetErrMsg()))
			continue
		}
		out.DeletedPaths = append(out.DeletedPaths, st.GetOperSuccess().GetAffectedPaths()...)
		for _, ue := range st.GetOperSuccess().GetUnaffectedPathErrs() {
			out.Errors = append(out.Errors, paramErr(ue.GetUnaffectedPath(), ue.GetErrCode(), ue.GetErrMsg()))
		}
	}
	return &duetv1.CommandResult{Result: &duetv1.CommandResult_Delete{Delete: out}}, nil
}

// rebootCommands complete on the next Boot! carrying their CommandKey
// (TR-181 commands, docs/testing.md).
func isRebootCommand(c string) bool {
	return c == "Device.Reboot()" || c == "Device.FactoryReset()"
}

func (e *Endpoint) operate(ctx context.Context, eid, cmdID string, req *duetv1.OperateRequest) (*duetv1.CommandResult, error) {
	command := req.GetCommand()
	if !strings.HasSuffix(command, "()") {
		return nil, devicemodel.Errorf(devicemodel.CodeInvalidPath, "operate: %q is not a command path", command)
	}
	key := req.GetCommandKey()
	if key == "" {
		// A key is what ties Boot!/OperationComplete back to this command.
		key = cmdID
	}
	reboot := isRebootCommand(command)
	if reboot {
		// Tracked before the request leaves: the agent may reboot and
		// send its Boot! before its OperateResp is read here.
		e.trackReboot(eid, pendingReboot{command: command, key: key, started: time.Now()})
	}
	m, err := e.request(ctx, eid, uspmsg.Header_OPERATE, &uspmsg.Request{ReqType: &uspmsg.Request_Operate{Operate: &uspmsg.Operate{
		Command: command, CommandKey: key, SendResp: true, InputArgs: req.GetInputArgs()}}})
	if err != nil {
		// Kept tracked: the agent may be rebooting without having
		// answered (a bounded list; a later Boot! still completes it).
		return nil, err
	}
	if err := respError(m); err != nil {
		if reboot {
			e.takeReboot(eid, key) // refused: no Boot! will complete it
		}
		return nil, err
	}
	if f := m.GetBody().GetResponse().GetOperateResp().GetOperationResults(); reboot && len(f) > 0 && f[0].GetCmdFailure() != nil {
		e.takeReboot(eid, key)
	}
	r := m.GetBody().GetResponse().GetOperateResp()
	if r == nil || len(r.GetOperationResults()) == 0 {
		return nil, unexpected("Operate", m)
	}
	res := r.GetOperationResults()[0]
	out := &duetv1.OperateResult{ExecutedCommand: res.GetExecutedCommand()}
	if out.ExecutedCommand == "" {
		out.ExecutedCommand = command
	}
	switch rr := res.GetOperationResp().(type) {
	case *uspmsg.OperateResp_OperationResult_CmdFailure:
		return nil, &devicemodel.Error{Code: devicemodel.CodeCommandFailed, Message: rr.CmdFailure.GetErrMsg(), DeviceFault: rr.CmdFailure.GetErrCode()}
	case *uspmsg.OperateResp_OperationResult_ReqObjPath:
		out.Async = true
		out.RequestPath = rr.ReqObjPath
		e.trackAsync(eid, asyncOp{command: out.ExecutedCommand, key: key, requestPath: rr.ReqObjPath, started: time.Now()})
	case *uspmsg.OperateResp_OperationResult_ReqOutputArgs:
		out.OutputArgs = rr.ReqOutputArgs.GetOutputArgs()
	default:
		return nil, devicemodel.Errorf(devicemodel.CodeInternal, "OperateResp for %s without result", command)
	}
	return &duetv1.CommandResult{Result: &duetv1.CommandResult_Operate{Operate: out}}, nil
}

func (e *Endpoint) getInstances(ctx context.Context, eid string, req *duetv1.GetInstancesRequest) (*duetv1.CommandResult, error) {
	if len(req.GetPaths()) == 0 {
		return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "get_instances without paths")
	}
	m, err := e.request(ctx, eid, uspmsg.Header_GET_INSTANCES, &uspmsg.Request{ReqType: &uspmsg.Request_GetInstances{GetInstances: &uspmsg.GetInstances{ObjPaths: req.GetPaths(), FirstLevelOnly: req.GetFirstLevelOnly()}}})
	if err != nil {
		return nil, err
	}
	if err := respError(m); err != nil {
		return nil, err
	}
	r := m.GetBody().GetResponse().GetGetInstancesResp()
	if r == nil {
		return nil, unexpected("GetInstances", m)
	}
	out := &duetv1.GetInstancesResult{}
	for _, rp := range r.GetReqPathResults() {
		if rp.GetErrCode() != 0 {
			out.Errors = append(out.Errors, paramErr(rp.GetRequestedPath(), rp.GetErrCode(), rp.GetErrMsg()))
			continue
		}
		for _, ci := range rp.GetCurrInsts() {
			out.Instances = append(out.Instances, &duetv1.Instance{Path: ci.GetInstantiatedObjPath(), UniqueKeys: ci.GetUniqueKeys()})
		}
	}
	return &duetv1.CommandResult{Result: &duetv1.CommandResult_GetInstances{GetInstances: out}}, nil
}

var paramTypes = map[uspmsg.GetSupportedDMResp_ParamValueType]duetv1.ParamType{
	uspmsg.GetSupportedDMResp_PARAM_BASE_64:       duetv1.ParamType_PARAM_TYPE_BASE64,
	uspmsg.GetSupportedDMResp_PARAM_BOOLEAN:       duetv1.ParamType_PARAM_TYPE_BOOLEAN,
	uspmsg.GetSupportedDMResp_PARAM_DATE_TIME:     duetv1.ParamType_PARAM_TYPE_DATE_TIME,
	uspmsg.GetSupportedDMResp_PARAM_DECIMAL:       duetv1.ParamType_PARAM_TYPE_DECIMAL,
	uspmsg.GetSupportedDMResp_PARAM_HEX_BINARY:    duetv1.ParamType_PARAM_TYPE_HEX_BINARY,
	uspmsg.GetSupportedDMResp_PARAM_INT:           duetv1.ParamType_PARAM_TYPE_INT,
	uspmsg.GetSupportedDMResp_PARAM_LONG:          duetv1.ParamType_PARAM_TYPE_LONG,
	uspmsg.GetSupportedDMResp_PARAM_STRING:        duetv1.ParamType_PARAM_TYPE_STRING,
	uspmsg.GetSupportedDMResp_PARAM_UNSIGNED_INT:  duetv1.ParamType_PARAM_TYPE_UNSIGNED_INT,
	uspmsg.GetSupportedDMResp_PARAM_UNSIGNED_LONG: duetv1.ParamType_PARAM_TYPE_UNSIGNED_LONG,
}

var objAccess = map[uspmsg.GetSupportedDMResp_ObjAccessType]string{
	uspmsg.GetSupportedDMResp_OBJ_READ_ONLY:   "read_only",
	uspmsg.GetSupportedDMResp_OBJ_ADD_DELETE:  "add_delete",
	uspmsg.GetSupportedDMResp_OBJ_ADD_ONLY:    "add_only",
	uspmsg.GetSupportedDMResp_OBJ_DELETE_ONLY: "delete_only",
}

var paramAccess = map[uspmsg.GetSupportedDMResp_ParamAccessType]duetv1.Writability{
	uspmsg.GetSupportedDMResp_PARAM_READ_ONLY:  duetv1.Writability_WRITABILITY_READ_ONLY,
	uspmsg.GetSupportedDMResp_PARAM_READ_WRITE: duetv1.Writability_WRITABILITY_READ_WRITE,
	uspmsg.GetSupportedDMResp_PARAM_WRITE_ONLY: duetv1.Writability_WRITABILITY_WRITE_ONLY,
}

func (e *Endpoint) getSupportedDM(ctx context.Context, eid string, req *duetv1.GetSupportedDMRequest) (*duetv1.CommandResult, error) {
	if len(req.GetPaths()) == 0 {
		return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "get_supported_dm without paths")
	}
	m, err := e.request(ctx, eid, uspmsg.Header_GET_SUPPORTED_DM, &uspmsg.Request{ReqType: &uspmsg.Request_GetSupportedDm{GetSupportedDm: &uspmsg.GetSupportedDM{
		ObjPaths: req.GetPaths(), FirstLevelOnly: req.GetFirstLevelOnly(), ReturnCommands: req.GetReturnCommands(),
		ReturnEvents: req.GetReturnEvents(), ReturnParams: req.GetReturnParams(), ReturnUniqueKeySets: req.GetReturnUniqueKeySets()}}})
	if err != nil {
		return nil, err
	}
	if err := respError(m); err != nil {
		return nil, err
	}
	r := m.GetBody().GetResponse().GetGetSupportedDmResp()
	if r == nil {
		return nil, unexpected("GetSupportedDM", m)
	}
	out := &duetv1.GetSupportedDMResult{}
	for _, ro := range r.GetReqObjResults() {
		if ro.GetErrCode() != 0 {
			out.Errors = append(out.Errors, paramErr(ro.GetReqObjPath(), ro.GetErrCode(), ro.GetErrMsg()))
			continue
		}
		for _, so := range ro.GetSupportedObjs() {
			o := &duetv1.SupportedObject{Path: so.GetSupportedObjPath(), MultiInstance: so.GetIsMultiInstance(), Access: objAccess[so.GetAccess()]}
			for _, p := range so.GetSupportedParams() {
				o.Params = append(o.Params, &duetv1.SupportedParam{Name: p.GetParamName(), Access: paramAccess[p.GetAccess()],
					Type: paramTypes[p.GetValueType()], ValueChangeAllowed: p.GetValueChange() != uspmsg.GetSupportedDMResp_VALUE_CHANGE_WILL_IGNORE})
			}
			for _, c := range so.GetSupportedCommands() {
				o.Commands = append(o.Commands, &duetv1.SupportedCommand{Name: c.GetCommandName(), InputArgs: c.GetInputArgNames(),
					OutputArgs: c.GetOutputArgNames(), Async: c.GetCommandType() == uspmsg.GetSupportedDMResp_CMD_ASYNC})
			}
			for _, ev := range so.GetSupportedEvents() {
				o.Events = append(o.Events, &duetv1.SupportedEvent{Name: ev.GetEventName(), Args: ev.GetArgNames()})
			}
			if ks := so.GetUniqueKeySets(); len(ks) > 0 {
				o.UniqueKeys = ks[0].GetKeyNames()
			}
			out.Objects = append(out.Objects, o)
		}
	}
	return &duetv1.CommandResult{Result: &duetv1.CommandResult_GetSupportedDm{GetSupportedDm: out}}, nil
}
