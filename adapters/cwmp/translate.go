package cwmp

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/cwmp"
	"github.com/duet-dm/duet/pkg/devicemodel"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// gpvBatch is how many names go in one GetParameterValues (GenieACS
// cwmp.gpvBatchSize; TR-069 A.3.2, docs/cwmp-interop.md #22).
const gpvBatch = 32

// maxCommandKey is the TR-069 limit on CommandKey and ParameterKey (TR-069 A.3.2).
const maxCommandKey = 32

// job is one unit of session work: a controller command, or the adapter's
// own work when internal is set (called instead of publishing a result).
type job struct {
	cmd      *duetv1.Command
	op       op
	internal func(ctx context.Context, j *job)
}

// op translates one bus operation into a sequence of RPCs (TR-069 A.3.2 and
// the docs/architecture.md table). next returns the following request or nil
// when the operation is over; handle receives the CPE's answer to the
// request next returned last (resp, or err for a fault / wrong answer).
type op interface {
	next() cwmp.Message
	handle(resp cwmp.Message, err *devicemodel.Error)
	fail(err *devicemodel.Error)
	result() *duetv1.CommandResult
}

// base is the plumbing shared by ops: a queue of requests, the last one
// sent, and the first error.
type base struct {
	pending []cwmp.Message
	last    cwmp.Message
	err     *devicemodel.Error
	stopped bool
}

func (b *base) next() cwmp.Message {
	if b.stopped || len(b.pending) == 0 {
		return nil
	}
	b.last, b.pending = b.pending[0], b.pending[1:]
	return b.last
}

func (b *base) fail(err *devicemodel.Error) {
	if b.err == nil {
		b.err = err
	}
	b.stopped = true
}

func (b *base) finish(res *duetv1.CommandResult) *duetv1.CommandResult {
	if b.err != nil {
		res.Error = bus.ErrorToProto(b.err)
	}
	return res
}

func paramErr(path string, err *devicemodel.Error) *duetv1.ParamError {
	return &duetv1.ParamError{Path: path, Code: duetv1.ErrorCode(err.Code), DeviceFault: err.DeviceFault, Message: err.Message}
}

func truncateKey(k string) string {
	if len(k) > maxCommandKey {
		return k[:maxCommandKey]
	}
	return k
}

// failedOp is a command refused before any RPC (unsupported, bad args).
type failedOp struct{ base }

func (o *failedOp) handle(cwmp.Message, *devicemodel.Error) {}
func (o *failedOp) result() *duetv1.CommandResult           { return o.finish(&duetv1.CommandResult{}) }

func refused(err *devicemodel.Error) op {
	o := &failedOp{}
	o.fail(err)
	return o
}

// newJob translates a controller command.
func (a *ACS) newJob(s *session, c *duetv1.Command) *job {
	j := &job{cmd: c}
	switch x := c.Op.(type) {
	case *duetv1.Command_Get:
		j.op = newGet(x.Get)
	case *duetv1.Command_Set:
		j.op = newSet(x.Set)
	case *duetv1.Command_Add:
		j.op = newAdd(x.Add)
	case *duetv1.Command_Delete:
		j.op = newDelete(x.Delete)
	case *duetv1.Command_Operate:
		j.op = newOperate(x.Operate, c.GetId())
	case *duetv1.Command_GetSupportedDm:
		j.op = newSupportedDM(x.GetSupportedDm)
	case *duetv1.Command_GetInstances:
		j.op = newInstances(x.GetInstances)
	case *duetv1.Command_SetAttributes:
		j.op = newSetAttributes(x.SetAttributes)
	case *duetv1.Command_GetAttributes:
		j.op = newGetAttributes(x.GetAttributes)
	case *duetv1.Command_CwmpRpc:
		j.op = newRawRPC(x.CwmpRpc)
	default:
		j.op = refused(devicemodel.Errorf(devicemodel.CodeUnsupported, "operation %T is not supported over CWMP", c.Op))
	}
	return j
}

// ---- Get: GetParameterNames on partial paths, then GetParameterValues ----

type getOp struct {
	base
	names  []string
	params []*duetv1.Parameter
	errs   []*duetv1.ParamError
}

// newGet sends each partial path (ending in ".") to GetParameterNames with
// NextLevel=false and full parameter paths straight to the value batches
// (TR-069 A.3.2, docs/cwmp-interop.md #22). max_depth is not applied: CWMP has no depth.
func newGet(r *duetv1.GetRequest) op {
	o := &getOp{}
	for _, p := range r.GetPaths() {
		if p == "" || strings.HasSuffix(p, ".") {
			o.pending = append(o.pending, &cwmp.GetParameterNames{ParameterPath: p, NextLevel: false})
		} else {
			o.names = append(o.names, p)
		}
	}
	if len(o.pending) == 0 && len(o.names) == 0 {
		o.fail(devicemodel.Errorf(devicemodel.CodeInvalidArgument, "get without paths"))
	}
	return o
}

func (o *getOp) next() cwmp.Message {
	if m := o.base.next(); m != nil || o.stopped || len(o.names) == 0 {
		return m
	}
	n := min(gpvBatch, len(o.names))
	o.last = &cwmp.GetParameterValues{ParameterNames: o.names[:n:n]}
	o.names = o.names[n:]
	return o.last
}

func (o *getOp) handle(resp cwmp.Message, err *devicemodel.Error) {
	switch req := o.last.(type) {
	case *cwmp.GetParameterNames:
		if err != nil {
			o.errs = append(o.errs, paramErr(req.ParameterPath, err))
			return
		}
		for _, pi := range resp.(*cwmp.GetParameterNamesResponse).ParameterList {
			if n := strings.TrimSpace(pi.Name); n != "" && !strings.HasSuffix(n, ".") {
				o.names = append(o.names, n)
			}
		}
	case *cwmp.GetParameterValues:
		if err != nil {
			if len(req.ParameterNames) == 1 {
				o.errs = append(o.errs, paramErr(req.ParameterNames[0], err))
				return
			}
			o.fail(err)
			return
		}
		o.params = append(o.params, toParams(resp.(*cwmp.GetParameterValuesResponse).ParameterList, nil)...)
	}
}

func (o *getOp) result() *duetv1.CommandResult {
	if o.err == nil && len(o.params) == 0 && len(o.errs) > 0 {
		// Nothing could be read: the command failed as a whole.
		e := o.errs[0]
		o.err = &devicemodel.Error{Code: devicemodel.Code(e.Code), Message: e.Message, DeviceFault: e.DeviceFault}
	}
	return o.finish(&duetv1.CommandResult{Result: &duetv1.CommandResult_Get{Get: &duetv1.GetResult{Params: o.params, Errors: o.errs}}})
}

// ---- Set: one atomic SetParameterValues ----

func pvs(params []*duetv1.Parameter, prefix func(string) string) []cwmp.ParameterValueStruct {
	out := make([]cwmp.ParameterValueStruct, 0, len(params))
	for _, p := range params {
		name := p.GetPath()
		if prefix != nil {
			name = prefix(name)
		}
		out = append(out, cwmp.ParameterValueStruct{Name: name, Value: cwmp.Value{Type: valueType(p.GetType()), Data: p.GetValue()}})
	}
	return out
}

type setOp struct {
	base
	req    *duetv1.SetRequest
	status uint32
}

func newSet(r *duetv1.SetRequest) op {
	o := &setOp{req: r}
	if len(r.GetParams()) == 0 {
		o.fail(devicemodel.Errorf(devicemodel.CodeInvalidArgument, "set without parameters"))
		return o
	}
	o.pending = []cwmp.Message{&cwmp.SetParameterValues{ParameterList: pvs(r.GetParams(), nil), ParameterKey: truncateKey(r.GetParameterKey())}}
	return o
}

func (o *setOp) handle(resp cwmp.Message, err *devicemodel.Error) {
	if err != nil {
		o.fail(err)
		return
	}
	o.status = uint32(resp.(*cwmp.SetParameterValuesResponse).Status)
}

func (o *setOp) result() *duetv1.CommandResult {
	r := &duetv1.SetResult{Status: o.status}
	if o.err == nil {
		r.Updated = o.req.GetParams()
	} else {
		r.Errors = bus.ErrorToProto(o.err).GetParams()
	}
	return o.finish(&duetv1.CommandResult{Result: &duetv1.CommandResult_Set{Set: r}})
}

// ---- Add: AddObject, then SetParameterValues on the new instance ----

type addOp struct {
	base
	req      *duetv1.AddRequest
	instance string
	status   uint32
	perrs    []*duetv1.ParamError
}

func newAdd(r *duetv1.AddRequest) op {
	o := &addOp{req: r}
	if !strings.HasSuffix(r.GetObjectPath(), ".") {
		o.fail(devicemodel.Errorf(devicemodel.CodeInvalidPath, "add: object path %q must end in '.'", r.GetObjectPath()))
		return o
	}
	o.pending = []cwmp.Message{&cwmp.AddObject{ObjectName: r.GetObjectPath(), ParameterKey: truncateKey(r.GetParameterKey())}}
	return o
}

func (o *addOp) handle(resp cwmp.Message, err *devicemodel.Error) {
	switch o.last.(type) {
	case *cwmp.AddObject:
		if err != nil {
			o.fail(err)
			return
		}
		ar := resp.(*cwmp.AddObjectResponse)
		o.instance = o.req.GetObjectPath() + strconv.FormatUint(uint64(ar.InstanceNumber), 10) + "."
		o.status = uint32(ar.Status)
		if len(o.req.GetParams()) > 0 {
			obj := o.req.GetObjectPath()
			o.pending = append(o.pending, &cwmp.SetParameterValues{
				ParameterList: pvs(o.req.GetParams(), func(p string) string {
					// Relative to the new instance, or absolute under the table.
					return o.instance + strings.TrimPrefix(p, obj)
				}),
				ParameterKey: truncateKey(o.req.GetParameterKey()),
			})
		}
	case *cwmp.SetParameterValues:
		if err != nil {
			// The instance exists but its settings failed: report both.
			o.perrs = bus.ErrorToProto(err).GetParams()
			o.fail(err)
			return
		}
		if st := uint32(resp.(*cwmp.SetParameterValuesResponse).Status); st > o.status {
			o.status = st
		}
	}
}

func (o *addOp) result() *duetv1.CommandResult {
	return o.finish(&duetv1.CommandResult{Result: &duetv1.CommandResult_Add{Add: &duetv1.AddResult{
		InstancePath: o.instance, ParamErrors: o.perrs, Status: o.status,
	}}})
}

// ---- Delete: one DeleteObject per path ----

type deleteOp struct {
	base
	deleted []string
	errs    []*duetv1.ParamError
	status  uint32
}

func newDelete(r *duetv1.DeleteRequest) op {
	o := &deleteOp{}
	for _, p := range r.GetObjectPaths() {
		o.pending = append(o.pending, &cwmp.DeleteObject{ObjectName: p, ParameterKey: truncateKey(r.GetParameterKey())})
	}
	if len(o.pending) == 0 {
		o.fail(devicemodel.Errorf(devicemodel.CodeInvalidArgument, "delete without object paths"))
	}
	return o
}

func (o *deleteOp) handle(resp cwmp.Message, err *devicemodel.Error) {
	name := o.last.(*cwmp.DeleteObject).ObjectName
	if err != nil {
		o.errs = append(o.errs, paramErr(name, err))
		return
	}
	o.deleted = append(o.deleted, name)
	if st := uint32(resp.(*cwmp.DeleteObjectResponse).Status); st > o.status {
		o.status = st
	}
}

func (o *deleteOp) result() *duetv1.CommandResult {
	if o.err == nil && len(o.errs) > 0 && len(o.deleted) == 0 {
		// Every path failed: the command failed (README, task states).
		// When some were deleted (CWMP cannot delete atomically) it
		// succeeded, with the others' errors.
		e := &devicemodel.Error{Code: devicemodel.Code(o.errs[0].Code), Message: o.errs[0].Message, DeviceFault: o.errs[0].DeviceFault}
		o.err = e
	}
	return o.finish(&duetv1.CommandResult{Result: &duetv1.CommandResult_Delete{Delete: &duetv1.DeleteResult{
		DeletedPaths: o.deleted, Errors: o.errs, Status: o.status,
	}}})
}

// ---- Operate ----

type operateOp struct {
	base
	command string
	async   bool
	request string
	outputs map[string]string
	// reboot and transfer, when set, are the result: CWMP's Reboot,
	// FactoryReset and Download are not data-model commands, so their
	// result is the neutral form (issue 11: no made-up command paths).
	reboot   *duetv1.RebootResult
	transfer *duetv1.TransferResult
}

// diagnosticInputs lists diagnostics inputs that are not strings (TR-069
// diagnostics, TR-143); a wrong xsi:type gets fault 9006.
var diagnosticInputs = map[string]cwmp.ValueType{
	"NumberOfRepetitions": cwmp.TypeUnsignedInt, "Timeout": cwmp.TypeUnsignedInt, "DataBlockSize": cwmp.TypeUnsignedInt,
	"DSCP": cwmp.TypeUnsignedInt, "NumberOfTries": cwmp.TypeUnsignedInt, "MaxHopCount": cwmp.TypeUnsignedInt,
	"EthernetPriority": cwmp.TypeUnsignedInt, "TestFileLength": cwmp.TypeUnsignedInt,
	"NumberOfConnections": cwmp.TypeUnsignedInt, "TimeBasedTestDuration": cwmp.TypeUnsignedInt,
	"TimeBasedTestMeasurementInterval": cwmp.TypeUnsignedInt, "TimeBasedTestMeasurementOffset": cwmp.TypeUnsignedInt,
	"EnablePerConnectionResults": cwmp.TypeBoolean, "Port": cwmp.TypeUnsignedInt, "InterTransmissionTime": cwmp.TypeUnsignedInt,
}

// diagnosticsObject returns the object a diagnostics command drives:
// "Device.IP.Diagnostics.IPPing()" -> "Device.IP.Diagnostics.IPPing.",
// "InternetGatewayDevice.IPPingDiagnostics()" ->
// "InternetGatewayDevice.IPPingDiagnostics." (TR-069 diagnostics, TR-143).
func diagnosticsObject(command string) (string, bool) {
	obj := strings.TrimSuffix(command, "()") + "."
	_, name := devicemodel.SplitParameter(strings.TrimSuffix(obj, "."))
	if strings.Contains(obj, ".Diagnostics.") || strings.HasSuffix(name, "Diagnostics") {
		return obj, true
	}
	return "", false
}

// diagnosticsObjects are read after "8 DIAGNOSTICS COMPLETE" (TR-069 diagnostics, TR-143).
func diagnosticsObjects(root string) []string {
	if root == "InternetGatewayDevice." {
		return []string{"InternetGatewayDevice.IPPingDiagnostics.", "InternetGatewayDevice.TraceRouteDiagnostics.",
			"InternetGatewayDevice.DownloadDiagnostics.", "InternetGatewayDevice.UploadDiagnostics."}
	}
	return []string{"Device.IP.Diagnostics.IPPing.", "Device.IP.Diagnostics.TraceRoute.",
		"Device.IP.Diagnostics.DownloadDiagnostics.", "Device.IP.Diagnostics.UploadDiagnostics.",
		"Device.IP.Diagnostics.UDPEchoDiagnostics.", "Device.DNS.Diagnostics.NSLookupDiagnostics."}
}

// newOperate maps USP-style commands to CWMP RPCs: Reboot(), FactoryReset(),
// any …Download() (FirmwareImage.{i}.Download() or a bare Download()) to the
// Download RPC, and diagnostics to one SetParameterValues with
// DiagnosticsState=Requested (TR-069 A.3.2, TR-069 diagnostics, TR-143).
func newOperate(r *duetv1.OperateRequest, cmdID string) op {
	o := &operateOp{command: r.GetCommand(), outputs: map[string]string{}}
	key := r.GetCommandKey()
	if key == "" {
		key = cmdID
	}
	key = truncateKey(key)
	args := r.GetInputArgs()
	c := strings.TrimSpace(r.GetCommand())
	if !strings.HasSuffix(c, "()") {
		o.fail(devicemodel.Errorf(devicemodel.CodeInvalidPath, "operate: %q is not a command path (must end in \"()\")", c))
		return o
	}
	root := devicemodel.DataModelRoot(c)
	switch {
	case c == root+"Reboot()":
		o.pending = []cwmp.Message{&cwmp.Reboot{CommandKey: key}}
		o.reboot = &duetv1.RebootResult{CommandKey: key}
	case c == root+"FactoryReset()":
		// FactoryReset has no CommandKey (TR-069 A.4.1.9): its completion
		// is the next 0 BOOTSTRAP.
		o.pending = []cwmp.Message{&cwmp.FactoryReset{}}
		o.reboot = &duetv1.RebootResult{FactoryReset: true}
	default:
		if obj, ok := diagnosticsObject(c); ok {
			pl := make([]cwmp.ParameterValueStruct, 0, len(args)+1)
			for _, k := range sortedKeys(args) {
				t := diagnosticInputs[k]
				if t == "" {
					t = cwmp.TypeString
				}
				pl = append(pl, cwmp.ParameterValueStruct{Name: obj + k, Value: cwmp.Value{Type: t, Data: args[k]}})
			}
			pl = append(pl, cwmp.ParameterValueStruct{Name: obj + "DiagnosticsState", Value: cwmp.Value{Type: cwmp.TypeString, Data: "Requested"}})
			o.pending = []cwmp.Message{&cwmp.SetParameterValues{ParameterList: pl, ParameterKey: key}}
			o.async, o.request = true, obj
			break
		}
		if c == "Download()" || strings.HasSuffix(c, ".Download()") {
			d := &cwmp.Download{
				CommandKey: key, FileType: cwmp.FileTypeFirmware, URL: args["URL"],
				Username: args["Username"], Password: args["Password"], TargetFileName: args["TargetFileName"],
				SuccessURL: args["SuccessURL"], FailureURL: args["FailureURL"],
			}
			if ft := args["FileType"]; ft != "" {
				d.FileType = ft
			}
			for name, dst := range map[string]*uint32{"FileSize": &d.FileSize, "DelaySeconds": &d.DelaySeconds} {
				if v := args[name]; v != "" {
					n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
					if err != nil {
						o.fail(devicemodel.Errorf(devicemodel.CodeInvalidArgument, "download: %s %q is not an unsigned integer", name, v))
						return o
					}
					*dst = uint32(n)
				}
			}
			if d.URL == "" {
				o.fail(devicemodel.Errorf(devicemodel.CodeInvalidArgument, "download: URL is required"))
				return o
			}
			o.pending = []cwmp.Message{d}
			o.transfer = &duetv1.TransferResult{CommandKey: key}
			break
		}
		o.fail(devicemodel.Errorf(devicemodel.CodeUnsupported, "operate: %q has no CWMP equivalent (use cwmp_rpc)", c))
	}
	return o
}

func (o *operateOp) handle(resp cwmp.Message, err *devicemodel.Error) {
	if err != nil {
		if _, ok := o.last.(*cwmp.Download); ok && err.DeviceFault >= 9010 && err.DeviceFault <= 9020 {
			err.Code = devicemodel.CodeTransferFailed
		} else if err.DeviceFault != 0 && err.Code == devicemodel.CodeInternal {
			err.Code = devicemodel.CodeCommandFailed
		}
		o.fail(err)
		return
	}
	if d, ok := resp.(*cwmp.DownloadResponse); ok {
		transferStatus(o.transfer, d.Status, d.StartTime, d.CompleteTime)
	}
}

// transferStatus records a Download/UploadResponse: Status 0 means done
// (with its times), 1 accepted, completion reported later by
// TransferComplete (TR-069 A.3.2.8, A.3.2.9).
func transferStatus(t *duetv1.TransferResult, status int, start, complete time.Time) {
	t.Status = uint32(status)
	if status == 0 {
		t.StartTime, t.CompleteTime = timestamp(start), timestamp(complete)
	}
}

func (o *operateOp) result() *duetv1.CommandResult {
	switch {
	case o.reboot != nil:
		return o.finish(&duetv1.CommandResult{Result: &duetv1.CommandResult_Reboot{Reboot: o.reboot}})
	case o.transfer != nil:
		return o.finish(&duetv1.CommandResult{Result: &duetv1.CommandResult_Transfer{Transfer: o.transfer}})
	}
	return o.finish(&duetv1.CommandResult{Result: &duetv1.CommandResult_Operate{Operate: &duetv1.OperateResult{
		ExecutedCommand: o.command, OutputArgs: o.outputs, RequestPath: o.request, Async: o.async,
	}}})
}

// ---- GetSupportedDM and GetInstances: GetParameterNames ----

type namesOp struct {
	base
	instances bool
	objects   []*duetv1.SupportedObject
	insts     []*duetv1.Instance
	errs      []*duetv1.ParamError
}

func newSupportedDM(r *duetv1.GetSupportedDMRequest) op {
	o := &namesOp{}
	for _, p := range r.GetPaths() {
		o.pending = append(o.pending, &cwmp.GetParameterNames{ParameterPath: p, NextLevel: r.GetFirstLevelOnly()})
	}
	return o
}

func newInstances(r *duetv1.GetInstancesRequest) op {
	o := &namesOp{instances: true}
	for _, p := range r.GetPaths() {
		o.pending = append(o.pending, &cwmp.GetParameterNames{ParameterPath: p, NextLevel: r.GetFirstLevelOnly()})
	}
	return o
}

// isInstance reports whether an object path ends in a numeric instance
// segment ("Device.IP.Interface.3.").
func isInstance(p string) bool {
	t := strings.TrimSuffix(p, ".")
	_, last := devicemodel.SplitParameter(t)
	if last == "" || !strings.HasSuffix(p, ".") {
		return false
	}
	_, err := strconv.ParseUint(last, 10, 32)
	return err == nil
}

func (o *namesOp) handle(resp cwmp.Message, err *devicemodel.Error) {
	path := o.last.(*cwmp.GetParameterNames).ParameterPath
	if err != nil {
		o.errs = append(o.errs, paramErr(path, err))
		return
	}
	byPath := map[string]*duetv1.SupportedObject{}
	for _, pi := range resp.(*cwmp.GetParameterNamesResponse).ParameterList {
		n := strings.TrimSpace(pi.Name)
		if o.instances {
			if isInstance(n) {
				o.insts = append(o.insts, &duetv1.Instance{Path: n})
			}
			continue
		}
		if strings.HasSuffix(n, ".") {
			so := &duetv1.SupportedObject{Path: n, MultiInstance: isInstance(n), Access: "read_only"}
			if pi.Writable {
				so.Access = "add_delete"
			}
			byPath[n] = so
			o.objects = append(o.objects, so)
			continue
		}
		obj, name := devicemodel.SplitParameter(n)
		so := byPath[obj]
		if so == nil {
			so = &duetv1.SupportedObject{Path: obj, MultiInstance: isInstance(obj), Access: "read_only"}
			byPath[obj] = so
			o.objects = append(o.objects, so)
		}
		acc := duetv1.Writability_WRITABILITY_READ_ONLY
		if pi.Writable {
			acc = duetv1.Writability_WRITABILITY_READ_WRITE
		}
		so.Params = append(so.Params, &duetv1.SupportedParam{Name: name, Access: acc})
	}
}

func (o *namesOp) result() *duetv1.CommandResult {
	if o.instances {
		return o.finish(&duetv1.CommandResult{Result: &duetv1.CommandResult_GetInstances{GetInstances: &duetv1.GetInstancesResult{Instances: o.insts, Errors: o.errs}}})
	}
	return o.finish(&duetv1.CommandResult{Result: &duetv1.CommandResult_GetSupportedDm{GetSupportedDm: &duetv1.GetSupportedDMResult{Objects: o.objects, Errors: o.errs}}})
}

// ---- Attributes ----

type attrOp struct {
	base
	attrs []*duetv1.ParameterAttribute
	get   bool
}

func newSetAttributes(r *duetv1.SetAttributesRequest) op {
	o := &attrOp{}
	spa := &cwmp.SetParameterAttributes{}
	for _, at := range r.GetAttributes() {
		spa.ParameterList = append(spa.ParameterList, cwmp.SetParameterAttributesStruct{
			Name: at.GetPath(), NotificationChange: at.GetNotificationChange(), Notification: int(at.GetNotification()),
			AccessListChange: at.GetAccessListChange(), AccessList: at.GetAccessList(),
		})
	}
	if len(spa.ParameterList) == 0 {
		o.fail(devicemodel.Errorf(devicemodel.CodeInvalidArgument, "set_attributes without attributes"))
		return o
	}
	o.pending = []cwmp.Message{spa}
	return o
}

func newGetAttributes(r *duetv1.GetAttributesRequest) op {
	o := &attrOp{get: true}
	o.pending = []cwmp.Message{&cwmp.GetParameterAttributes{ParameterNames: r.GetPaths()}}
	return o
}

func (o *attrOp) handle(resp cwmp.Message, err *devicemodel.Error) {
	if err != nil {
		o.fail(err)
		return
	}
	if g, ok := resp.(*cwmp.GetParameterAttributesResponse); ok {
		for _, p := range g.ParameterList {
			o.attrs = append(o.attrs, &duetv1.ParameterAttribute{
				Path: strings.TrimSpace(p.Name), Notification: duetv1.Notification(p.Notification), AccessList: p.AccessList,
			})
		}
	}
}

func (o *attrOp) result() *duetv1.CommandResult {
	if o.get {
		return o.finish(&duetv1.CommandResult{Result: &duetv1.CommandResult_GetAttributes{GetAttributes: &duetv1.GetAttributesResult{Attributes: o.attrs}}})
	}
	return o.finish(&duetv1.CommandResult{Result: &duetv1.CommandResult_SetAttributes{SetAttributes: &duetv1.SetAttributesResult{}}})
}

// ---- Diagnostics results, read after "8 DIAGNOSTICS COMPLETE" ----

// diagnosticsJob reads every diagnostics object of the device's root, one
// GetParameterValues each so that an object the CPE lacks (9005) does not
// hide the others, and publishes what it read as diagnostics_complete
// (TR-069 diagnostics, TR-143 step 4).
func (a *ACS) diagnosticsJob(s *session) *job {
	o := &getOp{}
	for _, obj := range diagnosticsObjects(s.root) {
		o.pending = append(o.pending, &cwmp.GetParameterValues{ParameterNames: []string{obj}})
	}
	return &job{op: o, internal: func(ctx context.Context, j *job) {
		a.publish(ctx, s, &duetv1.Event{Kind: &duetv1.Event_DiagnosticsComplete{DiagnosticsComplete: &duetv1.DiagnosticsComplete{Params: o.params}}})
	}}
}
