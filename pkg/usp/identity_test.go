package usp_test

import (
	"testing"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/duet-dm/duet/pkg/usp"
	"github.com/duet-dm/duet/proto/usp/usprecord"
)

func TestMatchEndpointPattern(t *testing.T) {
	for _, c := range []struct {
		pattern, eid string
		want         bool
	}{
		{"os::012345-*", "os::012345-SN1", true},
		{"os::012345-*", "os::012346-SN1", false},
		{"*", "anything", true},
		{"os::*-SN*", "os::012345-SN9", true},
		{"os::*-SN", "os::012345-SN9", false},
		{"a*a", "a", false},
		{"a*a", "aa", true},
		{"exact::id", "exact::id", true},
		{"exact::id", "exact::idx", false},
	} {
		if got := usp.MatchEndpointPattern(c.pattern, c.eid); got != c.want {
			t.Errorf("MatchEndpointPattern(%q, %q) = %v, want %v", c.pattern, c.eid, got, c.want)
		}
	}
}

func TestEnrolmentPasswordIsPerAgent(t *testing.T) {
	a, b := usp.EnrolmentPassword("k", "os::1-A"), usp.EnrolmentPassword("k", "os::1-B")
	if a == b || a != usp.EnrolmentPassword("k", "os::1-A") || len(a) != 43 {
		t.Fatalf("passwords %q %q", a, b)
	}
}

func TestExpandTopicPatternRefusesWildcards(t *testing.T) {
	if got, ok := usp.ExpandTopicPattern("usp/agent/{endpoint}", "os::1-A"); !ok || got != "usp/agent/os::1-A" {
		t.Fatal(got, ok)
	}
	if _, ok := usp.ExpandTopicPattern("usp/agent/{endpoint}", "os::#"); ok {
		t.Fatal("a wildcard endpoint ID expanded")
	}
}

func TestReadRecordHead(t *testing.T) {
	rec, err := usp.MarshalMQTTConnect("os::1-A", "self::c", usprecord.MQTTConnectRecord_V5, "usp/agent/os::1-A")
	if err != nil {
		t.Fatal(err)
	}
	h, err := usp.ReadRecordHead(rec)
	if err != nil || h.FromID != "os::1-A" || h.ReplyTo != "usp/agent/os::1-A" {
		t.Fatalf("%+v %v", h, err)
	}
	// A second from_id (protobuf keeps the last) is refused.
	if _, err := usp.ReadRecordHead(append(rec, protowire.AppendString(protowire.AppendTag(nil, 3, protowire.BytesType), "os::victim")...)); err == nil {
		t.Fatal("a record with two from_id read")
	}
	if _, err := usp.ReadRecordHead([]byte("garbage that is not protobuf")); err == nil {
		t.Fatal("garbage read")
	}
}

// FuzzReadRecordHead: the embedded brokers run it on every agent publish.
func FuzzReadRecordHead(f *testing.F) {
	rec, _ := usp.MarshalSTOMPConnect("os::1-A", "self::c", "/queue/a")
	f.Add(rec)
	rec, _ = usp.MarshalMQTTConnect("os::1-A", "self::c", usprecord.MQTTConnectRecord_V3_1_1, "t")
	f.Add(rec)
	f.Add([]byte{0x1a, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := usp.ReadRecordHead(b)
		if err == nil && len(h.FromID)+len(h.ReplyTo) > len(b) {
			t.Fatalf("read %d bytes of strings from %d", len(h.FromID)+len(h.ReplyTo), len(b))
		}
	})
}
