package devicemodel

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// Protocol is the management protocol a device speaks.
type Protocol string

const (
	ProtocolCWMP Protocol = "cwmp"
	ProtocolUSP  Protocol = "usp"
)

// ParseProtocol accepts the stable lower-case names.
func ParseProtocol(s string) (Protocol, error) {
	switch Protocol(strings.ToLower(s)) {
	case ProtocolCWMP:
		return ProtocolCWMP, nil
	case ProtocolUSP:
		return ProtocolUSP, nil
	}
	return "", Errorf(CodeInvalidArgument, "unknown protocol %q (want cwmp or usp)", s)
}

// MaxDeviceIDLen bounds device identifiers. CWMP identities are built from
// three fields of at most 64 characters each (TR-069 A.3.3), percent-escaped;
// USP endpoint IDs are much shorter (TR-369 "Endpoint Identifier"). 512 leaves room for both.
const MaxDeviceIDLen = 512

// ValidateDeviceID checks that id can serve as a device identity: non-empty,
// valid UTF-8, bounded, no control characters. Anything else is allowed:
// identifiers are opaque and compared byte for byte (TR-369 "Endpoint Identifier").
func ValidateDeviceID(id string) error {
	if id == "" {
		return Errorf(CodeInvalidArgument, "device id is empty")
	}
	if len(id) > MaxDeviceIDLen {
		return Errorf(CodeInvalidArgument, "device id is %d bytes, more than %d", len(id), MaxDeviceIDLen)
	}
	if !utf8.ValidString(id) {
		return Errorf(CodeInvalidArgument, "device id is not valid UTF-8")
	}
	for i, r := range id {
		if r < 0x20 || r == 0x7f {
			return Errorf(CodeInvalidArgument, "device id has a control character at byte %d", i)
		}
	}
	return nil
}

// CWMPDeviceID builds the identity of a TR-069 CPE from its DeviceIdStruct:
// OUI-ProductClass-SerialNumber, or OUI-SerialNumber when ProductClass is
// empty. Every byte outside [A-Za-z0-9_] is percent-escaped, so the '-'
// separators are unambiguous (the scheme GenieACS uses; TR-069 A.3.3).
func CWMPDeviceID(oui, productClass, serial string) string {
	var b strings.Builder
	b.WriteString(cwmpEscape(oui))
	b.WriteByte('-')
	if productClass != "" {
		b.WriteString(cwmpEscape(productClass))
		b.WriteByte('-')
	}
	b.WriteString(cwmpEscape(serial))
	return b.String()
}

func cwmpEscape(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&0xf])
	}
	return b.String()
}

// Device is one entry of the registry.
type Device struct {
	ID               string
	Protocol         Protocol
	Manufacturer     string
	OUI              string
	ProductClass     string
	SerialNumber     string
	ModelName        string
	SoftwareVersion  string
	HardwareVersion  string
	ProvisioningCode string
	FirstSeen        time.Time
	LastSeen         time.Time
	Online           bool
	// Rebooting: a reboot or factory reset was accepted and the device has
	// not announced it is back yet (its task is awaiting_boot).
	Rebooting bool
	// Transport names how the device was last reached: "cwmp" for a CWMP
	// session, "mqtt", "stomp" or "websocket" for USP.
	Transport string
	// Address is where the device was last reached: the remote IP:port of a
	// CWMP session, an agent's reply topic or destination, a WebSocket peer.
	Address string
	// ConnectionRequestURL is the CWMP CPE's wake-up URL, when known.
	ConnectionRequestURL string
	// DataModel is the root object: "Device." or "InternetGatewayDevice.".
	DataModel string
	// InformsTotal counts the Informs (CWMP) and Periodic! notifications
	// (USP) applied; LastInformAt is the newest one's time (zero: none).
	// Routine events are counted here rather than each kept in history.
	InformsTotal int64
	LastInformAt time.Time
}

func (d Device) String() string { return fmt.Sprintf("%s(%s)", d.ID, d.Protocol) }
