package controller

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestRolloutStrategyDefaultsAndErrors(t *testing.T) {
	s, err := ParseRolloutStrategy(nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.BatchPercent != 10 || *s.FailureThreshold != 0.1 || s.MinFinished != 10 || s.BatchFor(1000) != 100 || s.BatchFor(3) != 1 {
		t.Fatalf("defaults: %+v", s)
	}
	if s, err := ParseRolloutStrategy(json.RawMessage(`{"batch_size":25,"pause":"90s"}`)); err != nil || s.BatchFor(1000) != 25 || s.PauseDuration() != 90*time.Second {
		t.Fatalf("batch_size: %+v %v", s, err)
	}
	for body, says := range map[string]string{
		`{"batch_size":5,"batch_percent":5}`: "not both",
		`{"batch_percent":150}`:              "batch_percent",
		`{"failure_threshold":0}`:            "failure_threshold",
		`{"failure_threshold":1.5}`:          "failure_threshold",
		`{"pause":"soon"}`:                   "rollout.pause",
		`{"batch_size":-1}`:                  "batch_size",
		`{"max_in_flight":-2}`:               "max_in_flight",
		`{"batchsize":5}`:                    "unknown field",
		`{"maintenance_window":{"cron":"61 * * * *","duration":"1h"}}`:                          "maintenance_window.cron",
		`{"maintenance_window":{"cron":"0 2 * * *","duration":"0s"}}`:                           "maintenance_window.duration",
		`{"maintenance_window":{"cron":"0 2 * * *","duration":"1h","timezone":"Mars/Olympus"}}`: "timezone",
		`{"maintenance_window":{"cron":"CRON_TZ=UTC 0 2 * * *","duration":"1h"}}`:               "not in the expression",
	} {
		if _, err := ParseRolloutStrategy(json.RawMessage(body)); err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("%s: %v, want an error saying %q", body, err, says)
		}
	}
}

// A window "0 2 * * *" for 3h in Paris is open 02:00-05:00 Paris time,
// which is 01:00-04:00 UTC in winter and 00:00-03:00 UTC in summer.
func TestRolloutMaintenanceWindowInItsTimeZone(t *testing.T) {
	s, err := ParseRolloutStrategy(json.RawMessage(`{"maintenance_window":{"cron":"0 2 * * *","duration":"3h","timezone":"Europe/Paris"}}`))
	if err != nil {
		t.Fatal(err)
	}
	at := func(v string) time.Time {
		tm, err := time.Parse(time.RFC3339, v)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	for v, open := range map[string]bool{
		"2026-01-15T00:59:59Z": false,
		"2026-01-15T01:00:00Z": true,
		"2026-01-15T03:59:59Z": true,
		"2026-01-15T04:00:00Z": false,
		"2026-07-15T00:30:00Z": true,
		"2026-07-15T03:30:00Z": false,
		"2026-07-15T12:00:00Z": false,
	} {
		if got := s.InWindow(at(v)); got != open {
			t.Errorf("%s: in window %v, want %v", v, got, open)
		}
	}
	if next := s.NextWindow(at("2026-01-15T12:00:00Z")); !next.Equal(at("2026-01-16T01:00:00Z")) {
		t.Errorf("next window %v", next)
	}
	if always, _ := ParseRolloutStrategy(nil); !always.InWindow(time.Now()) || !always.NextWindow(time.Now()).IsZero() {
		t.Error("no window: always open")
	}
}
