package controller

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// TaskRequest is the body of POST /api/v1/devices/{id}/tasks: one
// operation of the common vocabulary, its arguments, and options.
type TaskRequest struct {
	Operation string `json:"operation"`

	// get, get_supported_dm, get_instances
	Paths          []string `json:"paths,omitempty"`
	MaxDepth       uint32   `json:"max_depth,omitempty"`
	FirstLevelOnly bool     `json:"first_level_only,omitempty"`
	// set: absolute paths; add: relative to the new instance.
	Params       []ParamJSON `json:"params,omitempty"`
	AllowPartial bool        `json:"allow_partial,omitempty"`
	// add: the table ("Device.NAT.PortMapping.").
	ObjectPath string `json:"object_path,omitempty"`
	// delete: instances ("Device.NAT.PortMapping.3.").
	ObjectPaths []string `json:"object_paths,omitempty"`
	// operate: command path ("Device.IP.Diagnostics.IPPing()").
	Command    string            `json:"command,omitempty"`
	CommandKey string            `json:"command_key,omitempty"`
	InputArgs  map[string]string `json:"input_args,omitempty"`
	// download, upload
	URL      string `json:"url,omitempty"`
	FileType string `json:"file_type,omitempty"`
	// firmware_upgrade, restore_config: a file of the repository.
	FileID string `json:"file_id,omitempty"`
	// Version is the firmware file's version, recorded when the task is
	// created: the version the device must report afterwards.
	Version string `json:"version,omitempty"`
	// resolved is the file and URL create found (firmware.go).
	resolved *resolvedFile
	// diagnostic: the test to run and its arguments (diagnostics.go).
	Diagnostic *DiagnosticRequest `json:"diagnostic,omitempty"`

	// Options.
	// Wait is how many seconds the request may block for the result.
	Wait              float64    `json:"wait,omitempty"`
	ExpiresAt         *time.Time `json:"expires_at,omitempty"`
	ConnectionRequest *bool      `json:"connection_request,omitempty"`
	UniqueKey         string     `json:"unique_key,omitempty"`
}

// ParamJSON is a parameter in the API: value in its TR-106 string form,
// type a TR-106 type name (default string).
type ParamJSON struct {
	Path  string `json:"path"`
	Value string `json:"value"`
	Type  string `json:"type,omitempty"`
}

// MaxWait bounds TaskRequest.Wait.
const MaxWait = 120 * time.Second

var paramTypes = map[string]duetv1.ParamType{
	"": duetv1.ParamType_PARAM_TYPE_STRING, "string": duetv1.ParamType_PARAM_TYPE_STRING,
	"int": duetv1.ParamType_PARAM_TYPE_INT, "unsignedInt": duetv1.ParamType_PARAM_TYPE_UNSIGNED_INT,
	"long": duetv1.ParamType_PARAM_TYPE_LONG, "unsignedLong": duetv1.ParamType_PARAM_TYPE_UNSIGNED_LONG,
	"boolean": duetv1.ParamType_PARAM_TYPE_BOOLEAN, "dateTime": duetv1.ParamType_PARAM_TYPE_DATE_TIME,
	"base64": duetv1.ParamType_PARAM_TYPE_BASE64, "hexBinary": duetv1.ParamType_PARAM_TYPE_HEX_BINARY,
	"decimal": duetv1.ParamType_PARAM_TYPE_DECIMAL,
}

// Operations and whether each may be sent twice without harm. Set and
// Delete leave the same state when repeated; Add makes another instance,
// Operate and the shortcuts act.
var operations = map[string]bool{ // name -> non-idempotent
	"get": false, "set": false, "delete": false, "get_supported_dm": false, "get_instances": false,
	"add": true, "operate": true, "reboot": true, "factory_reset": true, "download": true, "upload": true,
	"firmware_upgrade": true, "backup_config": true, "restore_config": true,
	// A diagnostic changes nothing on the device: sent again, it measures again.
	"diagnostic": false,
}

func operationNames() string {
	var n []string
	for k := range operations {
		n = append(n, k)
	}
	sort.Strings(n)
	return strings.Join(n, ", ")
}

func invalid(format string, args ...any) error {
	return devicemodel.Errorf(devicemodel.CodeInvalidArgument, format, args...)
}

// CheckPath parses p (the value of field) and wants one of kinds; a syntax error is
// invalid_path with the position (PathSyntaxError).
func CheckPath(field, p string, supported bool, kinds ...devicemodel.PathKind) error {
	pp, err := devicemodel.ParsePath(p, supported)
	if err != nil {
		if se, ok := err.(*devicemodel.PathSyntaxError); ok {
			return devicemodel.Errorf(devicemodel.CodeInvalidPath, "%s: %s", field, se.Error())
		}
		return err
	}
	for _, k := range kinds {
		if pp.Kind == k {
			return nil
		}
	}
	names := make([]string, len(kinds))
	for i, k := range kinds {
		names[i] = k.String()
	}
	return devicemodel.Errorf(devicemodel.CodeInvalidPath, "%s: %q is a %s path; want %s", field, p, pp.Kind, strings.Join(names, " or "))
}

func protoParams(field string, ps []ParamJSON, relative bool) ([]*duetv1.Parameter, error) {
	out := make([]*duetv1.Parameter, 0, len(ps))
	for i, p := range ps {
		f := fmt.Sprintf("%s[%d].path", field, i)
		if relative && !strings.HasPrefix(p.Path, "Device.") && !strings.HasPrefix(p.Path, "InternetGatewayDevice.") {
			// Relative names are checked as if under a root.
			if err := CheckPath(f, "Device."+p.Path, false, devicemodel.PathParameter); err != nil {
				return nil, err
			}
		} else if err := CheckPath(f, p.Path, false, devicemodel.PathParameter); err != nil {
			return nil, err
		}
		t, ok := paramTypes[p.Type]
		if !ok {
			return nil, invalid("%s[%d].type: %q is not a TR-106 type (string, int, unsignedInt, long, unsignedLong, boolean, dateTime, base64, hexBinary, decimal)", field, i, p.Type)
		}
		out = append(out, &duetv1.Parameter{Path: p.Path, Value: p.Value, Type: t})
	}
	return out, nil
}

// transferSchemes are the URL schemes a task may hand a device. TR-069
// A.3.2.8 (Download) and A.4.1.5 (Upload) require HTTP and HTTPS and let a
// CPE offer more; FTP is the one other transport those RPCs' Username and
// Password are meant for and is common in the field, so it is allowed.
// TFTP (no authentication), file:// and every other scheme are refused.
var transferSchemes = map[string]bool{"http": true, "https": true, "ftp": true}

// checkTransferURL checks a URL a task carries: absolute, with a host, in
// transferSchemes.
func checkTransferURL(field, v string) error {
	u, err := url.Parse(v)
	if err != nil {
		return invalid("%s: not a URL: %v", field, err)
	}
	if !transferSchemes[strings.ToLower(u.Scheme)] {
		return invalid("%s: scheme %q is not allowed; use http, https or ftp", field, u.Scheme)
	}
	if u.Host == "" {
		return invalid("%s: has no host", field)
	}
	return nil
}

// buildCommand validates r for device d and returns the command to send.
func buildCommand(r *TaskRequest, d devicemodel.Device, id string) (*duetv1.Command, error) {
	if _, ok := operations[r.Operation]; !ok {
		return nil, invalid("operation %q is unknown; one of: %s", r.Operation, operationNames())
	}
	root := d.DataModel
	if root == "" {
		root = "Device."
	}
	cmd := &duetv1.Command{Id: id, DeviceId: d.ID}
	// Every URL a task carries goes to the device, which fetches it or
	// posts to it: no file:// or other local scheme (issue 15 §7).
	for k, v := range r.InputArgs {
		if strings.HasSuffix(strings.ToUpper(k), "URL") && v != "" {
			if err := checkTransferURL("input_args."+k, v); err != nil {
				return nil, err
			}
		}
	}
	needPaths := func() error {
		if len(r.Paths) == 0 {
			return invalid("%s needs paths", r.Operation)
		}
		for i, p := range r.Paths {
			if err := CheckPath(fmt.Sprintf("paths[%d]", i), p, r.Operation == "get_supported_dm", devicemodel.PathObject, devicemodel.PathParameter); err != nil {
				return err
			}
		}
		return nil
	}
	if _, ok := fileOperations[r.Operation]; ok {
		if err := fileCommand(cmd, r, d, root, cmp.Or(r.CommandKey, id)); err != nil {
			return nil, err
		}
		return cmd, nil
	}
	if r.Operation == "diagnostic" {
		if err := diagnosticCommand(cmd, r, root, cmp.Or(r.CommandKey, id)); err != nil {
			return nil, err
		}
		return cmd, nil
	}
	switch r.Operation {
	case "get":
		if err := needPaths(); err != nil {
			return nil, err
		}
		cmd.Op = &duetv1.Command_Get{Get: &duetv1.GetRequest{Paths: r.Paths, MaxDepth: r.MaxDepth}}
	case "get_supported_dm":
		if err := needPaths(); err != nil {
			return nil, err
		}
		cmd.Op = &duetv1.Command_GetSupportedDm{GetSupportedDm: &duetv1.GetSupportedDMRequest{Paths: r.Paths,
			FirstLevelOnly: r.FirstLevelOnly, ReturnCommands: true, ReturnEvents: true, ReturnParams: true, ReturnUniqueKeySets: true}}
	case "get_instances":
		if err := needPaths(); err != nil {
			return nil, err
		}
		cmd.Op = &duetv1.Command_GetInstances{GetInstances: &duetv1.GetInstancesRequest{Paths: r.Paths, FirstLevelOnly: r.FirstLevelOnly}}
	case "set":
		if len(r.Params) == 0 {
			return nil, invalid("set needs params")
		}
		ps, err := protoParams("params", r.Params, false)
		if err != nil {
			return nil, err
		}
		cmd.Op = &duetv1.Command_Set{Set: &duetv1.SetRequest{Params: ps, AllowPartial: r.AllowPartial, ParameterKey: id}}
	case "add":
		if r.ObjectPath == "" {
			return nil, invalid("add needs object_path")
		}
		if err := CheckPath("object_path", r.ObjectPath, false, devicemodel.PathObject); err != nil {
			return nil, err
		}
		ps, err := protoParams("params", r.Params, true)
		if err != nil {
			return nil, err
		}
		cmd.Op = &duetv1.Command_Add{Add: &duetv1.AddRequest{ObjectPath: r.ObjectPath, Params: ps, AllowPartial: r.AllowPartial, ParameterKey: id}}
	case "delete":
		if len(r.ObjectPaths) == 0 {
			return nil, invalid("delete needs object_paths")
		}
		for i, p := range r.ObjectPaths {
			if err := CheckPath(fmt.Sprintf("object_paths[%d]", i), p, false, devicemodel.PathObject); err != nil {
				return nil, err
			}
		}
		cmd.Op = &duetv1.Command_Delete{Delete: &duetv1.DeleteRequest{ObjectPaths: r.ObjectPaths, AllowPartial: r.AllowPartial, ParameterKey: id}}
	case "operate":
		if r.Command == "" {
			return nil, invalid("operate needs command")
		}
		if err := CheckPath("command", r.Command, false, devicemodel.PathCommand); err != nil {
			return nil, err
		}
		cmd.Op = &duetv1.Command_Operate{Operate: &duetv1.OperateRequest{Command: r.Command, CommandKey: cmp.Or(r.CommandKey, id), InputArgs: r.InputArgs}}
	case "reboot":
		cmd.Op = &duetv1.Command_Operate{Operate: &duetv1.OperateRequest{Command: root + "Reboot()", CommandKey: cmp.Or(r.CommandKey, id)}}
	case "factory_reset":
		cmd.Op = &duetv1.Command_Operate{Operate: &duetv1.OperateRequest{Command: root + "FactoryReset()", CommandKey: cmp.Or(r.CommandKey, id)}}
	case "download", "upload":
		if r.URL == "" {
			return nil, invalid("%s needs url", r.Operation)
		}
		if err := checkTransferURL("url", r.URL); err != nil {
			return nil, err
		}
		if r.Operation == "download" {
			// USP: FirmwareImage.{i}.Download() (TR-181). CWMP: the
			// Download RPC, named by the bare "Download()" the CWMP adapter
			// knows, since TR-098 has no FirmwareImage table.
			args := map[string]string{"URL": r.URL}
			command := "Download()"
			if d.Protocol == devicemodel.ProtocolUSP {
				args["AutoActivate"] = "true"
				command = root + "DeviceInfo.FirmwareImage.1.Download()"
			}
			if r.FileType != "" {
				args["FileType"] = r.FileType
			}
			for k, v := range r.InputArgs {
				args[k] = v
			}
			cmd.Op = &duetv1.Command_Operate{Operate: &duetv1.OperateRequest{Command: command,
				CommandKey: cmp.Or(r.CommandKey, id), InputArgs: args}}
		} else if d.Protocol == devicemodel.ProtocolCWMP {
			ft := cmp.Or(r.FileType, "1 Vendor Configuration File")
			cmd.Op = &duetv1.Command_CwmpRpc{CwmpRpc: &duetv1.CwmpRpc{Method: "Upload",
				Args: map[string]string{"CommandKey": cmp.Or(r.CommandKey, id), "FileType": ft, "URL": r.URL}}}
		} else {
			args := map[string]string{"URL": r.URL}
			for k, v := range r.InputArgs {
				args[k] = v
			}
			cmd.Op = &duetv1.Command_Operate{Operate: &duetv1.OperateRequest{Command: root + "DeviceInfo.VendorConfigFile.1.Backup()",
				CommandKey: cmp.Or(r.CommandKey, id), InputArgs: args}}
		}
	}
	return cmd, nil
}

// Create validates and queues a task for a device and starts its delivery.
// Errors: CodeNotFound (device), CodeInvalidArgument / CodeInvalidPath
// (request); nothing is stored then.
func (q *TaskQueue) Create(ctx context.Context, deviceID string, r TaskRequest) (store.Task, error) {
	return q.create(ctx, deviceID, r, "")
}

func (q *TaskQueue) create(ctx context.Context, deviceID string, r TaskRequest, retryOf string) (store.Task, error) {
	if err := devicemodel.ValidateDeviceID(deviceID); err != nil {
		return store.Task{}, invalid("device id: %s", devicemodel.ErrorMessage(err))
	}
	// Compared in seconds: wait 1e308 overflowed the Duration and passed.
	if !(r.Wait >= 0 && r.Wait <= MaxWait.Seconds()) {
		return store.Task{}, invalid("wait: %v is not from 0 to %d seconds", r.Wait, int(MaxWait.Seconds()))
	}
	if r.ExpiresAt != nil && !r.ExpiresAt.After(time.Now()) && retryOf == "" {
		return store.Task{}, invalid("expires_at %s is in the past", r.ExpiresAt.Format(time.RFC3339))
	}
	if len(r.UniqueKey) > 200 {
		return store.Task{}, invalid("unique_key is longer than 200 characters")
	}
	d, err := q.o.Store.FindDeviceByID(ctx, deviceID)
	if err != nil {
		return store.Task{}, err
	}
	if err := q.resolveFile(ctx, &r, d); err != nil {
		return store.Task{}, err
	}
	if r.Diagnostic != nil {
		// Each task gets its own (a batch shares the request).
		dr := *r.Diagnostic
		r.Diagnostic = &dr
	}
	if err := q.resolveDiagnostic(&r, d); err != nil {
		return store.Task{}, err
	}
	id := bus.NewID()
	cmd, err := buildCommand(&r, d, id)
	if err != nil {
		return store.Task{}, err
	}
	cmdBytes, err := proto.Marshal(cmd)
	if err != nil {
		return store.Task{}, err
	}
	stored := r
	stored.Wait = 0
	reqJSON, err := json.Marshal(stored)
	if err != nil {
		return store.Task{}, err
	}
	cr := r.ConnectionRequest == nil || *r.ConnectionRequest
	wait := waitsFromCreate(d, cr)
	t, changed, err := q.o.Store.CreateTaskWaiting(ctx, store.Task{
		ID: id, DeviceID: d.ID, Operation: r.Operation, Request: reqJSON, Command: cmdBytes,
		NonIdempotent: operations[r.Operation], UniqueKey: r.UniqueKey, ConnectionRequest: cr,
		ExpiresAt: r.ExpiresAt, RetryOf: retryOf,
	}, wait)
	if err != nil {
		return t, err
	}
	metricTasksCreated.WithLabelValues(r.Operation).Inc()
	if wait != "" {
		q.waitingChanged(d.ID, wait, changed)
	} else {
		q.deliver(d)
	}
	return t, nil
}

// waitsFromCreate is why a new task of d waits from the start, recorded
// with it; "" when its delivery starts at once (deliver).
func waitsFromCreate(d devicemodel.Device, connReq bool) string {
	switch {
	case d.Protocol == devicemodel.ProtocolUSP && !d.Online:
		// An offline agent's tasks wait for its next event (DevicesSeen),
		// which also covers a registry that lags behind a reconnect.
		return store.WaitDeviceOffline
	case d.Protocol == devicemodel.ProtocolCWMP && !connReq:
		return store.WaitAwaitingInform
	}
	return ""
}

// deliver starts delivery of a device's queued tasks: at once to an
// online USP agent, by a connection request to a CWMP device.
func (q *TaskQueue) deliver(d devicemodel.Device) {
	switch d.Protocol {
	case devicemodel.ProtocolUSP:
		q.reachable(d.ID)
		q.kick(d.ID)
	case devicemodel.ProtocolCWMP:
		q.wakeCWMP(d.ID, d.ConnectionRequestURL)
	}
}

// Cancel cancels a queued task (CodeConflict once it was dispatched).
func (q *TaskQueue) Cancel(ctx context.Context, id string) (store.Task, error) {
	t, err := q.o.Store.CancelTask(ctx, id)
	if err == nil {
		metricTasksFinished.WithLabelValues(string(store.TaskCancelled)).Inc()
		q.notify(id)
	}
	return t, err
}

// Retry queues a new task with the same request as a finished one that did
// not succeed (the explicit retry a non-idempotent task needs). The new
// task has no expiry unless the old one's is still ahead.
func (q *TaskQueue) Retry(ctx context.Context, id string) (store.Task, error) {
	old, err := q.o.Store.FindTaskByID(ctx, id)
	if err != nil {
		return old, err
	}
	switch old.State {
	case store.TaskFailed, store.TaskExpired, store.TaskCancelled:
	default:
		return old, devicemodel.Errorf(devicemodel.CodeConflict, "task %s is %s; only a failed, expired or cancelled task can be retried", id, old.State)
	}
	var r TaskRequest
	if err := json.Unmarshal(old.Request, &r); err != nil {
		return old, fmt.Errorf("controller: stored request of task %s: %w", id, err)
	}
	if r.ExpiresAt != nil && !r.ExpiresAt.After(time.Now()) {
		r.ExpiresAt = nil
	}
	return q.create(ctx, old.DeviceID, r, id)
}
