package usp

import (
	"errors"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/proto/usp/uspmsg"
)

// USP error codes, message level (TR-369 "Error Codes").
const (
	ErrCodeMessageFailed           uint32 = 7000
	ErrCodeMessageNotSupported     uint32 = 7001
	ErrCodeRequestDenied           uint32 = 7002
	ErrCodeInternalError           uint32 = 7003
	ErrCodeInvalidArguments        uint32 = 7004
	ErrCodeResourcesExceeded       uint32 = 7005
	ErrCodePermissionDenied        uint32 = 7006
	ErrCodeInvalidConfiguration    uint32 = 7007
	ErrCodeInvalidPathSyntax       uint32 = 7008
	ErrCodeParameterActionFailed   uint32 = 7009
	ErrCodeUnsupportedParameter    uint32 = 7010
	ErrCodeInvalidType             uint32 = 7011
	ErrCodeInvalidValue            uint32 = 7012
	ErrCodeParamNotWritable        uint32 = 7013
	ErrCodeValueConflict           uint32 = 7014
	ErrCodeOperationError          uint32 = 7015
	ErrCodeObjectDoesNotExist      uint32 = 7016
	ErrCodeObjectNotCreated        uint32 = 7017
	ErrCodeObjectNotTable          uint32 = 7018
	ErrCodeObjectNotCreatable      uint32 = 7019
	ErrCodeObjectNotUpdated        uint32 = 7020
	ErrCodeRequiredParamFailed     uint32 = 7021
	ErrCodeCommandFailure          uint32 = 7022
	ErrCodeCommandCanceled         uint32 = 7023
	ErrCodeDeleteFailure           uint32 = 7024
	ErrCodeDuplicateKey            uint32 = 7025
	ErrCodeInvalidPath             uint32 = 7026
	ErrCodeInvalidCommandArguments uint32 = 7027
	ErrCodeRegisterFailure         uint32 = 7028
	ErrCodeAlreadyInUse            uint32 = 7029
	ErrCodeDeregisterFailure       uint32 = 7030
	ErrCodePathAlreadyRegistered   uint32 = 7031
)

// USP error codes, record level (TR-369 "Record errors"). Used in Error messages that
// answer bad records and as DisconnectRecord.reason_code.
const (
	ErrCodeRecordNotParsed          uint32 = 7100
	ErrCodeSecureSessionRequired    uint32 = 7101
	ErrCodeSecureSessionUnsupported uint32 = 7102
	ErrCodeSARUnsupported           uint32 = 7103
	ErrCodeInvalidRecordValue       uint32 = 7104
	ErrCodeSessionTerminated        uint32 = 7105
	ErrCodeSessionNotAllowed        uint32 = 7106
)

var errCodeNames = map[uint32]string{
	7000: "Message failed", 7001: "Message not supported", 7002: "Request denied",
	7003: "Internal error", 7004: "Invalid arguments", 7005: "Resources exceeded",
	7006: "Permission denied", 7007: "Invalid configuration", 7008: "Invalid path syntax",
	7009: "Parameter action failed", 7010: "Unsupported parameter", 7011: "Invalid type",
	7012: "Invalid value", 7013: "Attempt to update non-writeable parameter",
	7014: "Value conflict", 7015: "Operation error", 7016: "Object does not exist",
	7017: "Object could not be created", 7018: "Object is not a table",
	7019: "Attempt to create non-creatable object", 7020: "Object could not be updated",
	7021: "Required parameter failed", 7022: "Command failure", 7023: "Command canceled",
	7024: "Delete failure", 7025: "Object exists with duplicate key", 7026: "Invalid path",
	7027: "Invalid command arguments", 7028: "Register failure", 7029: "Already in use",
	7030: "Deregister failure", 7031: "Path already registered",
	7100: "Record could not be parsed", 7101: "Secure session required",
	7102: "Secure session not supported", 7103: "Segmentation and reassembly not supported",
	7104: "Invalid Record value", 7105: "Session Context terminated",
	7106: "Session Context not allowed",
}

// ErrCodeName returns the spec's name for a USP error code, or "" when the
// code is not one of 7000–7031/7100–7106.
func ErrCodeName(code uint32) string { return errCodeNames[code] }

// errToCode is the USP → domain table. Codes not listed (7200–7299 data-model
// codes, 7800–7999 vendor codes, anything else) map to CodeInternal; the
// number itself survives in devicemodel.Error.DeviceFault.
var errToCode = map[uint32]devicemodel.Code{
	7000: devicemodel.CodeInternal,           // Message failed (general)
	7001: devicemodel.CodeUnsupported,        // Message not supported
	7002: devicemodel.CodeDenied,             // Request denied
	7003: devicemodel.CodeInternal,           // Internal error
	7004: devicemodel.CodeInvalidArgument,    // Invalid arguments
	7005: devicemodel.CodeResourcesExceeded,  // Resources exceeded
	7006: devicemodel.CodeDenied,             // Permission denied
	7007: devicemodel.CodeInvalidValue,       // Invalid configuration: the result would be invalid
	7008: devicemodel.CodeInvalidPath,        // Invalid path syntax
	7009: devicemodel.CodeInternal,           // Parameter action failed (general)
	7010: devicemodel.CodeInvalidPath,        // Unsupported parameter
	7011: devicemodel.CodeInvalidType,        // Invalid type
	7012: devicemodel.CodeInvalidValue,       // Invalid value
	7013: devicemodel.CodeNotWritable,        // Non-writeable parameter
	7014: devicemodel.CodeConflict,           // Value conflict
	7015: devicemodel.CodeInternal,           // Operation error (general object failure)
	7016: devicemodel.CodeNotFound,           // Object does not exist
	7017: devicemodel.CodeObjectNotCreatable, // Object could not be created
	7018: devicemodel.CodeObjectNotCreatable, // Object is not a table
	7019: devicemodel.CodeObjectNotCreatable, // Non-creatable object
	7020: devicemodel.CodeInternal,           // Object could not be updated
	7021: devicemodel.CodeInvalidArgument,    // Required parameter failed; details in param errors
	7022: devicemodel.CodeCommandFailed,      // Command failure
	7023: devicemodel.CodeCancelled,          // Command canceled
	7024: devicemodel.CodeInternal,           // Delete failure
	7025: devicemodel.CodeConflict,           // Duplicate unique key
	7026: devicemodel.CodeInvalidPath,        // Invalid path (not in the supported DM)
	7027: devicemodel.CodeCommandFailed,      // Invalid command arguments
	7028: devicemodel.CodeInternal,           // Register failure
	7029: devicemodel.CodeConflict,           // Already in use
	7030: devicemodel.CodeInternal,           // Deregister failure
	7031: devicemodel.CodeConflict,           // Path already registered
	7100: devicemodel.CodeInvalidArgument,    // Record could not be parsed
	7101: devicemodel.CodeDenied,             // Secure session required
	7102: devicemodel.CodeUnsupported,        // Secure session not supported
	7103: devicemodel.CodeUnsupported,        // SAR not supported
	7104: devicemodel.CodeInvalidArgument,    // Invalid Record value
	7105: devicemodel.CodeUnavailable,        // Session Context terminated
	7106: devicemodel.CodeUnsupported,        // Session Context not allowed
}

// ErrToCode maps a USP error code to the domain Code. The table:
//
//	7000 7003 7009 7015 7020 7024 7028 7030   Internal
//	7001 7102 7103 7106                       Unsupported
//	7002 7006 7101                            Denied
//	7004 7021 7100 7104                       InvalidArgument
//	7005                                      ResourcesExceeded
//	7007 7012                                 InvalidValue
//	7008 7010 7026                            InvalidPath
//	7011                                      InvalidType
//	7013                                      NotWritable
//	7014 7025 7029 7031                       Conflict
//	7016                                      NotFound
//	7017 7018 7019                            ObjectNotCreatable
//	7022 7027                                 CommandFailed
//	7023                                      Cancelled
//	7105                                      Unavailable
//	0                                         Unspecified (no error)
//	anything else (7200–7299, 7800–7999 ...)  Internal
func ErrToCode(code uint32) devicemodel.Code {
	if code == 0 {
		return devicemodel.CodeUnspecified
	}
	if c, ok := errToCode[code]; ok {
		return c
	}
	return devicemodel.CodeInternal
}

// CodeToErr maps a domain Code to the USP error code sent on the wire. It
// never returns 0, because 0 means success in USP result fields:
//
//	Unspecified Internal     7003   InvalidArgument    7004
//	NotFound                 7016   InvalidPath        7026
//	InvalidValue             7012   InvalidType        7011
//	NotWritable              7013   Unsupported        7001
//	Denied NotificationDenied Unauthenticated      7002
//	ResourcesExceeded        7005   Conflict           7014
//	CommandFailed TransferFailed  7022   Cancelled     7023
//	ObjectNotCreatable       7019
//	Timeout Unavailable OutcomeUnknown and others  7000
func CodeToErr(c devicemodel.Code) uint32 {
	switch c {
	case devicemodel.CodeUnspecified, devicemodel.CodeInternal:
		return ErrCodeInternalError
	case devicemodel.CodeInvalidArgument:
		return ErrCodeInvalidArguments
	case devicemodel.CodeNotFound:
		return ErrCodeObjectDoesNotExist
	case devicemodel.CodeInvalidPath:
		return ErrCodeInvalidPath
	case devicemodel.CodeInvalidValue:
		return ErrCodeInvalidValue
	case devicemodel.CodeInvalidType:
		return ErrCodeInvalidType
	case devicemodel.CodeNotWritable:
		return ErrCodeParamNotWritable
	case devicemodel.CodeUnsupported:
		return ErrCodeMessageNotSupported
	case devicemodel.CodeDenied, devicemodel.CodeNotificationDenied, devicemodel.CodeUnauthenticated:
		return ErrCodeRequestDenied
	case devicemodel.CodeResourcesExceeded:
		return ErrCodeResourcesExceeded
	case devicemodel.CodeConflict:
		return ErrCodeValueConflict
	case devicemodel.CodeCommandFailed, devicemodel.CodeTransferFailed:
		return ErrCodeCommandFailure
	case devicemodel.CodeCancelled:
		return ErrCodeCommandCanceled
	case devicemodel.CodeObjectNotCreatable:
		return ErrCodeObjectNotCreatable
	}
	return ErrCodeMessageFailed
}

// ErrCodeOf returns the USP code to send for err: the device fault carried
// by a *devicemodel.Error when it is already a USP code (7000–7999), so a
// code passes through unchanged, else CodeToErr of its Code. nil gives 0.
func ErrCodeOf(err error) uint32 {
	if err == nil {
		return 0
	}
	var e *devicemodel.Error
	if errors.As(err, &e) && e.DeviceFault >= 7000 && e.DeviceFault <= 7999 {
		return e.DeviceFault
	}
	return CodeToErr(devicemodel.ErrorCode(err))
}

// DomainError converts a USP Error message into the domain error, keeping
// the wire codes in DeviceFault.
func DomainError(e *uspmsg.Error) *devicemodel.Error {
	out := &devicemodel.Error{
		Code:        ErrToCode(e.GetErrCode()),
		Message:     e.GetErrMsg(),
		DeviceFault: e.GetErrCode(),
	}
	if out.Code == devicemodel.CodeUnspecified {
		// An Error message with err_code 0 is still a failure.
		out.Code = devicemodel.CodeInternal
	}
	for _, pe := range e.GetParamErrs() {
		out.Params = append(out.Params, devicemodel.ParamError{
			Path:        pe.GetParamPath(),
			Code:        ErrToCode(pe.GetErrCode()),
			DeviceFault: pe.GetErrCode(),
			Message:     pe.GetErrMsg(),
		})
	}
	return out
}
