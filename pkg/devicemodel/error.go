// Package devicemodel is Duet's domain: device identity, parameter paths and
// values, and the one error type every edge maps to its own wire (HTTP
// statuses in the API, USP 7xxx codes, CWMP 9xxx/8xxx faults).
//
// It imports the standard library only.
package devicemodel

import (
	"errors"
	"fmt"
)

// Code classifies a failure independently of the protocol that reported it.
// The numeric values are part of the public bus schema (duet.v1.ErrorCode)
// and must never be renumbered.
type Code int32

const (
	CodeUnspecified        Code = 0
	CodeInternal           Code = 1  // a bug or an unexpected state on our side or the device's
	CodeInvalidArgument    Code = 2  // the request itself is malformed
	CodeNotFound           Code = 3  // unknown device, object or instance
	CodeInvalidPath        Code = 4  // bad path syntax, or a path the device does not support
	CodeInvalidValue       Code = 5  // value out of range or not an allowed enumeration
	CodeInvalidType        Code = 6  // value does not parse as the parameter's type
	CodeNotWritable        Code = 7  // attempt to set a read-only parameter
	CodeUnsupported        Code = 8  // method, message or operation not supported
	CodeDenied             Code = 9  // request denied, permission or ACL
	CodeResourcesExceeded  Code = 10 // device or Duet out of resources, too many in flight
	CodeTimeout            Code = 11 // no answer in time; the outcome may be unknown
	CodeUnavailable        Code = 12 // device offline or unreachable
	CodeConflict           Code = 13 // value conflict, duplicate unique key
	CodeCommandFailed      Code = 14 // an Operate command ran and failed
	CodeTransferFailed     Code = 15 // a file transfer failed
	CodeCancelled          Code = 16 // cancelled before or while running
	CodeNotificationDenied Code = 17 // notification / subscription request rejected
	CodeObjectNotCreatable Code = 18 // Add on something that is not a creatable table
	CodeUnauthenticated    Code = 19 // missing or wrong credentials
	CodeOutcomeUnknown     Code = 20 // sent, but whether it took effect is unknown
	CodeVersionUnchanged   Code = 21 // a firmware upgrade ended with the device on another version than the file's
)

var codeNames = map[Code]string{
	CodeUnspecified:        "unspecified",
	CodeInternal:           "internal",
	CodeInvalidArgument:    "invalid_argument",
	CodeNotFound:           "not_found",
	CodeInvalidPath:        "invalid_path",
	CodeInvalidValue:       "invalid_value",
	CodeInvalidType:        "invalid_type",
	CodeNotWritable:        "not_writable",
	CodeUnsupported:        "unsupported",
	CodeDenied:             "denied",
	CodeResourcesExceeded:  "resources_exceeded",
	CodeTimeout:            "timeout",
	CodeUnavailable:        "unavailable",
	CodeConflict:           "conflict",
	CodeCommandFailed:      "command_failed",
	CodeTransferFailed:     "transfer_failed",
	CodeCancelled:          "cancelled",
	CodeNotificationDenied: "notification_denied",
	CodeObjectNotCreatable: "object_not_creatable",
	CodeUnauthenticated:    "unauthenticated",
	CodeOutcomeUnknown:     "outcome_unknown",
	CodeVersionUnchanged:   "version_unchanged",
}

// String returns the stable snake_case name used in JSON and logs.
func (c Code) String() string {
	if s, ok := codeNames[c]; ok {
		return s
	}
	return fmt.Sprintf("code_%d", int32(c))
}

// ParamError is the failure of one parameter or object inside a larger
// request (a Set with several parameters, an Add with settings).
type ParamError struct {
	Path        string
	Code        Code
	DeviceFault uint32 // the code as the device reported it (9xxx, 7xxx), 0 if none
	Message     string
}

// Error is the one error type of Duet. Code is the domain classification;
// DeviceFault keeps the protocol's own number so nothing is lost on the way
// through the bus.
type Error struct {
	Code        Code
	Message     string
	DeviceFault uint32
	Params      []ParamError
}

func (e *Error) Error() string {
	if e == nil {
		return "<nil>"
	}
	if e.DeviceFault != 0 {
		return fmt.Sprintf("%s (device fault %d): %s", e.Code, e.DeviceFault, e.Message)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

// Errorf builds an *Error with a formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the Code of err if it is (or wraps) an *Error,
// CodeInternal for any other non-nil error and CodeUnspecified for nil.
func ErrorCode(err error) Code {
	if err == nil {
		return CodeUnspecified
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// ErrorMessage returns the human message of err without the code prefix.
func ErrorMessage(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return err.Error()
}
