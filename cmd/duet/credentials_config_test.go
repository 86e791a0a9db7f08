package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"strings"
	"testing"
)

// A bad DUET_CREDENTIALS_KEY or DUET_CWMP_REALM stops start-up before
// anything is started, with an error naming the setting and never the key.
func TestCredentialSettingsRefused(t *testing.T) {
	secretish := "c2VjcmV0LWtleS10aGF0LWlzLXRvby1zaG9ydA" // base64 of 27 bytes
	for _, c := range []struct{ env, value, want string }{
		{"DUET_CREDENTIALS_KEY", "not base64 at all!", "DUET_CREDENTIALS_KEY"},
		{"DUET_CREDENTIALS_KEY", secretish, "DUET_CREDENTIALS_KEY"},
		{"DUET_CREDENTIALS_KEY", base64.StdEncoding.EncodeToString(make([]byte, 16)), "want 32"},
		{"DUET_CWMP_REALM", `Du"et`, "DUET_CWMP_REALM"},
	} {
		var out bytes.Buffer
		m := &Main{Stdout: &out, Stderr: &out, Getenv: func(k string) string {
			switch k {
			case c.env:
				return c.value
			case "DUET_HTTP_ADDR":
				return "127.0.0.1:0"
			}
			return ""
		}}
		err := m.serve(context.Background(), nil)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.env) {
			t.Errorf("%s=%q: %v", c.env, c.value, err)
			continue
		}
		if c.env == "DUET_CREDENTIALS_KEY" && strings.Contains(err.Error(), c.value) {
			t.Errorf("the error echoes the key: %v", err)
		}
	}
	s := newSettings()
	if err := s.parse("serve", nil, func(string) string { return "" }, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	if r, err := s.realm(); err != nil || r != "Duet" {
		t.Fatalf("default realm %q %v", r, err)
	}
}
