package bus

import (
	"errors"

	"github.com/duet-dm/duet/pkg/devicemodel"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// ErrorToProto converts a Go error into the wire error. Non-domain errors
// become ERROR_CODE_INTERNAL. nil gives nil.
func ErrorToProto(err error) *duetv1.Error {
	if err == nil {
		return nil
	}
	var e *devicemodel.Error
	if !errors.As(err, &e) {
		return &duetv1.Error{Code: duetv1.ErrorCode_ERROR_CODE_INTERNAL, Message: err.Error()}
	}
	out := &duetv1.Error{
		Code:        duetv1.ErrorCode(e.Code),
		Message:     e.Message,
		DeviceFault: e.DeviceFault,
	}
	for _, p := range e.Params {
		out.Params = append(out.Params, &duetv1.ParamError{
			Path: p.Path, Code: duetv1.ErrorCode(p.Code), DeviceFault: p.DeviceFault, Message: p.Message,
		})
	}
	return out
}

// ErrorFromProto converts the wire error to the domain error; nil gives nil.
func ErrorFromProto(e *duetv1.Error) *devicemodel.Error {
	if e == nil {
		return nil
	}
	out := &devicemodel.Error{Code: devicemodel.Code(e.Code), Message: e.Message, DeviceFault: e.DeviceFault}
	for _, p := range e.Params {
		out.Params = append(out.Params, devicemodel.ParamError{
			Path: p.Path, Code: devicemodel.Code(p.Code), DeviceFault: p.DeviceFault, Message: p.Message,
		})
	}
	return out
}

// ResultError is a CommandResult carrying only an error.
func ResultError(cmd *duetv1.Command, err error) *duetv1.CommandResult {
	return &duetv1.CommandResult{CommandId: cmd.GetId(), DeviceId: cmd.GetDeviceId(), Error: ErrorToProto(err)}
}
