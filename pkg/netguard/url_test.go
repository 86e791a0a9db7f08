package netguard

import (
	"strings"
	"testing"
)

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"nats://duet:s3cret@10.0.0.1:4222":      "nats://duet:***@10.0.0.1:4222",
		"nats://tok3n@10.0.0.1:4222":            "nats://***@10.0.0.1:4222",
		"mqtt://u:p@a:1883,mqtt://u:p2@b:1883":  "mqtt://u:***@a:1883,mqtt://u:***@b:1883",
		"nats://127.0.0.1:4222":                 "nats://127.0.0.1:4222",
		"http://files.example/x.bin":            "http://files.example/x.bin",
		"ftp://user:pa ss@files.example/fw.bin": "ftp://***@files.example/fw.bin",
	} {
		got := RedactURL(in)
		if got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
		if strings.Contains(got, "s3cret") || strings.Contains(got, "tok3n") || strings.Contains(got, "p2") {
			t.Errorf("%q leaks", got)
		}
	}
}
