package cwmp

import "time"

// Message is one CWMP RPC request, response or a SOAP Fault: the single
// child of soap-env:Body. MethodName is the element's local name, e.g.
// "Inform" or "GetParameterValuesResponse".
type Message interface {
	MethodName() string
}

// Header holds the CWMP SOAP header elements (TR-069 §3.5). NoMoreRequests
// and unknown header elements are ignored on decode and never sent
// (docs/cwmp-interop.md #28).
type Header struct {
	// ID is the opaque request ID. A response carries its request's ID.
	// Empty means absent (docs/cwmp-interop.md #4); Encode then omits it.
	ID string
	// HoldRequests (ACS→CPE) stops the CPE sending its own requests.
	HoldRequests bool
	// SessionTimeout (CPE→ACS in Inform, CWMP 1.3+) in seconds; 0 = absent.
	SessionTimeout uint32
	// SupportedCWMPVersions (CPE→ACS in Inform, 1.4), e.g. "1.0,1.1,1.2".
	SupportedCWMPVersions string
	// UseCWMPVersion (ACS→CPE in InformResponse, 1.4).
	UseCWMPVersion string
}

// Envelope is one decoded or to-be-encoded SOAP message.
type Envelope struct {
	// Namespace is the cwmp namespace URI, e.g. "urn:dslforum-org:cwmp-1-0".
	// On decode it is the URI the peer used (empty when the message had no
	// cwmp-qualified element, e.g. a bare Fault); reply with it unchanged
	// (TR-069 §3.5). On encode, empty means DefaultNamespace.
	Namespace string
	Header    Header
	// Body is the one message, or nil for an empty message (docs/cwmp-interop.md #6).
	Body Message
}

// IsEmpty reports whether the envelope carries no message: the CPE's empty
// POST or the ACS's empty (204) reply.
func (e *Envelope) IsEmpty() bool { return e == nil || e.Body == nil }

// ValueType is a TR-106 data type as carried in xsi:type, without prefix.
type ValueType string

// TR-106 value types (TR-069 A.2.1).
const (
	TypeString       ValueType = "string"
	TypeInt          ValueType = "int"
	TypeUnsignedInt  ValueType = "unsignedInt"
	TypeLong         ValueType = "long"
	TypeUnsignedLong ValueType = "unsignedLong"
	TypeBoolean      ValueType = "boolean"
	TypeDateTime     ValueType = "dateTime"
	TypeBase64       ValueType = "base64"
	TypeHexBinary    ValueType = "hexBinary"
)

// Value is a typed parameter value. Data is kept exactly as received for
// strings; typed values are trimmed on decode (docs/cwmp-interop.md #12).
type Value struct {
	Type ValueType
	Data string
}

// ParameterValueStruct is one name/value pair.
type ParameterValueStruct struct {
	Name  string
	Value Value `cwmp:"Value,keep"`
}

// DeviceIdStruct identifies the CPE in an Inform (TR-069 A.3.3). OUI and
// SerialNumber are required; Decode fails without them (docs/cwmp-interop.md #16).
type DeviceIdStruct struct {
	Manufacturer string
	OUI          string `cwmp:"OUI,required"`
	ProductClass string
	SerialNumber string `cwmp:"SerialNumber,required"`
}

// EventStruct is one Inform event (see the Event* constants).
type EventStruct struct {
	EventCode  string
	CommandKey string
}

// ParameterInfoStruct is one GetParameterNames result; object names end in ".".
type ParameterInfoStruct struct {
	Name     string
	Writable bool
}

// SetParameterAttributesStruct is one SetParameterAttributes entry.
type SetParameterAttributesStruct struct {
	Name               string
	NotificationChange bool
	Notification       int
	AccessListChange   bool
	AccessList         []string `cwmp:"AccessList,array=xsd:string"`
}

// ParameterAttributeStruct is one GetParameterAttributes result.
type ParameterAttributeStruct struct {
	Name         string
	Notification int
	AccessList   []string `cwmp:"AccessList,array=xsd:string"`
}

// FaultStruct reports a transfer or DU operation result; FaultCode 0 = success.
type FaultStruct struct {
	FaultCode   uint32
	FaultString string `cwmp:"FaultString,keep"`
}

// QueuedTransferStruct is one GetQueuedTransfers entry. State: 1 not yet
// started, 2 in progress, 3 completed.
type QueuedTransferStruct struct {
	CommandKey string
	State      int
}

// AllQueuedTransferStruct is one GetAllQueuedTransfers entry.
type AllQueuedTransferStruct struct {
	CommandKey     string
	State          int
	IsDownload     bool
	FileType       string
	FileSize       uint32
	TargetFileName string
}

// TimeWindowStruct is one ScheduleDownload window.
type TimeWindowStruct struct {
	WindowStart uint32
	WindowEnd   uint32
	WindowMode  string
	UserMessage string `cwmp:"UserMessage,keep"`
	MaxRetries  int
}

// ArgStruct is one RequestDownload FileTypeArg entry.
type ArgStruct struct {
	Name  string
	Value string `cwmp:"Value,keep"`
}

// OptionStruct is one GetOptions result.
type OptionStruct struct {
	OptionName     string
	VoucherSN      string
	State          uint32
	Mode           int
	StartDate      time.Time
	ExpirationDate time.Time
	IsTransferable bool
}

// DUOperationKind selects the ChangeDUState operation struct.
type DUOperationKind string

// ChangeDUState operation kinds; the wire type is "cwmp:<Kind>OpStruct".
const (
	DUInstall   DUOperationKind = "Install"
	DUUpdate    DUOperationKind = "Update"
	DUUninstall DUOperationKind = "Uninstall"
)

// DUOperation is one ChangeDUState operation: InstallOpStruct,
// UpdateOpStruct or UninstallOpStruct depending on Kind (TR-069 A.3.2). Fields
// that do not belong to the kind are not encoded.
type DUOperation struct {
	Kind            DUOperationKind
	URL             string
	UUID            string
	Username        string
	Password        string
	ExecutionEnvRef string
	Version         string
}

// OpResultStruct is one DUStateChangeComplete result.
type OpResultStruct struct {
	UUID                 string
	DeploymentUnitRef    string
	Version              string
	CurrentState         string
	Resolved             bool
	ExecutionUnitRefList string
	StartTime            time.Time
	CompleteTime         time.Time
	Fault                FaultStruct
}

// AutonOpResultStruct is one AutonomousDUStateChangeComplete result.
type AutonOpResultStruct struct {
	UUID                 string
	DeploymentUnitRef    string
	Version              string
	CurrentState         string
	Resolved             bool
	ExecutionUnitRefList string
	StartTime            time.Time
	CompleteTime         time.Time
	Fault                FaultStruct
	OperationPerformed   string
}

// ---- ACS → CPE requests and the CPE's responses (TR-069 A.3.2) ----

// GetRPCMethods is valid in both directions.
type GetRPCMethods struct{}

type GetRPCMethodsResponse struct {
	MethodList []string `cwmp:"MethodList,array=xsd:string"`
}

type SetParameterValues struct {
	ParameterList []ParameterValueStruct `cwmp:"ParameterList,array=cwmp:ParameterValueStruct"`
	ParameterKey  string
}

// SetParameterValuesResponse Status: 0 applied, 1 applied after a reboot.
type SetParameterValuesResponse struct {
	Status int
}

type GetParameterValues struct {
	ParameterNames []string `cwmp:"ParameterNames,array=xsd:string"`
}

type GetParameterValuesResponse struct {
	ParameterList []ParameterValueStruct `cwmp:"ParameterList,array=cwmp:ParameterValueStruct"`
}

type GetParameterNames struct {
	ParameterPath string
	NextLevel     bool
}

type GetParameterNamesResponse struct {
	ParameterList []ParameterInfoStruct `cwmp:"ParameterList,array=cwmp:ParameterInfoStruct"`
}

type SetParameterAttributes struct {
	ParameterList []SetParameterAttributesStruct `cwmp:"ParameterList,array=cwmp:SetParameterAttributesStruct"`
}

type SetParameterAttributesResponse struct{}

type GetParameterAttributes struct {
	ParameterNames []string `cwmp:"ParameterNames,array=xsd:string"`
}

type GetParameterAttributesResponse struct {
	ParameterList []ParameterAttributeStruct `cwmp:"ParameterList,array=cwmp:ParameterAttributeStruct"`
}

type AddObject struct {
	ObjectName   string
	ParameterKey string
}

// AddObjectResponse: a missing or non-numeric InstanceNumber is a decode
// error (docs/cwmp-interop.md #16).
type AddObjectResponse struct {
	InstanceNumber uint32 `cwmp:"InstanceNumber,required"`
	Status         int
}

type DeleteObject struct {
	ObjectName   string
	ParameterKey string
}

type DeleteObjectResponse struct {
	Status int
}

type Reboot struct {
	CommandKey string
}

type RebootResponse struct{}

// Download is always encoded with all ten elements (TR-069 A.3.2).
type Download struct {
	CommandKey     string
	FileType       string
	URL            string
	Username       string
	Password       string `cwmp:"Password,keep"`
	FileSize       uint32
	TargetFileName string
	DelaySeconds   uint32
	SuccessURL     string
	FailureURL     string
}

// DownloadResponse Status: 0 done, 1 a TransferComplete will follow.
type DownloadResponse struct {
	Status       int
	StartTime    time.Time
	CompleteTime time.Time
}

type Upload struct {
	CommandKey   string
	FileType     string
	URL          string
	Username     string
	Password     string `cwmp:"Password,keep"`
	DelaySeconds uint32
}

type UploadResponse struct {
	Status       int
	StartTime    time.Time
	CompleteTime time.Time
}

type FactoryReset struct{}

type FactoryResetResponse struct{}

type ScheduleInform struct {
	DelaySeconds uint32
	CommandKey   string
}

type ScheduleInformResponse struct{}

type GetQueuedTransfers struct{}

type GetQueuedTransfersResponse struct {
	TransferList []QueuedTransferStruct `cwmp:"TransferList,array=cwmp:QueuedTransferStruct"`
}

type GetAllQueuedTransfers struct{}

type GetAllQueuedTransfersResponse struct {
	TransferList []AllQueuedTransferStruct `cwmp:"TransferList,array=cwmp:AllQueuedTransferStruct"`
}

type ScheduleDownload struct {
	CommandKey     string
	FileType       string
	URL            string
	Username       string
	Password       string `cwmp:"Password,keep"`
	FileSize       uint32
	TargetFileName string
	TimeWindowList []TimeWindowStruct `cwmp:"TimeWindowList,array=cwmp:TimeWindowStruct"`
}

type ScheduleDownloadResponse struct{}

type CancelTransfer struct {
	CommandKey string
}

type CancelTransferResponse struct{}

// ChangeDUState carries its operations as repeated Operations elements, each
// with xsi:type="cwmp:InstallOpStruct" etc. Decode also accepts a wrapper
// Operations element holding *OpStruct children (wire form unconfirmed,
// TR-069 A.3.2).
type ChangeDUState struct {
	Operations []DUOperation `cwmp:"Operations,duops"`
	CommandKey string
}

type ChangeDUStateResponse struct{}

type SetVouchers struct {
	VoucherList []string `cwmp:"VoucherList,array=xsd:base64"`
}

type SetVouchersResponse struct{}

type GetOptions struct {
	OptionName string
}

type GetOptionsResponse struct {
	OptionList []OptionStruct `cwmp:"OptionList,array=cwmp:OptionStruct"`
}

// ---- CPE → ACS requests and the ACS's responses (TR-069 A.3.3) ----

type Inform struct {
	DeviceId      DeviceIdStruct
	Event         []EventStruct `cwmp:"Event,array=cwmp:EventStruct"`
	MaxEnvelopes  uint32
	CurrentTime   time.Time
	RetryCount    uint32
	ParameterList []ParameterValueStruct `cwmp:"ParameterList,array=cwmp:ParameterValueStruct"`
}

// InformResponse MaxEnvelopes is always 1 (TR-069 §3.1).
type InformResponse struct {
	MaxEnvelopes uint32
}

type TransferComplete struct {
	CommandKey   string
	FaultStruct  FaultStruct
	StartTime    time.Time
	CompleteTime time.Time
}

type TransferCompleteResponse struct{}

type AutonomousTransferComplete struct {
	AnnounceURL    string
	TransferURL    string
	IsDownload     bool
	FileType       string
	FileSize       uint32
	TargetFileName string
	FaultStruct    FaultStruct
	StartTime      time.Time
	CompleteTime   time.Time
}

type AutonomousTransferCompleteResponse struct{}

type RequestDownload struct {
	FileType    string
	FileTypeArg []ArgStruct `cwmp:"FileTypeArg,array=cwmp:ArgStruct"`
}

type RequestDownloadResponse struct{}

type Kicked struct {
	Command string
	Referer string
	Arg     string `cwmp:"Arg,keep"`
	Next    string
}

type KickedResponse struct {
	NextURL string
}

type DUStateChangeComplete struct {
	Results    []OpResultStruct `cwmp:"Results,array=cwmp:OpResultStruct"`
	CommandKey string
}

type DUStateChangeCompleteResponse struct{}

type AutonomousDUStateChangeComplete struct {
	Results []AutonOpResultStruct `cwmp:"Results,array=cwmp:AutonOpResultStruct"`
}

type AutonomousDUStateChangeCompleteResponse struct{}

// ---- Faults (TR-069 §3.5, SOAP Fault) ----

// Fault is a SOAP Fault whose detail is a cwmp:Fault.
type Fault struct {
	// SOAPCode is faultcode: "Client" or "Server". Don't branch on it;
	// branch on Detail.FaultCode (TR-069 A.5.2).
	SOAPCode string
	// SOAPString is faultstring, always "CWMP fault" on encode when empty.
	SOAPString string
	Detail     CWMPFault
}

// CWMPFault is the cwmp:Fault element.
type CWMPFault struct {
	FaultCode               uint32
	FaultString             string                    `cwmp:"FaultString,keep"`
	SetParameterValuesFault []SetParameterValuesFault `cwmp:"SetParameterValuesFault,flat"`
}

// SetParameterValuesFault reports one bad parameter of a SetParameterValues.
type SetParameterValuesFault struct {
	ParameterName string
	FaultCode     uint32
	FaultString   string `cwmp:"FaultString,keep"`
}

// UnknownMethod is what Decode returns for a method element it does not
// know. The ACS replies with fault 8000 and keeps the session going, the
// CPE with 9000 (docs/cwmp-interop.md #19).
type UnknownMethod struct {
	Name string
}

func (*GetRPCMethods) MethodName() string                  { return "GetRPCMethods" }
func (*GetRPCMethodsResponse) MethodName() string          { return "GetRPCMethodsResponse" }
func (*SetParameterValues) MethodName() string             { return "SetParameterValues" }
func (*SetParameterValuesResponse) MethodName() string     { return "SetParameterValuesResponse" }
func (*GetParameterValues) MethodName() string             { return "GetParameterValues" }
func (*GetParameterValuesResponse) MethodName() string     { return "GetParameterValuesResponse" }
func (*GetParameterNames) MethodName() string              { return "GetParameterNames" }
func (*GetParameterNamesResponse) MethodName() string      { return "GetParameterNamesResponse" }
func (*SetParameterAttributes) MethodName() string         { return "SetParameterAttributes" }
func (*SetParameterAttributesResponse) MethodName() string { return "SetParameterAttributesResponse" }
func (*GetParameterAttributes) MethodName() string         { return "GetParameterAttributes" }
func (*GetParameterAttributesResponse) MethodName() string { return "GetParameterAttributesResponse" }
func (*AddObject) MethodName() string                      { return "AddObject" }
func (*AddObjectResponse) MethodName() string              { return "AddObjectResponse" }
func (*DeleteObject) MethodName() string                   { return "DeleteObject" }
func (*DeleteObjectResponse) MethodName() string           { return "DeleteObjectResponse" }
func (*Reboot) MethodName() string                         { return "Reboot" }
func (*RebootResponse) MethodName() string                 { return "RebootResponse" }
func (*Download) MethodName() string                       { return "Download" }
func (*DownloadResponse) MethodName() string               { return "DownloadResponse" }
func (*Upload) MethodName() string                         { return "Upload" }
func (*UploadResponse) MethodName() string                 { return "UploadResponse" }
func (*FactoryReset) MethodName() string                   { return "FactoryReset" }
func (*FactoryResetResponse) MethodName() string           { return "FactoryResetResponse" }
func (*ScheduleInform) MethodName() string                 { return "ScheduleInform" }
func (*ScheduleInformResponse) MethodName() string         { return "ScheduleInformResponse" }
func (*GetQueuedTransfers) MethodName() string             { return "GetQueuedTransfers" }
func (*GetQueuedTransfersResponse) MethodName() string     { return "GetQueuedTransfersResponse" }
func (*GetAllQueuedTransfers) MethodName() string          { return "GetAllQueuedTransfers" }
func (*GetAllQueuedTransfersResponse) MethodName() string  { return "GetAllQueuedTransfersResponse" }
func (*ScheduleDownload) MethodName() string               { return "ScheduleDownload" }
func (*ScheduleDownloadResponse) MethodName() string       { return "ScheduleDownloadResponse" }
func (*CancelTransfer) MethodName() string                 { return "CancelTransfer" }
func (*CancelTransferResponse) MethodName() string         { return "CancelTransferResponse" }
func (*ChangeDUState) MethodName() string                  { return "ChangeDUState" }
func (*ChangeDUStateResponse) MethodName() string          { return "ChangeDUStateResponse" }
func (*SetVouchers) MethodName() string                    { return "SetVouchers" }
func (*SetVouchersResponse) MethodName() string            { return "SetVouchersResponse" }
func (*GetOptions) MethodName() string                     { return "GetOptions" }
func (*GetOptionsResponse) MethodName() string             { return "GetOptionsResponse" }
func (*Inform) MethodName() string                         { return "Inform" }
func (*InformResponse) MethodName() string                 { return "InformResponse" }
func (*TransferComplete) MethodName() string               { return "TransferComplete" }
func (*TransferCompleteResponse) MethodName() string       { return "TransferCompleteResponse" }
func (*AutonomousTransferComplete) MethodName() string     { return "AutonomousTransferComplete" }
func (*AutonomousTransferCompleteResponse) MethodName() string {
	return "AutonomousTransferCompleteResponse"
}
func (*RequestDownload) MethodName() string                 { return "RequestDownload" }
func (*RequestDownloadResponse) MethodName() string         { return "RequestDownloadResponse" }
func (*Kicked) MethodName() string                          { return "Kicked" }
func (*KickedResponse) MethodName() string                  { return "KickedResponse" }
func (*DUStateChangeComplete) MethodName() string           { return "DUStateChangeComplete" }
func (*DUStateChangeCompleteResponse) MethodName() string   { return "DUStateChangeCompleteResponse" }
func (*AutonomousDUStateChangeComplete) MethodName() string { return "AutonomousDUStateChangeComplete" }
func (*AutonomousDUStateChangeCompleteResponse) MethodName() string {
	return "AutonomousDUStateChangeCompleteResponse"
}
func (*Fault) MethodName() string           { return "Fault" }
func (m *UnknownMethod) MethodName() string { return m.Name }

// newMessage maps a method element's local name to a fresh message.
var newMessage = map[string]func() Message{}

func init() {
	for _, m := range []Message{
		&GetRPCMethods{}, &GetRPCMethodsResponse{}, &SetParameterValues{}, &SetParameterValuesResponse{},
		&GetParameterValues{}, &GetParameterValuesResponse{}, &GetParameterNames{}, &GetParameterNamesResponse{},
		&SetParameterAttributes{}, &SetParameterAttributesResponse{}, &GetParameterAttributes{}, &GetParameterAttributesResponse{},
		&AddObject{}, &AddObjectResponse{}, &DeleteObject{}, &DeleteObjectResponse{}, &Reboot{}, &RebootResponse{},
		&Download{}, &DownloadResponse{}, &Upload{}, &UploadResponse{}, &FactoryReset{}, &FactoryResetResponse{},
		&ScheduleInform{}, &ScheduleInformResponse{}, &GetQueuedTransfers{}, &GetQueuedTransfersResponse{},
		&GetAllQueuedTransfers{}, &GetAllQueuedTransfersResponse{}, &ScheduleDownload{}, &ScheduleDownloadResponse{},
		&CancelTransfer{}, &CancelTransferResponse{}, &ChangeDUState{}, &ChangeDUStateResponse{},
		&SetVouchers{}, &SetVouchersResponse{}, &GetOptions{}, &GetOptionsResponse{},
		&Inform{}, &InformResponse{}, &TransferComplete{}, &TransferCompleteResponse{},
		&AutonomousTransferComplete{}, &AutonomousTransferCompleteResponse{}, &RequestDownload{}, &RequestDownloadResponse{},
		&Kicked{}, &KickedResponse{}, &DUStateChangeComplete{}, &DUStateChangeCompleteResponse{},
		&AutonomousDUStateChangeComplete{}, &AutonomousDUStateChangeCompleteResponse{},
	} {
		t := reflectTypeOf(m)
		newMessage[m.MethodName()] = func() Message { return newOf(t) }
	}
}
