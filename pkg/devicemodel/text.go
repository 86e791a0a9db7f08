package devicemodel

import (
	"strings"
	"unicode/utf8"
)

// Bounds on what a device may tell Duet (issue 15 §1). Every text a device
// sends is checked against them before it reaches the bus, so one device's
// data cannot stop the registry for the fleet (a NUL is refused by
// PostgreSQL's text type; a value over ~2.7 kB by a btree index).
// A parameter path is bounded by MaxPathLen (path.go).
const (
	// MaxFactLen bounds an identity fact (manufacturer, serial number,
	// software version …). TR-069 A.3.3.1 gives 64 characters for most of
	// them and TR-181 at most 256 for the DeviceInfo strings.
	MaxFactLen = 256
	// MaxAddressLen bounds a reachability field: an address, a reply topic,
	// a connection-request URL (TR-069 A.3.3.1 ConnectionRequestURL is 256;
	// MQTT topics and STOMP destinations may be longer).
	MaxAddressLen = 2048
	// MaxValueLen bounds a parameter value, and any other text of an
	// event (fault strings, command keys, arguments).
	MaxValueLen = 64 << 10
)

// CheckText reports why s may not be stored as text: invalid UTF-8, a NUL
// byte, or longer than max bytes. It returns "" for a good text.
func CheckText(s string, max int) string {
	switch {
	case len(s) > max:
		return "too_long"
	case !utf8.ValidString(s):
		return "invalid_utf8"
	case strings.IndexByte(s, 0) >= 0:
		return "nul"
	}
	return ""
}

// SanitizeText makes s storable: invalid UTF-8 and NUL bytes become U+FFFD
// and it is cut to at most max bytes at a rune boundary.
func SanitizeText(s string, max int) string {
	if CheckText(s, max) == "" {
		return s
	}
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.ReplaceAll(s, "\x00", "\uFFFD")
	if len(s) > max {
		cut := max
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return s
}

// ContainsNUL reports a NUL byte in any of ss. API input with one is a 400:
// PostgreSQL text cannot hold it, and no path, name or value needs it.
func ContainsNUL(ss ...string) bool {
	for _, s := range ss {
		if strings.IndexByte(s, 0) >= 0 {
			return true
		}
	}
	return false
}
