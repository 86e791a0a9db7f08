package main

import (
	"io"
	"strings"
	"testing"
)

// cwmpSettings parses serve settings for the cwmp component alone.
func cwmpSettings(t *testing.T, env map[string]string) (*serveConfig, error) {
	t.Helper()
	s := newSettings()
	all := map[string]string{"DUET_ONLY": "cwmp", "DUET_CWMP_AUTH": "shared", "DUET_CWMP_USERNAME": "acs"}
	for k, v := range env {
		all[k] = v
	}
	if err := s.parse("serve", nil, func(k string) string { return all[k] }, io.Discard); err != nil {
		return nil, err
	}
	return s.checkServe()
}

// TestSharedCWMPPasswordTooWeakRefusedAtStart: DUET_CWMP_PASSWORD=a was
// accepted (issue 15 §6); now the start fails naming the setting.
func TestSharedCWMPPasswordTooWeakRefusedAtStart(t *testing.T) {
	for pass, want := range map[string]string{"a": "too short", "aaaaaaaaaaaaaaaa": "too weak"} {
		_, err := cwmpSettings(t, map[string]string{"DUET_CWMP_PASSWORD": pass})
		if err == nil || !strings.Contains(err.Error(), "DUET_CWMP_PASSWORD") || !strings.Contains(err.Error(), want) {
			t.Errorf("password %q: %v, want an error naming DUET_CWMP_PASSWORD: %s", pass, err, want)
		}
	}
	cfg, err := cwmpSettings(t, map[string]string{"DUET_CWMP_PASSWORD": "a-Long-random-0ne"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.cwmp.AllowDigestWithoutQop {
		t.Error("Digest without qop is allowed by default")
	}
	cfg, err = cwmpSettings(t, map[string]string{"DUET_CWMP_PASSWORD": "a-Long-random-0ne", "DUET_CWMP_ALLOW_DIGEST_WITHOUT_QOP": "true"})
	if err != nil || !cfg.cwmp.AllowDigestWithoutQop {
		t.Fatalf("DUET_CWMP_ALLOW_DIGEST_WITHOUT_QOP=true: %v", err)
	}
}

// TestCWMPAdmissionSettings: the source allow-list, inform rates and the
// per-device session cap reach the adapter; 0 turns a rate off.
func TestCWMPAdmissionSettings(t *testing.T) {
	pass := map[string]string{"DUET_CWMP_PASSWORD": "a-Long-random-0ne"}
	cfg, err := cwmpSettings(t, pass)
	if err != nil {
		t.Fatal(err)
	}
	o := cfg.cwmp
	if o.MaxSessionsPerDevice != 2 || len(o.AllowSources) != 0 || o.InformRateDevice.PerMinute != 20 || o.InformRateSource.Burst != 1000 {
		t.Fatalf("defaults: %+v", o)
	}
	pass["DUET_CWMP_ALLOW_SOURCES"] = "10.0.0.0/8, 2001:db8::/32"
	pass["DUET_CWMP_INFORM_RATE_SOURCE"] = "0"
	pass["DUET_CWMP_MAX_SESSIONS_PER_DEVICE"] = "1"
	if cfg, err = cwmpSettings(t, pass); err != nil {
		t.Fatal(err)
	}
	o = cfg.cwmp
	if len(o.AllowSources) != 2 || o.InformRateSource.PerMinute >= 0 || o.MaxSessionsPerDevice != 1 {
		t.Fatalf("set: %+v", o)
	}
	pass["DUET_CWMP_ALLOW_SOURCES"] = "10.0.0.0/33"
	if _, err := cwmpSettings(t, pass); err == nil || !strings.Contains(err.Error(), "DUET_CWMP_ALLOW_SOURCES") {
		t.Fatalf("bad CIDR: %v", err)
	}
}

// TestSharedConnReqSettings: the shared connection-request credentials go
// together and reach the adapter; the password is a secret (readable from
// a file, never printed).
func TestSharedConnReqSettings(t *testing.T) {
	base := map[string]string{"DUET_CWMP_PASSWORD": "a-Long-random-0ne", "DUET_CWMP_CONNREQ_USERNAME": "cr"}
	if _, err := cwmpSettings(t, base); err == nil || !strings.Contains(err.Error(), "set together") {
		t.Fatalf("username alone: %v", err)
	}
	base["DUET_CWMP_CONNREQ_PASSWORD"] = "crpw"
	cfg, err := cwmpSettings(t, base)
	if err != nil || cfg.cwmp.ConnReqUsername != "cr" || cfg.cwmp.ConnReqPassword != "crpw" {
		t.Fatalf("%v %+v", err, cfg)
	}
	if !newSettings().byFlag["cwmp-connreq-password"].secret {
		t.Error("cwmp-connreq-password is not a secret")
	}
}

// TestEnrolSettings: DUET_CWMP_ENROL=auto is on in the shared mode with a
// credentials key and off without one; on needs the shared mode (and the
// key where the controller runs); the adapter follows the setting.
func TestEnrolSettings(t *testing.T) {
	const key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
	base := func(extra map[string]string) map[string]string {
		m := map[string]string{"DUET_CWMP_PASSWORD": "a-Long-random-0ne"}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	for name, c := range map[string]struct {
		env  map[string]string
		want bool
		err  string
	}{
		"auto without key":               {base(nil), false, ""},
		"auto with key":                  {base(map[string]string{"DUET_CREDENTIALS_KEY": key}), true, ""},
		"auto per-device":                {base(map[string]string{"DUET_CREDENTIALS_KEY": key, "DUET_CWMP_AUTH": "per-device"}), false, ""},
		"off with key":                   {base(map[string]string{"DUET_CREDENTIALS_KEY": key, "DUET_CWMP_ENROL": "off"}), false, ""},
		"on, adapter only, no key":       {base(map[string]string{"DUET_CWMP_ENROL": "on"}), true, ""},
		"on in per-device mode":          {base(map[string]string{"DUET_CWMP_ENROL": "on", "DUET_CWMP_AUTH": "per-device"}), false, "DUET_CWMP_AUTH=shared"},
		"on with the controller, no key": {base(map[string]string{"DUET_CWMP_ENROL": "on", "DUET_ONLY": "cwmp,controller"}), false, "DUET_CREDENTIALS_KEY"},
		"bad value":                      {base(map[string]string{"DUET_CWMP_ENROL": "yes"}), false, "DUET_CWMP_ENROL"},
		"bad window":                     {base(map[string]string{"DUET_CWMP_ENROL_WINDOW": "1s"}), false, "DUET_CWMP_ENROL_WINDOW"},
	} {
		cfg, err := cwmpSettings(t, c.env)
		switch {
		case c.err != "":
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: %v, want an error naming %s", name, err, c.err)
			}
		case err != nil:
			t.Errorf("%s: %v", name, err)
		case cfg.enrol != c.want || cfg.cwmp.Enrol != c.want:
			t.Errorf("%s: enrol %v, adapter %v, want %v", name, cfg.enrol, cfg.cwmp.Enrol, c.want)
		}
	}
}
