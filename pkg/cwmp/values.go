package cwmp

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Namespace URIs (TR-069 §3.5).
const (
	NamespaceSOAPEnv = "http://schemas.xmlsoap.org/soap/envelope/"
	NamespaceSOAPEnc = "http://schemas.xmlsoap.org/soap/encoding/"
	NamespaceXSD     = "http://www.w3.org/2001/XMLSchema"
	NamespaceXSI     = "http://www.w3.org/2001/XMLSchema-instance"

	NamespaceCWMP10 = "urn:dslforum-org:cwmp-1-0"
	NamespaceCWMP11 = "urn:dslforum-org:cwmp-1-1"
	// NamespaceCWMP12 is also used by CWMP 1.3 and 1.4 (TR-069 §3.5).
	NamespaceCWMP12 = "urn:dslforum-org:cwmp-1-2"

	// DefaultNamespace is used by Encode when Envelope.Namespace is empty.
	DefaultNamespace = NamespaceCWMP10

	namespaceCWMPPrefix = "urn:dslforum-org:cwmp-1-"
)

// IsCWMPNamespace reports whether uri is any urn:dslforum-org:cwmp-1-*
// namespace, including the non-standard cwmp-1-3 and cwmp-1-4 seen in the
// wild (docs/cwmp-interop.md #2).
func IsCWMPNamespace(uri string) bool {
	return strings.HasPrefix(uri, namespaceCWMPPrefix) && len(uri) > len(namespaceCWMPPrefix)
}

// Inform event codes (TR-069 A.3.3.1, event codes).
const (
	EventBootstrap                       = "0 BOOTSTRAP"
	EventBoot                            = "1 BOOT"
	EventPeriodic                        = "2 PERIODIC"
	EventScheduled                       = "3 SCHEDULED"
	EventValueChange                     = "4 VALUE CHANGE"
	EventKicked                          = "5 KICKED"
	EventConnectionRequest               = "6 CONNECTION REQUEST"
	EventTransferComplete                = "7 TRANSFER COMPLETE"
	EventDiagnosticsComplete             = "8 DIAGNOSTICS COMPLETE"
	EventRequestDownload                 = "9 REQUEST DOWNLOAD"
	EventAutonomousTransferComplete      = "10 AUTONOMOUS TRANSFER COMPLETE"
	EventDUStateChangeComplete           = "11 DU STATE CHANGE COMPLETE"
	EventAutonomousDUStateChangeComplete = "12 AUTONOMOUS DU STATE CHANGE COMPLETE"
	EventWakeup                          = "13 WAKEUP"

	EventMReboot           = "M Reboot"
	EventMScheduleInform   = "M ScheduleInform"
	EventMDownload         = "M Download"
	EventMScheduleDownload = "M ScheduleDownload"
	EventMUpload           = "M Upload"
	EventMChangeDUState    = "M ChangeDUState"
)

// Download FileType values (TR-069 A.3.2).
const (
	FileTypeFirmware     = "1 Firmware Upgrade Image"
	FileTypeWebContent   = "2 Web Content"
	FileTypeVendorConfig = "3 Vendor Configuration File"
	FileTypeToneFile     = "4 Tone File"
	FileTypeRingerFile   = "5 Ringer File"
	UploadTypeVendorCfg  = "1 Vendor Configuration File"
	UploadTypeVendorLog  = "2 Vendor Log File"
)

// UnknownTime is the TR-069 "unknown time", 0001-01-01T00:00:00Z. Decode
// returns it for missing or unparseable dateTimes (docs/cwmp-interop.md #14, #16).
var UnknownTime = time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)

// ParseValueType maps an xsi:type value to a ValueType: with any or no
// prefix, and base64Binary / soap-enc:base64 folded into TypeBase64. Empty
// or unknown types become TypeString (TR-069 A.2.1, docs/cwmp-interop.md #15).
func ParseValueType(xsiType string) ValueType {
	t := strings.TrimSpace(xsiType)
	if i := strings.LastIndexByte(t, ':'); i >= 0 {
		t = t[i+1:]
	}
	switch strings.ToLower(t) {
	case "int", "integer":
		return TypeInt
	case "unsignedint":
		return TypeUnsignedInt
	case "long":
		return TypeLong
	case "unsignedlong":
		return TypeUnsignedLong
	case "boolean", "bool":
		return TypeBoolean
	case "datetime":
		return TypeDateTime
	case "base64", "base64binary":
		return TypeBase64
	case "hexbinary":
		return TypeHexBinary
	}
	return TypeString
}

// XSIType returns the xsi:type to send for t, e.g. "xsd:unsignedInt".
// Base64 is sent as "xsd:base64" like GenieACS (TR-069 A.2.1).
func (t ValueType) XSIType() string {
	if t == "" {
		return "xsd:string"
	}
	return "xsd:" + string(t)
}

// Typed reports whether values of t are trimmed on decode.
func (t ValueType) Typed() bool { return t != TypeString && t != "" }

// ParseBool accepts true/false/1/0 in any case, with surrounding white
// space (docs/cwmp-interop.md #13).
func ParseBool(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "1", "true":
		return true, nil
	case "0", "false":
		return false, nil
	}
	return false, fmt.Errorf("cwmp: invalid boolean %q", s)
}

// FormatBool renders b as true/false, or 1/0 when numeric is set (some CPEs
// only accept 1/0, docs/cwmp-interop.md #13).
func FormatBool(b, numeric bool) string {
	switch {
	case numeric && b:
		return "1"
	case numeric:
		return "0"
	case b:
		return "true"
	}
	return "false"
}

var dateTimeLayouts = []string{
	time.RFC3339Nano,
	"2006-01-02T15:04:05.999999999",
	"2006-01-02T15:04:05Z0700",
	"2006-01-02T15:04:05.999999999Z0700",
	"2006-01-02 15:04:05",
	"2006-01-02",
}

// ParseDateTime parses an xsd:dateTime leniently: with or without fraction
// and zone (no zone = UTC). It reports ok=false and returns UnknownTime for
// anything it cannot parse (docs/cwmp-interop.md #14).
func ParseDateTime(s string) (t time.Time, ok bool) {
	s = strings.TrimSpace(s)
	if s == "" {
		return UnknownTime, false
	}
	for _, l := range dateTimeLayouts {
		if t, err := time.Parse(l, s); err == nil {
			return t, true
		}
	}
	return UnknownTime, false
}

// FormatDateTime renders t as xsd:dateTime without fractional seconds
// (docs/cwmp-interop.md #14). The zero time.Time is rendered as the unknown time.
func FormatDateTime(t time.Time) string {
	if t.IsZero() {
		return "0001-01-01T00:00:00Z"
	}
	return t.Truncate(time.Second).Format(time.RFC3339)
}

// ValidateValue checks that s is a valid lexical value of type t. The CPE
// simulator uses it to answer 9007; the ACS can use it before a Set.
func ValidateValue(t ValueType, s string) error {
	v := strings.TrimSpace(s)
	var err error
	switch t {
	case TypeInt:
		_, err = strconv.ParseInt(v, 10, 32)
	case TypeUnsignedInt:
		_, err = strconv.ParseUint(v, 10, 32)
	case TypeLong:
		_, err = strconv.ParseInt(v, 10, 64)
	case TypeUnsignedLong:
		_, err = strconv.ParseUint(v, 10, 64)
	case TypeBoolean:
		_, err = ParseBool(v)
	case TypeDateTime:
		if _, ok := ParseDateTime(v); !ok {
			err = fmt.Errorf("not a dateTime")
		}
	case TypeBase64:
		_, err = base64.StdEncoding.DecodeString(v)
	case TypeHexBinary:
		_, err = hex.DecodeString(v)
	}
	if err != nil {
		return fmt.Errorf("cwmp: %q is not a valid %s", s, t)
	}
	return nil
}

// NormalizeValue returns the canonical form of a valid value of type t:
// booleans become true/false (or 1/0 when numeric), numbers and dateTimes
// are trimmed; strings are returned unchanged.
func NormalizeValue(t ValueType, s string, numericBool bool) string {
	switch t {
	case TypeString, "":
		return s
	case TypeBoolean:
		if b, err := ParseBool(s); err == nil {
			return FormatBool(b, numericBool)
		}
	}
	return strings.TrimSpace(s)
}
