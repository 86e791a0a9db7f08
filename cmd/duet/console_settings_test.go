package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// The console's settings page and `duet config check` show every
// setting with its source and never a secret: neither a secret setting
// nor the password inside a URL of an ordinary one (DUET_NATS_URL with
// user:password@, which config check printed before).
func TestShownSettingsMaskSecrets(t *testing.T) {
	env := map[string]string{
		"DUET_CWMP_AUTH": "shared", "DUET_CWMP_USERNAME": "acs", "DUET_CWMP_PASSWORD": "cwmp-pw-s3cret-1",
		"DUET_DATABASE_URL": "postgres://duet:db-pw-s3cret@db/duet",
		"DUET_NATS_URL":     "nats://duet:nats-pw-s3cret@nats1:4222,nats://duet:nats-pw-s3cret@nats2:4222",
		"DUET_MQTT_URL":     "mqtt://agent:mqtt-pw-s3cret@broker:1883",
	}
	s, err := parsed(t, []string{"--cwmp-connreq-password", "connreq-pw-s3cret"}, env)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	var all strings.Builder
	for _, st := range s.consoleSettings() {
		got[st.Name] = st.Value + " | " + st.Source
		all.WriteString(st.Name + "=" + st.Value + "\n")
	}
	if strings.Contains(all.String(), "s3cret") {
		t.Fatalf("a secret is shown:\n%s", all.String())
	}
	for name, want := range map[string]string{
		"cwmp-password":         "(secret, set) | environment",
		"cwmp-connreq-password": "(secret, set) | flag",
		"database-url":          "(secret, set) | environment",
		"nats-url":              "nats://duet:***@nats1:4222,nats://duet:***@nats2:4222 | environment",
		"mqtt-url":              "mqtt://agent:***@broker:1883 | environment",
		"cwmp-username":         "acs | environment",
		"cwmp-realm":            "Duet | default",
		"mqtt-password":         " | default",
	} {
		if got[name] != want {
			t.Errorf("%s: %q, want %q", name, got[name], want)
		}
	}
	var out bytes.Buffer
	m := &Main{Stdout: &out, Stderr: &out, Getenv: envOf(env)}
	m.Run(context.Background(), []string{"config", "check"})
	if strings.Contains(out.String(), "s3cret") || !strings.Contains(out.String(), "nats://duet:***@nats1") {
		t.Fatalf("config check shows a secret:\n%s", out.String())
	}
}
