// Package bus is Duet's bus contract: the NATS subject scheme, the encoding
// of device identifiers into subject tokens, JetStream setup for device
// events, request/reply helpers for commands, and the embedded NATS server
// used when no external one is configured.
//
// Every subject is built here and nowhere else. docs/bus.md documents them
// for integrators.
package bus

import (
	"fmt"
	"strings"

	"github.com/duet-dm/duet/pkg/devicemodel"
)

const (
	// EventStream is the JetStream stream holding every device event.
	EventStream = "DUET_EVENTS"
	// EventPrefix: duet.evt.<protocol>.<device>.<kind>
	EventPrefix = "duet.evt"
	// CommandPrefix: duet.cmd.<protocol>.<device> (core NATS request/reply).
	CommandPrefix = "duet.cmd"
	// ControlPrefix: adapter -> controller requests, duet.ctl.<what>.<device>.
	ControlPrefix = "duet.ctl"
)

// EncodeToken turns a device identifier into a single NATS subject token.
//
// NATS tokens may not contain '.', '*', '>' or white space, and identifiers
// do (USP "os::00D09E-SERIAL", CWMP "00D09E-ONT-SN%2E1", search-unsafe
// serials). Bytes in [A-Za-z0-9_-] pass through; every other byte becomes
// "~XX" (upper-case hex), including '~' itself. The result is readable for
// common IDs ("os~3A~3A00D09E-SERIAL"), reversible, and unambiguous.
func EncodeToken(id string) string {
	const hex = "0123456789ABCDEF"
	n := 0
	for i := 0; i < len(id); i++ {
		if !tokenSafe(id[i]) {
			n++
		}
	}
	if n == 0 {
		return id
	}
	b := make([]byte, 0, len(id)+2*n)
	for i := 0; i < len(id); i++ {
		c := id[i]
		if tokenSafe(c) {
			b = append(b, c)
			continue
		}
		b = append(b, '~', hex[c>>4], hex[c&0xf])
	}
	return string(b)
}

// DecodeToken reverses EncodeToken. It rejects anything EncodeToken cannot
// have produced (lower-case hex, bytes that should have been escaped), so a
// token has exactly one decoding and one encoding.
func DecodeToken(tok string) (string, error) {
	if tok == "" {
		return "", devicemodel.Errorf(devicemodel.CodeInvalidArgument, "empty device token")
	}
	if !strings.Contains(tok, "~") {
		for i := 0; i < len(tok); i++ {
			if !tokenSafe(tok[i]) {
				return "", devicemodel.Errorf(devicemodel.CodeInvalidArgument, "device token has unescaped byte 0x%02x at %d", tok[i], i)
			}
		}
		return tok, nil
	}
	b := make([]byte, 0, len(tok))
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if c == '~' {
			if i+2 >= len(tok) {
				return "", devicemodel.Errorf(devicemodel.CodeInvalidArgument, "truncated escape at %d in device token", i)
			}
			hi, ok1 := unhex(tok[i+1])
			lo, ok2 := unhex(tok[i+2])
			if !ok1 || !ok2 {
				return "", devicemodel.Errorf(devicemodel.CodeInvalidArgument, "bad escape at %d in device token", i)
			}
			v := hi<<4 | lo
			if tokenSafe(v) {
				return "", devicemodel.Errorf(devicemodel.CodeInvalidArgument, "needless escape at %d in device token", i)
			}
			b = append(b, v)
			i += 2
			continue
		}
		if !tokenSafe(c) {
			return "", devicemodel.Errorf(devicemodel.CodeInvalidArgument, "device token has unescaped byte 0x%02x at %d", c, i)
		}
		b = append(b, c)
	}
	return string(b), nil
}

func tokenSafe(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// EventSubject is where an event of the given kind for a device is published:
// duet.evt.<protocol>.<device-token>.<kind>. kind is the snake_case name of
// the duet.v1.Event kind member ("online", "value_change", ...).
func EventSubject(p devicemodel.Protocol, deviceID, kind string) string {
	return EventPrefix + "." + string(p) + "." + EncodeToken(deviceID) + "." + kind
}

// EventFilter is a subject filter for events: empty arguments match all.
func EventFilter(p devicemodel.Protocol, deviceID, kind string) string {
	ps, ds, ks := "*", "*", "*"
	if p != "" {
		ps = string(p)
	}
	if deviceID != "" {
		ds = EncodeToken(deviceID)
	}
	if kind != "" {
		ks = kind
	}
	return EventPrefix + "." + ps + "." + ds + "." + ks
}

// ParseEventSubject splits an event subject into its parts.
func ParseEventSubject(subject string) (p devicemodel.Protocol, deviceID, kind string, err error) {
	parts := strings.Split(subject, ".")
	if len(parts) != 5 || parts[0]+"."+parts[1] != EventPrefix {
		return "", "", "", fmt.Errorf("not an event subject: %q", subject)
	}
	p, err = devicemodel.ParseProtocol(parts[2])
	if err != nil {
		return "", "", "", err
	}
	deviceID, err = DecodeToken(parts[3])
	if err != nil {
		return "", "", "", err
	}
	return p, deviceID, parts[4], nil
}

// CommandSubject is where commands for one device are requested:
// duet.cmd.<protocol>.<device-token>.
func CommandSubject(p devicemodel.Protocol, deviceID string) string {
	return CommandPrefix + "." + string(p) + "." + EncodeToken(deviceID)
}

// CommandWildcard matches commands for every device of a protocol.
func CommandWildcard(p devicemodel.Protocol) string {
	return CommandPrefix + "." + string(p) + ".*"
}

// WorkSubject is where the CWMP adapter asks the controller what a device in
// session should do next: duet.ctl.cwmp.work.<device-token>.
func WorkSubject(deviceID string) string {
	return ControlPrefix + ".cwmp.work." + EncodeToken(deviceID)
}

// WorkWildcard matches every WorkSubject.
const WorkWildcard = ControlPrefix + ".cwmp.work.*"

// CredentialsSubject is where the CWMP adapter looks up a CPE's credentials
// in per-device auth mode: duet.ctl.cwmp.credentials.<device-token>.
func CredentialsSubject(deviceID string) string {
	return ControlPrefix + ".cwmp.credentials." + EncodeToken(deviceID)
}

// CredentialsWildcard matches every CredentialsSubject.
const CredentialsWildcard = ControlPrefix + ".cwmp.credentials.*"

// DeviceFromSubject extracts the device identifier from the last token of a
// command or control subject.
func DeviceFromSubject(subject string) (string, error) {
	i := strings.LastIndexByte(subject, '.')
	if i < 0 {
		return "", fmt.Errorf("subject %q has no device token", subject)
	}
	return DecodeToken(subject[i+1:])
}

// RoutesSubject is where a USP adapter on a broker asks the controller for
// the agents it should serve: duet.ctl.usp.routes.<transport>.
func RoutesSubject(transport string) string {
	return ControlPrefix + ".usp.routes." + EncodeToken(transport)
}

// RoutesWildcard matches every RoutesSubject.
const RoutesWildcard = ControlPrefix + ".usp.routes.*"

// BacklogSubject is where an adapter asks the controllers how many device
// events they have yet to apply: duet.ctl.<protocol>.backlog (issue 17).
func BacklogSubject(p devicemodel.Protocol) string {
	return ControlPrefix + "." + string(p) + ".backlog"
}

// BacklogWildcard matches BacklogSubject of every protocol.
const BacklogWildcard = ControlPrefix + ".*.backlog"
