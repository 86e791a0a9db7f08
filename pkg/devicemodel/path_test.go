package devicemodel

import (
	"errors"
	"strings"
	"testing"
)

func TestParsePathValid(t *testing.T) {
	cases := map[string]PathKind{
		"Device.":                 PathObject,
		"Device.WiFi.SSID.1.SSID": PathParameter,
		"Device.WiFi.SSID.12.":    PathObject,
		"InternetGatewayDevice.LANDevice.1.WLANConfiguration.1.SSID": PathParameter,
		"Device.Reboot()":              PathCommand,
		"Device.Boot!":                 PathEvent,
		"Device.IP.Interface.*.Status": PathParameter,
		`Device.IP.Interface.[Name=="eth0"].IPv4Address.[Status=="Enabled"].IPAddress`:   PathParameter,
		"Device.DSL.Line.[Enable==true].CurrentProfile":                                  PathParameter,
		"Device.NAT.PortMapping.[RemoteHost==\"\"&&ExternalPort==0&&Protocol==\"TCP\"].": PathObject,
		"Device.IP.Interface.[Stats.ErrorsSent>0].":                                      PathObject,
		"Device.NAT.PortMapping.1.Interface+.Name":                                       PathParameter,
		"Device.WiFi.SSID.1.LowerLayers#1+.Name":                                         PathParameter,
		"Device.X_00D09E_Vendor-Param":                                                   PathParameter,
	}
	for p, kind := range cases {
		got, err := ParsePath(p, false)
		if err != nil {
			t.Errorf("ParsePath(%q): %v", p, err)
			continue
		}
		if got.Kind != kind {
			t.Errorf("ParsePath(%q).Kind = %v, want %v", p, got.Kind, kind)
		}
		if got.Search != (strings.ContainsAny(p, "*[+")) {
			t.Errorf("ParsePath(%q).Search = %v", p, got.Search)
		}
	}
	if _, err := ParsePath("Device.WiFi.AccessPoint.{i}.AssociatedDevice.{i}.", true); err != nil {
		t.Errorf("supported path: %v", err)
	}
}

func TestParsePathErrorsHavePositions(t *testing.T) {
	cases := []struct {
		path string
		pos  int
	}{
		{"", 0},
		{".Device", 0},
		{"Device..WiFi", 7},
		{"Device.WiFi.SSID.01.", 17},
		{"Device.WiFi.SSID.1", 18},
		{"Device.WiFi.SSID.{i}.", 17},
		{"Device.Reboot(", 13},
		{"Device.Boot!x", 12},
		{"Device.IP.Interface.[].", 21},
		{`Device.IP.Interface.[Name=="eth0".`, 33},
		{"Device.IP.Interface.[Name].", 25},
		{"Device.IP.Interface.*", 21},
		{"Device.Wi Fi.", 9},
		{"1Device.", 0},
	}
	for _, c := range cases {
		_, err := ParsePath(c.path, false)
		var se *PathSyntaxError
		if !errors.As(err, &se) {
			t.Errorf("ParsePath(%q) = %v, want a syntax error", c.path, err)
			continue
		}
		if se.Pos != c.pos {
			t.Errorf("ParsePath(%q): position %d (%s), want %d", c.path, se.Pos, se.Reason, c.pos)
		}
		if se.AsError().Code != CodeInvalidPath {
			t.Errorf("AsError code %v", se.AsError().Code)
		}
	}
}

func TestCWMPDeviceID(t *testing.T) {
	if got := CWMPDeviceID("00D09E", "ONT", "SN.1/2"); got != "00D09E-ONT-SN%2E1%2F2" {
		t.Fatalf("got %q", got)
	}
	if got := CWMPDeviceID("00d09e", "", "ABC-1"); got != "00d09e-ABC%2D1" {
		t.Fatalf("no product class: %q", got)
	}
	// Distinct triples never collide thanks to escaping '-'.
	if CWMPDeviceID("A", "B-C", "D") == CWMPDeviceID("A", "B", "C-D") {
		t.Fatal("collision")
	}
}

func TestValidateDeviceID(t *testing.T) {
	for _, bad := range []string{"", "a\x00b", "a\nb", strings.Repeat("x", MaxDeviceIDLen+1), "\xff"} {
		if ValidateDeviceID(bad) == nil {
			t.Errorf("accepted %q", bad)
		}
	}
	if err := ValidateDeviceID("os::00D09E-SN 1"); err != nil {
		t.Error(err)
	}
}

// FuzzParsePath: the parser never panics, errors point inside the input,
// and what it accepts has a kind that matches its last character.
func FuzzParsePath(f *testing.F) {
	for _, s := range []string{"Device.", "Device.A.1.B", "Device.A.[B==\"x\"&&C>1].", "Device.R()", "Device.E!",
		"Device.A.*.B", "Device.A#*+.B", "Device.{i}.", "Device.A.[", "Device.A.[B=="} {
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, p string, supported bool) {
		got, err := ParsePath(p, supported)
		if err != nil {
			var se *PathSyntaxError
			if !errors.As(err, &se) || se.Pos < 0 || se.Pos > len(p) {
				t.Fatalf("bad error for %q: %v", p, err)
			}
			return
		}
		switch {
		case strings.HasSuffix(p, "()"):
			if got.Kind != PathCommand {
				t.Fatalf("%q: kind %v", p, got.Kind)
			}
		case strings.HasSuffix(p, "."):
			if got.Kind != PathObject {
				t.Fatalf("%q: kind %v", p, got.Kind)
			}
		}
	})
}
