package controller

import (
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// allPathsFailed applies the one rule for operations on several paths
// (get, get_instances, get_supported_dm, set with allow_partial, delete):
// when every requested path failed the task fails, with the first path's
// error; when only some failed it succeeds and the result lists the
// per-path errors. It returns nil when the task succeeded.
func allPathsFailed(t store.Task, res *duetv1.CommandResult) error {
	if res == nil {
		return nil
	}
	cmd := &duetv1.Command{}
	if proto.Unmarshal(t.Command, cmd) != nil {
		return nil
	}
	var asked []string
	var errs []*duetv1.ParamError
	switch {
	case cmd.GetGet() != nil:
		asked, errs = cmd.GetGet().GetPaths(), res.GetGet().GetErrors()
	case cmd.GetGetInstances() != nil:
		asked, errs = cmd.GetGetInstances().GetPaths(), res.GetGetInstances().GetErrors()
	case cmd.GetGetSupportedDm() != nil:
		asked, errs = cmd.GetGetSupportedDm().GetPaths(), res.GetGetSupportedDm().GetErrors()
	case cmd.GetSet() != nil:
		for _, p := range cmd.GetSet().GetParams() {
			asked = append(asked, p.GetPath())
		}
		errs = res.GetSet().GetErrors()
	case cmd.GetDelete() != nil:
		asked, errs = cmd.GetDelete().GetObjectPaths(), res.GetDelete().GetErrors()
	default:
		return nil
	}
	if len(asked) == 0 || len(errs) == 0 {
		return nil
	}
	failed := map[string]bool{}
	for _, e := range errs {
		failed[e.GetPath()] = true
	}
	for _, p := range asked {
		// A USP Set reports a failed object by its path (OperFailure's
		// requested_path), covering every parameter set in it.
		obj, _ := devicemodel.SplitParameter(p)
		if !failed[p] && !(cmd.GetSet() != nil && failed[obj]) {
			return nil
		}
	}
	e := errs[0]
	code := devicemodel.Code(e.GetCode())
	if code == devicemodel.CodeUnspecified {
		code = devicemodel.CodeInternal
	}
	msg := e.GetMessage()
	if len(asked) > 1 {
		msg = fmt.Sprintf("all %d paths failed; %s: %s", len(asked), e.GetPath(), e.GetMessage())
	} else if e.GetPath() != "" {
		msg = fmt.Sprintf("%s: %s", e.GetPath(), e.GetMessage())
	}
	return &devicemodel.Error{Code: code, Message: msg, DeviceFault: e.GetDeviceFault()}
}
