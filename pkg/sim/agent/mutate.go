package agent

import (
	"strconv"
	"strings"
	"time"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/usp"
	"github.com/duet-dm/duet/proto/usp/uspmsg"
)

// objFailure is why one obj_path of a Set/Add/Delete failed.
type objFailure struct {
	code      uint32
	msg       string
	paramErrs []*uspmsg.Error_ParamError // full paths, for an Error reply
	instFails []*uspmsg.SetResp_UpdatedInstanceFailure
}

func (f *objFailure) asError(id string) *uspmsg.Msg {
	return usp.NewError(id, f.code, f.msg, f.paramErrs...)
}

type paramErr struct {
	param string
	code  uint32
	msg   string
}

// applyParam writes one setting to m, or says why it cannot.
func applyParam(m *model, d *objDef, inst, param, value string, creating bool) *paramErr {
	pd := d.param(param)
	switch {
	case pd == nil:
		return &paramErr{param, usp.ErrCodeUnsupportedParameter, "unsupported parameter"}
	case !pd.writable && !creating:
		return &paramErr{param, usp.ErrCodeParamNotWritable, "parameter is not writable"}
	case !pd.writable:
		return &paramErr{param, usp.ErrCodeParamNotWritable, "parameter is read-only"}
	}
	v, code, msg := checkValue(pd, value)
	if code != 0 {
		return &paramErr{param, code, msg}
	}
	m.values[inst+param] = v
	return nil
}

// set implements Set with allow_partial/required as in TR-369 "allow_partial and required": each
// obj_path is all-or-nothing over the instances it matches (R-SET.2a); with
// allow_partial=false any failed obj_path makes the whole message an Error
// and nothing changes.
func (a *Agent) set(id string, s *uspmsg.Set) *uspmsg.Msg {
	before, work := a.m, a.m.clone()
	resp := &uspmsg.SetResp{}
	for _, uo := range s.GetUpdateObjs() {
		try := work.clone()
		results, fail := a.setObject(try, uo)
		r := &uspmsg.SetResp_UpdatedObjectResult{RequestedPath: uo.GetObjPath()}
		if fail != nil {
			if !s.GetAllowPartial() {
				return fail.asError(id)
			}
			r.OperStatus = &uspmsg.SetResp_UpdatedObjectResult_OperationStatus{OperStatus: &uspmsg.SetResp_UpdatedObjectResult_OperationStatus_OperFailure{
				OperFailure: &uspmsg.SetResp_UpdatedObjectResult_OperationStatus_OperationFailure{
					ErrCode: fail.code, ErrMsg: fail.msg, UpdatedInstFailures: fail.instFails,
				},
			}}
		} else {
			work = try
			r.OperStatus = &uspmsg.SetResp_UpdatedObjectResult_OperationStatus{OperStatus: &uspmsg.SetResp_UpdatedObjectResult_OperationStatus_OperSuccess{
				OperSuccess: &uspmsg.SetResp_UpdatedObjectResult_OperationStatus_OperationSuccess{UpdatedInstResults: results},
			}}
		}
		resp.UpdatedObjResults = append(resp.UpdatedObjResults, r)
	}
	a.commit(before, work)
	return usp.NewResponse(id, &uspmsg.Response{RespType: &uspmsg.Response_SetResp{SetResp: resp}})
}

func (a *Agent) setObject(m *model, uo *uspmsg.Set_UpdateObject) ([]*uspmsg.SetResp_UpdatedInstanceResult, *objFailure) {
	p := uo.GetObjPath()
	if !strings.HasSuffix(p, ".") || defOf(p) == nil {
		return nil, &objFailure{code: usp.ErrCodeInvalidPath, msg: "not an object in the supported data model",
			paramErrs: []*uspmsg.Error_ParamError{{ParamPath: p, ErrCode: usp.ErrCodeInvalidPath, ErrMsg: "invalid path"}}}
	}
	d := defOf(p)
	objs := m.resolveObjects(p)
	if len(objs) == 0 {
		if isSearch(p) {
			return nil, nil // a search matching nothing succeeds (R-MSG.4a)
		}
		return nil, &objFailure{code: usp.ErrCodeObjectDoesNotExist, msg: "object does not exist",
			paramErrs: []*uspmsg.Error_ParamError{{ParamPath: p, ErrCode: usp.ErrCodeObjectDoesNotExist, ErrMsg: "object does not exist"}}}
	}
	var results []*uspmsg.SetResp_UpdatedInstanceResult
	var fail *objFailure
	for _, inst := range objs {
		res := &uspmsg.SetResp_UpdatedInstanceResult{AffectedPath: inst, UpdatedParams: map[string]string{}}
		var reqErrs []*uspmsg.SetResp_ParameterError
		for _, ps := range uo.GetParamSettings() {
			if pe := applyParam(m, d, inst, ps.GetParam(), ps.GetValue(), false); pe != nil {
				e := &uspmsg.SetResp_ParameterError{Param: pe.param, ErrCode: pe.code, ErrMsg: pe.msg}
				if ps.GetRequired() {
					reqErrs = append(reqErrs, e)
				} else {
					res.ParamErrs = append(res.ParamErrs, e)
				}
				continue
			}
			res.UpdatedParams[ps.GetParam()] = m.values[inst+ps.GetParam()]
		}
		if keys, dup := duplicateKey(m, inst); dup {
			// Unique keys are always treated as required (TR-369 "Add").
			reqErrs = append(reqErrs, &uspmsg.SetResp_ParameterError{Param: keys, ErrCode: usp.ErrCodeDuplicateKey, ErrMsg: "duplicate unique key"})
		}
		if len(reqErrs) > 0 {
			if fail == nil {
				fail = &objFailure{code: usp.ErrCodeRequiredParamFailed, msg: "required parameter failed"}
			}
			fail.instFails = append(fail.instFails, &uspmsg.SetResp_UpdatedInstanceFailure{AffectedPath: inst, ParamErrs: reqErrs})
			for _, e := range reqErrs {
				fail.paramErrs = append(fail.paramErrs, &uspmsg.Error_ParamError{ParamPath: inst + e.Param, ErrCode: e.ErrCode, ErrMsg: e.ErrMsg})
			}
			continue
		}
		results = append(results, res)
	}
	if fail != nil {
		return nil, fail
	}
	return results, nil
}

// add implements Add (TR-369 "Add", TR-369 "allow_partial and required").
func (a *Agent) add(id string, ad *uspmsg.Add, from string) *uspmsg.Msg {
	before, work := a.m, a.m.clone()
	resp := &uspmsg.AddResp{}
	for _, co := range ad.GetCreateObjs() {
		try := work.clone()
		succ, fail := a.addObject(try, co, from)
		r := &uspmsg.AddResp_CreatedObjectResult{RequestedPath: co.GetObjPath()}
		if fail != nil {
			if !ad.GetAllowPartial() {
				return fail.asError(id)
			}
			r.OperStatus = &uspmsg.AddResp_CreatedObjectResult_OperationStatus{OperStatus: &uspmsg.AddResp_CreatedObjectResult_OperationStatus_OperFailure{
				OperFailure: &uspmsg.AddResp_CreatedObjectResult_OperationStatus_OperationFailure{ErrCode: fail.code, ErrMsg: fail.msg},
			}}
		} else {
			work = try
			r.OperStatus = &uspmsg.AddResp_CreatedObjectResult_OperationStatus{OperStatus: &uspmsg.AddResp_CreatedObjectResult_OperationStatus_OperSuccess{OperSuccess: succ}}
		}
		resp.CreatedObjResults = append(resp.CreatedObjResults, r)
	}
	a.commit(before, work)
	return usp.NewResponse(id, &uspmsg.Response{RespType: &uspmsg.Response_AddResp{AddResp: resp}})
}

func (a *Agent) addObject(m *model, co *uspmsg.Add_CreateObject, from string) (*uspmsg.AddResp_CreatedObjectResult_OperationStatus_OperationSuccess, *objFailure) {
	p := co.GetObjPath()
	failed := func(code uint32, msg string) (*uspmsg.AddResp_CreatedObjectResult_OperationStatus_OperationSuccess, *objFailure) {
		return nil, &objFailure{code: code, msg: msg, paramErrs: []*uspmsg.Error_ParamError{{ParamPath: p, ErrCode: code, ErrMsg: msg}}}
	}
	switch {
	case !strings.HasSuffix(p, "."):
		return failed(usp.ErrCodeInvalidPath, "not an object path")
	case defOf(p) != nil:
		return failed(usp.ErrCodeObjectNotTable, "object is not a table")
	case !isTablePath(p):
		return failed(usp.ErrCodeInvalidPath, "path not in the supported data model")
	}
	d := schema.byPath[supportedOf(p)+"{i}."]
	if !d.creatable {
		return failed(usp.ErrCodeObjectNotCreatable, "table is not creatable by a Controller")
	}
	segs := splitPath(p)
	parent := strings.Join(segs[:len(segs)-1], ".") + "."
	parents := m.resolveObjects(parent)
	if len(parents) != 1 {
		if len(parents) == 0 {
			return failed(usp.ErrCodeObjectDoesNotExist, "parent object does not exist")
		}
		return failed(usp.ErrCodeInvalidPath, "the simulator adds to one table per obj_path")
	}
	inst := m.addInstance(parents[0] + segs[len(segs)-1] + ".")
	succ := &uspmsg.AddResp_CreatedObjectResult_OperationStatus_OperationSuccess{InstantiatedPath: inst}
	var reqErrs []*uspmsg.Error_ParamError
	for _, ps := range co.GetParamSettings() {
		if pe := applyParam(m, d, inst, ps.GetParam(), ps.GetValue(), true); pe != nil {
			isKey := false
			for _, set := range d.keys {
				for _, k := range set {
					isKey = isKey || k == pe.param
				}
			}
			if ps.GetRequired() || isKey {
				reqErrs = append(reqErrs, &uspmsg.Error_ParamError{ParamPath: inst + pe.param, ErrCode: pe.code, ErrMsg: pe.msg})
			} else {
				succ.ParamErrs = append(succ.ParamErrs, &uspmsg.AddResp_ParameterError{Param: pe.param, ErrCode: pe.code, ErrMsg: pe.msg})
			}
		}
	}
	n := strings.TrimSuffix(inst[len(parents[0])+len(segs[len(segs)-1])+1:], ".")
	// Agent-assigned keys, as obuspa does: Alias and Subscription.ID get
	// "cpe-N", Recipient names the Controller that created the row.
	if d.param("Alias") != nil && m.values[inst+"Alias"] == "" {
		m.values[inst+"Alias"] = "cpe-" + n
	}
	if strings.HasPrefix(inst, "Device.LocalAgent.Subscription.") {
		if m.values[inst+"ID"] == "" {
			m.values[inst+"ID"] = "cpe-" + n
		}
		m.values[inst+"Recipient"] = a.controllerRef(m, from)
	}
	if keys, dup := duplicateKey(m, inst); dup {
		reqErrs = append(reqErrs, &uspmsg.Error_ParamError{ParamPath: inst + keys, ErrCode: usp.ErrCodeDuplicateKey, ErrMsg: "duplicate unique key"})
	}
	if len(reqErrs) > 0 {
		return nil, &objFailure{code: reqErrs[0].ErrCode, msg: "object creation failed: " + reqErrs[0].ErrMsg, paramErrs: reqErrs}
	}
	succ.UniqueKeys = a.uniqueKeys(m, inst)
	return succ, nil
}

// controllerRef is the reference to the Controller row whose EndpointID is
// eid, without the trailing dot (TR-106 value encoding, as TR-369 "Messages" uses it).
func (a *Agent) controllerRef(m *model, eid string) string {
	for _, c := range m.instances("Device.LocalAgent.Controller.") {
		if m.values[c+"EndpointID"] == eid {
			return strings.TrimSuffix(c, ".")
		}
	}
	return ""
}

// delete implements Delete (TR-369 "Delete", TR-369 "allow_partial and required").
func (a *Agent) delete(id string, dl *uspmsg.Delete) *uspmsg.Msg {
	before, work := a.m, a.m.clone()
	resp := &uspmsg.DeleteResp{}
	for _, p := range dl.GetObjPaths() {
		r := &uspmsg.DeleteResp_DeletedObjectResult{RequestedPath: p}
		code, msg := uint32(0), ""
		d := defOf(p)
		switch {
		case !strings.HasSuffix(p, ".") || (d == nil && !isTablePath(p)):
			code, msg = usp.ErrCodeInvalidPath, "path not in the supported data model"
		case d == nil || !d.multi || !isRowSegment(lastSeg(p)):
			code, msg = usp.ErrCodeObjectNotTable, "not an instance path"
		case !d.creatable:
			code, msg = usp.ErrCodeDeleteFailure, "rows of this table cannot be deleted"
		}
		var objs []string
		if code == 0 {
			objs = work.resolveObjects(p)
			if len(objs) == 0 && !isSearch(p) {
				code, msg = usp.ErrCodeObjectDoesNotExist, "object does not exist"
			}
		}
		if code != 0 {
			if !dl.GetAllowPartial() {
				return usp.NewError(id, code, msg, &uspmsg.Error_ParamError{ParamPath: p, ErrCode: code, ErrMsg: msg})
			}
			r.OperStatus = &uspmsg.DeleteResp_DeletedObjectResult_OperationStatus{OperStatus: &uspmsg.DeleteResp_DeletedObjectResult_OperationStatus_OperFailure{
				OperFailure: &uspmsg.DeleteResp_DeletedObjectResult_OperationStatus_OperationFailure{ErrCode: code, ErrMsg: msg},
			}}
			resp.DeletedObjResults = append(resp.DeletedObjResults, r)
			continue
		}
		for _, o := range objs {
			work.deleteObject(o)
		}
		// An empty affected_paths is success when a search matched nothing (R-DEL.2a).
		r.OperStatus = &uspmsg.DeleteResp_DeletedObjectResult_OperationStatus{OperStatus: &uspmsg.DeleteResp_DeletedObjectResult_OperationStatus_OperSuccess{
			OperSuccess: &uspmsg.DeleteResp_DeletedObjectResult_OperationStatus_OperationSuccess{AffectedPaths: objs},
		}}
		resp.DeletedObjResults = append(resp.DeletedObjResults, r)
	}
	a.commit(before, work)
	return usp.NewResponse(id, &uspmsg.Response{RespType: &uspmsg.Response_DeleteResp{DeleteResp: resp}})
}

// operate implements Operate (TR-369 "Operate", TR-181 commands).
func (a *Agent) operate(id string, op *uspmsg.Operate, from string) *uspmsg.Msg {
	cmd := op.GetCommand()
	obj, name := devicemodel.SplitParameter(cmd)
	d := defOf(obj)
	if !strings.HasSuffix(cmd, "()") || d == nil || d.command(name) == nil {
		return usp.NewError(id, usp.ErrCodeInvalidPath, "command not in the supported data model")
	}
	objs := a.m.resolveObjects(obj)
	if len(objs) == 0 && !isSearch(cmd) {
		return usp.NewError(id, usp.ErrCodeObjectDoesNotExist, "object does not exist")
	}
	resp := &uspmsg.OperateResp{}
	failures := false
	var after func() // reboot or reset runs once the response is built
	for _, o := range objs {
		r := &uspmsg.OperateResp_OperationResult{ExecutedCommand: o + name}
		sync := func(out map[string]string) {
			r.OperationResp = &uspmsg.OperateResp_OperationResult_ReqOutputArgs{ReqOutputArgs: &uspmsg.OperateResp_OperationResult_OutputArgs{OutputArgs: out}}
		}
		if req, fail, ok := a.fileCommand(from, o, name, op.GetInputArgs(), op.GetCommandKey()); ok {
			if fail != "" {
				failures = true
				r.OperationResp = &uspmsg.OperateResp_OperationResult_CmdFailure{CmdFailure: &uspmsg.OperateResp_OperationResult_CommandFailure{
					ErrCode: usp.ErrCodeCommandFailure, ErrMsg: fail}}
			} else {
				r.OperationResp = &uspmsg.OperateResp_OperationResult_ReqObjPath{ReqObjPath: req}
			}
			resp.OperationResults = append(resp.OperationResults, r)
			continue
		}
		if req, fail, ok := a.diagnosticCommand(from, o+name, op.GetInputArgs(), op.GetCommandKey()); ok {
			if fail != nil {
				failures = true
				r.OperationResp = &uspmsg.OperateResp_OperationResult_CmdFailure{CmdFailure: fail}
			} else {
				r.OperationResp = &uspmsg.OperateResp_OperationResult_ReqObjPath{ReqObjPath: req}
			}
			resp.OperationResults = append(resp.OperationResults, r)
			continue
		}
		switch o + name {
		case "Device.Reboot()":
			sync(nil)
			after = func() { a.reboot("RemoteReboot", op.GetCommandKey(), false) }
		case "Device.FactoryReset()":
			sync(nil)
			after = func() { a.reboot("RemoteFactoryReset", op.GetCommandKey(), true) }
		case "Device.LocalAgent.ScheduleTimer()":
			n, err := strconv.ParseUint(op.GetInputArgs()["DelaySeconds"], 10, 32)
			if err != nil {
				failures = true
				r.OperationResp = &uspmsg.OperateResp_OperationResult_CmdFailure{CmdFailure: &uspmsg.OperateResp_OperationResult_CommandFailure{
					ErrCode: usp.ErrCodeInvalidCommandArguments, ErrMsg: "DelaySeconds must be an unsigned integer",
				}}
				break
			}
			req := a.startTimer(from, o+name, op.GetCommandKey(), time.Duration(n)*a.cfg.TimerUnit)
			r.OperationResp = &uspmsg.OperateResp_OperationResult_ReqObjPath{ReqObjPath: req}
		default: // Device.LocalAgent.Controller.{i}.SendOnBoardRequest()
			a.sendOnBoardRequest()
			sync(nil)
		}
		resp.OperationResults = append(resp.OperationResults, r)
	}
	if after != nil {
		after()
	}
	if !op.GetSendResp() && !failures {
		return nil // send_resp=false: no OperateResp unless something failed
	}
	return usp.NewResponse(id, &uspmsg.Response{RespType: &uspmsg.Response_OperateResp{OperateResp: resp}})
}

// startTimer creates the Request row of an async ScheduleTimer() and,
// after delay, raises Device.LocalAgent.Timer! and completes it with an
// OperationComplete without output arguments (TR-181 ScheduleTimer()).
func (a *Agent) startTimer(from, command, key string, delay time.Duration) string {
	before, work := a.m, a.m.clone()
	req := work.addInstance("Device.LocalAgent.Request.")
	work.values[req+"Originator"] = from
	work.values[req+"Command"] = command
	work.values[req+"CommandKey"] = key
	work.values[req+"Status"] = "Active"
	a.commit(before, work)
	boot := a.boots
	a.after(delay, func() {
		if a.boots != boot {
			return // lost on reboot
		}
		before, work := a.m, a.m.clone()
		work.deleteObject(req)
		a.commit(before, work)
		for _, s := range a.matching("Event", "Device.LocalAgent.Timer!") {
			a.sendNotify(s.id, s.retry, &uspmsg.Notify{Notification: &uspmsg.Notify_Event_{Event: &uspmsg.Notify_Event{
				ObjPath: "Device.LocalAgent.", EventName: "Timer!"}}})
		}
		a.operationComplete(command, key, map[string]string{}, nil)
	})
	return req
}

// isRowSegment reports whether seg addresses rows: an instance number, "*"
// or a search expression.
func isRowSegment(seg string) bool { return isInstance(seg) || seg == "*" || isExpr(seg) }
