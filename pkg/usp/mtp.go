package usp

import (
	"errors"
	"net/url"
	"strings"
)

// Content types a USP PUBLISH/SEND may carry (TR-369 "MQTT Binding", TR-369 "STOMP Binding").
const (
	MQTTContentType  = "usp.msg"                     // MQTT 5 Content Type of USP PUBLISHes
	STOMPContentType = "application/vnd.bbf.usp.msg" // STOMP content-type; also accepted on MQTT
)

// Protocol-level names used on the MTPs (TR-369 "Message Transfer Protocols").
const (
	MQTTEndpointIDProperty = "usp-endpoint-id" // MQTT 5 CONNECT user property
	STOMPEndpointIDHeader  = "endpoint-id"     // STOMP frame header (not usp-endpoint-id)
	STOMPReplyToHeader     = "reply-to-dest"
	STOMPSubscribeDestHdr  = "subscribe-dest" // CONNECTED header naming where to subscribe
	WebSocketSubprotocol   = "v1.usp"
)

// IsUSPContentType reports whether an MQTT Content Type or STOMP
// content-type names a USP record: "usp.msg" or
// "application/vnd.bbf.usp.msg" (TR-369 "MQTT Binding" Receive).
func IsUSPContentType(ct string) bool {
	return ct == MQTTContentType || ct == STOMPContentType
}

const replyToMarker = "/reply-to="

// MQTTReplyToTopic appends the MQTT 3.1.1 reply-to suffix to topic:
// topic + "/reply-to=" + replyTo with each "/" written as "%2F" (TR-369
// "MQTT Binding", PUBLISH in MQTT 3.1.1).
func MQTTReplyToTopic(topic, replyTo string) string {
	return topic + replyToMarker + strings.ReplaceAll(replyTo, "/", "%2F")
}

// ParseMQTTReplyTo splits an MQTT 3.1.1 topic into the base topic and the
// reply-to topic, turning "%2F" (or "%2f") back into "/". ok is false when
// the topic has no "/reply-to=" suffix or the reply-to part is empty.
func ParseMQTTReplyTo(topic string) (base, replyTo string, ok bool) {
	i := strings.Index(topic, replyToMarker)
	if i < 0 {
		return topic, "", false
	}
	enc := topic[i+len(replyToMarker):]
	if enc == "" {
		return topic[:i], "", false
	}
	r := strings.NewReplacer("%2F", "/", "%2f", "/").Replace(enc)
	return topic[:i], r, true
}

var stompEscaper = strings.NewReplacer(`\`, `\\`, "\r", `\r`, "\n", `\n`, ":", `\c`)

// STOMPEscapeHeader escapes a STOMP 1.2 header value: "\" → "\\", CR → "\r",
// LF → "\n", ":" → "\c" (TR-369 "STOMP Binding"; an endpoint ID's colons must be
// escaped). go-stomp already does this for the frames it writes; use this
// only when writing frames by hand.
func STOMPEscapeHeader(s string) string { return stompEscaper.Replace(s) }

// ErrBadSTOMPEscape is returned for an undefined STOMP escape sequence,
// which STOMP 1.2 treats as a fatal protocol error.
var ErrBadSTOMPEscape = errors.New("usp: undefined STOMP header escape")

// STOMPUnescapeHeader reverses STOMPEscapeHeader.
func STOMPUnescapeHeader(s string) (string, error) {
	if !strings.Contains(s, `\`) {
		return s, nil
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' {
			b.WriteByte(c)
			continue
		}
		if i+1 >= len(s) {
			return "", ErrBadSTOMPEscape
		}
		i++
		switch s[i] {
		case '\\':
			b.WriteByte('\\')
		case 'r':
			b.WriteByte('\r')
		case 'n':
			b.WriteByte('\n')
		case 'c':
			b.WriteByte(':')
		default:
			return "", ErrBadSTOMPEscape
		}
	}
	return b.String(), nil
}

// PercentEncode encodes every byte outside ALPHA, DIGIT and "-._~" as %HH,
// the way obuspa encodes the WebSocket eid and its endpoint-ID pieces
// (TR-369 "Endpoint Identifier", TR-369 "WebSocket Binding").
func PercentEncode(s string) string {
	const hex = "0123456789ABCDEF"
	n := 0
	for i := 0; i < len(s); i++ {
		if !unreserved(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	b := make([]byte, 0, len(s)+2*n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if unreserved(c) {
			b = append(b, c)
			continue
		}
		b = append(b, '%', hex[c>>4], hex[c&0xf])
	}
	return string(b)
}

func unreserved(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

// WebSocketEIDQuery returns the query string "eid=<encoded eid>" a
// WebSocket client adds to its request URI (TR-369 "WebSocket Binding"), e.g.
// "eid=os%3A%3A00256D-0123".
func WebSocketEIDQuery(eid string) string { return "eid=" + PercentEncode(eid) }

// ParseWebSocketEID extracts the eid query parameter from a raw query
// string. ok is false when it is absent, empty or badly encoded.
func ParseWebSocketEID(rawQuery string) (eid string, ok bool) {
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return "", false
	}
	eid = q.Get("eid")
	return eid, eid != ""
}

// OSEndpointID builds the "os" scheme Endpoint ID obuspa uses by default:
// os::<OUI>-<SerialNumber>, each piece percent-encoded (TR-369 "Endpoint Identifier").
func OSEndpointID(oui, serial string) string {
	return "os::" + PercentEncode(oui) + "-" + PercentEncode(serial)
}
