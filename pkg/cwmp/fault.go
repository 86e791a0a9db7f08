package cwmp

import (
	"errors"
	"fmt"

	"github.com/duet-dm/duet/pkg/devicemodel"
)

// ACS fault codes (TR-069 A.5.1).
const (
	FaultACSMethodNotSupported uint32 = 8000
	FaultACSRequestDenied      uint32 = 8001
	FaultACSInternalError      uint32 = 8002
	FaultACSInvalidArguments   uint32 = 8003
	FaultACSResourcesExceeded  uint32 = 8004
	FaultACSRetryRequest       uint32 = 8005
	FaultACSVersionIncompat    uint32 = 8006
)

// CPE fault codes (TR-069 A.5.2).
const (
	FaultMethodNotSupported      uint32 = 9000
	FaultRequestDenied           uint32 = 9001
	FaultInternalError           uint32 = 9002
	FaultInvalidArguments        uint32 = 9003
	FaultResourcesExceeded       uint32 = 9004
	FaultInvalidParameterName    uint32 = 9005
	FaultInvalidParameterType    uint32 = 9006
	FaultInvalidParameterValue   uint32 = 9007
	FaultNotWritable             uint32 = 9008
	FaultNotificationRejected    uint32 = 9009
	FaultDownloadFailure         uint32 = 9010
	FaultUploadFailure           uint32 = 9011
	FaultTransferAuthFailure     uint32 = 9012
	FaultUnsupportedProtocol     uint32 = 9013
	FaultMulticastJoin           uint32 = 9014
	FaultFileServerUnreachable   uint32 = 9015
	FaultFileAccess              uint32 = 9016
	FaultDownloadIncomplete      uint32 = 9017
	FaultFileCorrupted           uint32 = 9018
	FaultFileAuthentication      uint32 = 9019
	FaultTimeWindowExpired       uint32 = 9020
	FaultCancelNotPermitted      uint32 = 9021
	FaultInvalidUUID             uint32 = 9022
	FaultUnknownEE               uint32 = 9023
	FaultDisabledEE              uint32 = 9024
	FaultDUEEMismatch            uint32 = 9025
	FaultDuplicateDU             uint32 = 9026
	FaultSystemResourcesExceeded uint32 = 9027
	FaultUnknownDU               uint32 = 9028
	FaultInvalidDUState          uint32 = 9029
	FaultDUDowngrade             uint32 = 9030
	FaultDUVersionNotSpecified   uint32 = 9031
	FaultDUVersionExists         uint32 = 9032
)

// FaultInfo describes one standard fault code.
type FaultInfo struct {
	Code    uint32
	Message string
	// Client is true when faultcode is "Client" (the request was at fault).
	// The column is partly unconfirmed (TR-069 A.5.1, TR-069 A.5.2): don't branch on it.
	Client bool
	// Domain is the devicemodel.Code the fault maps to (FaultToCode).
	Domain devicemodel.Code
}

// Faults lists every standard ACS (8000–8006) and CPE (9000–9032) fault.
var Faults = map[uint32]FaultInfo{
	8000: {8000, "Method not supported", false, devicemodel.CodeUnsupported},
	8001: {8001, "Request denied (no reason specified)", false, devicemodel.CodeDenied},
	8002: {8002, "Internal error", false, devicemodel.CodeInternal},
	8003: {8003, "Invalid arguments", true, devicemodel.CodeInvalidArgument},
	8004: {8004, "Resources exceeded", false, devicemodel.CodeResourcesExceeded},
	8005: {8005, "Retry request", false, devicemodel.CodeUnavailable},
	8006: {8006, "ACS version incompatible with CPE", false, devicemodel.CodeUnsupported},

	9000: {9000, "Method not supported", false, devicemodel.CodeUnsupported},
	9001: {9001, "Request denied (no reason specified)", false, devicemodel.CodeDenied},
	9002: {9002, "Internal error", false, devicemodel.CodeInternal},
	9003: {9003, "Invalid arguments", true, devicemodel.CodeInvalidArgument},
	9004: {9004, "Resources exceeded", false, devicemodel.CodeResourcesExceeded},
	9005: {9005, "Invalid parameter name", true, devicemodel.CodeInvalidPath},
	9006: {9006, "Invalid parameter type", true, devicemodel.CodeInvalidType},
	9007: {9007, "Invalid parameter value", true, devicemodel.CodeInvalidValue},
	9008: {9008, "Attempt to set a non-writable parameter", true, devicemodel.CodeNotWritable},
	9009: {9009, "Notification request rejected", false, devicemodel.CodeNotificationDenied},
	// 9010–9020: every flavour of file-transfer failure is a transfer failure.
	9010: {9010, "File transfer failure", false, devicemodel.CodeTransferFailed},
	9011: {9011, "Upload failure", false, devicemodel.CodeTransferFailed},
	9012: {9012, "File transfer server authentication failure", false, devicemodel.CodeTransferFailed},
	9013: {9013, "Unsupported protocol for file transfer", false, devicemodel.CodeTransferFailed},
	9014: {9014, "File transfer failure: unable to join multicast group", false, devicemodel.CodeTransferFailed},
	9015: {9015, "File transfer failure: unable to contact file server", false, devicemodel.CodeTransferFailed},
	9016: {9016, "File transfer failure: unable to access file", false, devicemodel.CodeTransferFailed},
	9017: {9017, "File transfer failure: unable to complete download", false, devicemodel.CodeTransferFailed},
	9018: {9018, "File transfer failure: file corrupted", false, devicemodel.CodeTransferFailed},
	9019: {9019, "File transfer failure: file authentication failure", false, devicemodel.CodeTransferFailed},
	9020: {9020, "File transfer failure: unable to complete download within specified time windows", false, devicemodel.CodeTransferFailed},
	// 9021: the transfer is in a state that forbids cancelling: a state
	// conflict, not a bad request.
	9021: {9021, "Cancelation of file transfer not permitted in current transfer state", false, devicemodel.CodeConflict},
	9022: {9022, "Invalid UUID format", false, devicemodel.CodeInvalidArgument},
	9023: {9023, "Unknown Execution Environment", false, devicemodel.CodeNotFound},
	9024: {9024, "Disabled Execution Environment", false, devicemodel.CodeUnavailable},
	9025: {9025, "Deployment Unit to Execution Environment mismatch", false, devicemodel.CodeConflict},
	9026: {9026, "Duplicate Deployment Unit", false, devicemodel.CodeConflict},
	9027: {9027, "System resources exceeded", false, devicemodel.CodeResourcesExceeded},
	9028: {9028, "Unknown Deployment Unit", false, devicemodel.CodeNotFound},
	9029: {9029, "Invalid Deployment Unit state", false, devicemodel.CodeConflict},
	9030: {9030, "Invalid DU update: downgrade not permitted", false, devicemodel.CodeDenied},
	9031: {9031, "Invalid DU update: version not specified", false, devicemodel.CodeInvalidArgument},
	9032: {9032, "Invalid DU update: version already exists", false, devicemodel.CodeConflict},
}

// FaultMessage returns the standard text for code, or "Vendor fault" /
// "Fault <n>".
func FaultMessage(code uint32) string {
	if fi, ok := Faults[code]; ok {
		return fi.Message
	}
	if code >= 8800 && code <= 8899 || code >= 9800 && code <= 9899 {
		return "Vendor fault"
	}
	return fmt.Sprintf("Fault %d", code)
}

// FaultSOAPCode returns the SOAP faultcode ("Client" or "Server") for code.
func FaultSOAPCode(code uint32) string {
	if fi, ok := Faults[code]; ok && fi.Client {
		return "Client"
	}
	return "Server"
}

// FaultToCode maps a CWMP fault code to the domain code:
//
//	0                → CodeUnspecified (success)
//	8000/9000, 8006  → CodeUnsupported
//	8001/9001        → CodeDenied
//	8002/9002        → CodeInternal
//	8003/9003        → CodeInvalidArgument
//	8004/9004        → CodeResourcesExceeded
//	8005             → CodeUnavailable (retry)
//	9005             → CodeInvalidPath
//	9006             → CodeInvalidType
//	9007             → CodeInvalidValue
//	9008             → CodeNotWritable
//	9009             → CodeNotificationDenied
//	9010–9020        → CodeTransferFailed
//	9021             → CodeConflict (cancel not permitted in this state)
//	9022, 9031       → CodeInvalidArgument
//	9023, 9028       → CodeNotFound
//	9024             → CodeUnavailable
//	9025, 9026, 9029, 9032 → CodeConflict
//	9027             → CodeResourcesExceeded
//	9030             → CodeDenied
//	vendor and reserved codes → CodeInternal
func FaultToCode(fault uint32) devicemodel.Code {
	if fault == 0 {
		return devicemodel.CodeUnspecified
	}
	if fi, ok := Faults[fault]; ok {
		return fi.Domain
	}
	return devicemodel.CodeInternal
}

// CodeToFault maps a domain code to the CPE fault a CPE would send
// (9xxx). Codes without a CWMP counterpart become 9002 Internal error;
// CodeNotFound and CodeObjectNotCreatable become 9005 (a bad name is what a
// CPE reports for both); CodeUnauthenticated becomes 9001.
func CodeToFault(c devicemodel.Code) uint32 {
	switch c {
	case devicemodel.CodeUnsupported:
		return FaultMethodNotSupported
	case devicemodel.CodeDenied, devicemodel.CodeUnauthenticated:
		return FaultRequestDenied
	case devicemodel.CodeInvalidArgument:
		return FaultInvalidArguments
	case devicemodel.CodeResourcesExceeded:
		return FaultResourcesExceeded
	case devicemodel.CodeInvalidPath, devicemodel.CodeNotFound, devicemodel.CodeObjectNotCreatable:
		return FaultInvalidParameterName
	case devicemodel.CodeInvalidType:
		return FaultInvalidParameterType
	case devicemodel.CodeInvalidValue:
		return FaultInvalidParameterValue
	case devicemodel.CodeNotWritable:
		return FaultNotWritable
	case devicemodel.CodeNotificationDenied:
		return FaultNotificationRejected
	case devicemodel.CodeTransferFailed:
		return FaultDownloadFailure
	case devicemodel.CodeConflict:
		return FaultCancelNotPermitted
	}
	return FaultInternalError
}

// NewFault builds a Fault for code with the standard faultcode and, when
// msg is empty, the standard FaultString.
func NewFault(code uint32, msg string) *Fault {
	if msg == "" {
		msg = FaultMessage(code)
	}
	return &Fault{SOAPCode: FaultSOAPCode(code), SOAPString: "CWMP fault",
		Detail: CWMPFault{FaultCode: code, FaultString: msg}}
}

// Err converts the fault to the domain error, keeping the CWMP number in
// DeviceFault and one ParamError per SetParameterValuesFault.
func (f *Fault) Err() *devicemodel.Error {
	e := &devicemodel.Error{
		Code:        FaultToCode(f.Detail.FaultCode),
		Message:     f.Detail.FaultString,
		DeviceFault: f.Detail.FaultCode,
	}
	if e.Message == "" {
		e.Message = FaultMessage(f.Detail.FaultCode)
	}
	for _, p := range f.Detail.SetParameterValuesFault {
		e.Params = append(e.Params, devicemodel.ParamError{
			Path: p.ParameterName, Code: FaultToCode(p.FaultCode), DeviceFault: p.FaultCode, Message: p.FaultString,
		})
	}
	return e
}

// FaultFromError builds the CPE fault for err: a *devicemodel.Error keeps
// its DeviceFault when set, else CodeToFault(Code); its Params become
// SetParameterValuesFault entries. Any other error is 9002.
func FaultFromError(err error) *Fault {
	var de *devicemodel.Error
	if !errors.As(err, &de) {
		return NewFault(FaultInternalError, err.Error())
	}
	code := de.DeviceFault
	if code == 0 {
		code = CodeToFault(de.Code)
	}
	f := NewFault(code, de.Message)
	for _, p := range de.Params {
		pc := p.DeviceFault
		if pc == 0 {
			pc = CodeToFault(p.Code)
		}
		msg := p.Message
		if msg == "" {
			msg = FaultMessage(pc)
		}
		f.Detail.SetParameterValuesFault = append(f.Detail.SetParameterValuesFault,
			SetParameterValuesFault{ParameterName: p.Path, FaultCode: pc, FaultString: msg})
	}
	return f
}
