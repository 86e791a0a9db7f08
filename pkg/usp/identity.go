package usp

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"strings"
)

// MatchEndpointPattern reports whether the endpoint ID eid matches pattern,
// where '*' stands for any run of characters (none included) and every
// other character for itself: "os::012345-*" matches every agent of OUI
// 012345 (docs/guide-usp.md, admission and enrolment). The match is linear
// in len(pattern)+len(eid) times the number of stars, which are few.
func MatchEndpointPattern(pattern, eid string) bool {
	parts := strings.Split(pattern, "*")
	if len(parts) == 1 {
		return pattern == eid
	}
	if !strings.HasPrefix(eid, parts[0]) {
		return false
	}
	rest := eid[len(parts[0]):]
	last := parts[len(parts)-1]
	for _, p := range parts[1 : len(parts)-1] {
		i := strings.Index(rest, p)
		if i < 0 {
			return false
		}
		rest = rest[i+len(p):]
	}
	return len(rest) >= len(last) && strings.HasSuffix(rest, last)
}

// MatchAnyEndpointPattern reports whether eid matches one of patterns.
func MatchAnyEndpointPattern(patterns []string, eid string) bool {
	for _, p := range patterns {
		if MatchEndpointPattern(p, eid) {
			return true
		}
	}
	return false
}

// EnrolmentPassword is the password of the agent eid under an enrolment
// key: base64url without padding of HMAC-SHA256(key, eid). A factory
// computes it for every device it makes and Duet recomputes it at login,
// so no per-agent row is needed and one device's password reveals
// nothing of another's. The shell equivalent:
//
//	printf %s "$EID" | openssl dgst -sha256 -hmac "$KEY" -binary | basenc --base64url | tr -d =
func EnrolmentPassword(key, eid string) string {
	m := hmac.New(sha256.New, []byte(key))
	m.Write([]byte(eid))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// ExpandTopicPattern puts eid in place of every "{endpoint}" of pattern
// (the agent topic of DUET_USP_REPLY_TOPIC_PATTERN). ok is false when
// the result could match other topics: MQTT wildcards ('+', '#') in the
// endpoint ID.
func ExpandTopicPattern(pattern, eid string) (topic string, ok bool) {
	if strings.ContainsAny(eid, "+#") {
		return "", false
	}
	return strings.ReplaceAll(pattern, "{endpoint}", eid), true
}
