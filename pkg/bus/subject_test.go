package bus

import (
	"strings"
	"testing"

	"github.com/duet-dm/duet/pkg/devicemodel"
)

func TestTokenRoundTrip(t *testing.T) {
	cases := map[string]string{
		"os::00D09E-SERIAL":           "os~3A~3A00D09E-SERIAL",
		"00D09E-ONT-SN1":              "00D09E-ONT-SN1",
		"00D09E-ONT%2E-SN.1":          "00D09E-ONT~252E-SN~2E1",
		"a b*c>d~e":                   "a~20b~2Ac~3Ed~7Ee",
		"oui:00256D:my-unique-bbf-id": "oui~3A00256D~3Amy-unique-bbf-id",
		"üñí":                         "~C3~BC~C3~B1~C3~AD",
	}
	for id, want := range cases {
		got := EncodeToken(id)
		if got != want {
			t.Errorf("EncodeToken(%q) = %q, want %q", id, got, want)
		}
		back, err := DecodeToken(got)
		if err != nil || back != id {
			t.Errorf("DecodeToken(%q) = %q, %v; want %q", got, back, err, id)
		}
	}
}

func TestDecodeTokenRejectsNonCanonical(t *testing.T) {
	for _, tok := range []string{"", "a.b", "a~2e", "a~41", "a~4", "a~", "a b", "x*", "~ZZ"} {
		if _, err := DecodeToken(tok); err == nil {
			t.Errorf("DecodeToken(%q) accepted a token EncodeToken never produces", tok)
		}
	}
}

func TestSubjects(t *testing.T) {
	id := "os::00D09E-SN.1"
	if got, want := EventSubject(devicemodel.ProtocolUSP, id, "boot"), "duet.evt.usp.os~3A~3A00D09E-SN~2E1.boot"; got != want {
		t.Fatalf("EventSubject = %q, want %q", got, want)
	}
	p, dev, kind, err := ParseEventSubject(EventSubject(devicemodel.ProtocolCWMP, id, "inform"))
	if err != nil || p != devicemodel.ProtocolCWMP || dev != id || kind != "inform" {
		t.Fatalf("ParseEventSubject: %v %q %q %v", p, dev, kind, err)
	}
	if got := CommandSubject(devicemodel.ProtocolCWMP, id); got != "duet.cmd.cwmp.os~3A~3A00D09E-SN~2E1" {
		t.Fatalf("CommandSubject = %q", got)
	}
	if d, err := DeviceFromSubject(WorkSubject(id)); err != nil || d != id {
		t.Fatalf("DeviceFromSubject(WorkSubject) = %q %v", d, err)
	}
	if got := EventFilter("", id, ""); got != "duet.evt.*.os~3A~3A00D09E-SN~2E1.*" {
		t.Fatalf("EventFilter = %q", got)
	}
}

// FuzzToken checks that every string survives the round trip and that the
// token is always a single, valid NATS subject token.
func FuzzToken(f *testing.F) {
	for _, s := range []string{"os::00D09E-SERIAL", "a.b.c", "*", ">", " ", "~", "~7E", "\x00\xff", "日本"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		tok := EncodeToken(id)
		if id != "" && tok == "" {
			t.Fatal("empty token for non-empty id")
		}
		if strings.ContainsAny(tok, ".*> \t\r\n") {
			t.Fatalf("token %q is not subject-safe", tok)
		}
		if id == "" {
			return
		}
		back, err := DecodeToken(tok)
		if err != nil || back != id {
			t.Fatalf("round trip %q -> %q -> %q, %v", id, tok, back, err)
		}
		// Decoding arbitrary input must never panic, and what decodes must
		// re-encode to the same token (one spelling per identifier).
		if d, err := DecodeToken(id); err == nil && EncodeToken(d) != id {
			t.Fatalf("token %q decodes to %q which encodes to %q", id, d, EncodeToken(d))
		}
	})
}
