package api

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// TestRolloutAPIRefusesWhatItCannotDo: bad strategies, double enabling,
// actions from the wrong state and bad status filters are refused with
// the field named, and change nothing; every accepted action is audited.
func TestRolloutAPIRefusesWhatItCannotDo(t *testing.T) {
	e := newGroupsEnv(t)
	ctx := context.Background()
	d := devicemodel.Device{ID: "cpe-1", Protocol: devicemodel.ProtocolCWMP, Manufacturer: "ACME"}
	if err := e.st.ApplyObservations(ctx, []store.Observation{{EventID: "e1", Kind: "inform", Time: time.Now(), Payload: []byte{}, Device: d, Online: true}}); err != nil {
		t.Fatal(err)
	}
	var g store.Group
	if code := e.do("POST", "/api/v1/groups", GroupRequest{Name: "acme", Filter: `manufacturer == "ACME"`}, &g); code != 201 {
		t.Fatalf("group: %d", code)
	}
	var p store.Policy
	if code := e.do("POST", "/api/v1/policies", PolicyRequest{GroupID: g.ID, Name: "inform", Kind: "parameters",
		Spec: json.RawMessage(`{"parameters":[{"path":"Device.ManagementServer.PeriodicInformInterval","value":"300"}]}`)}, &p); code != 201 {
		t.Fatalf("policy: %d", code)
	}
	base := "/api/v1/policies/" + p.ID
	refuse := func(method, path string, body any, code int, says string) {
		t.Helper()
		var ej ErrorJSON
		if got := e.do(method, path, body, &ej); got != code || !strings.Contains(ej.Message, says) {
			t.Errorf("%s %s %v: %d %+v, want %d saying %q", method, path, body, got, ej, code, says)
		}
	}
	refuse("POST", base+"/enable", `{"rollout":{"batch_percent":300}}`, 400, "batch_percent")
	refuse("POST", base+"/enable", `{"rollout":{"maintenance_window":{"cron":"* *","duration":"1h"}}}`, 400, "maintenance_window.cron")
	refuse("POST", base+"/enable", `{"rollout":{"batch_size":1},"extra":1}`, 400, "extra")
	refuse("POST", "/api/v1/policies/pol_nope/enable", `{}`, 404, "not found")
	refuse("GET", base+"/rollout", nil, 404, "never enabled")
	refuse("POST", base+"/rollout/pause", nil, 404, "never enabled")
	if got, _ := e.st.FindPolicyByID(ctx, p.ID); got.Enabled {
		t.Fatal("a refused enable enabled the policy")
	}

	var v RolloutView
	if code := e.do("POST", base+"/enable", `{"rollout":{"batch_size":10,"pause":"5m"}}`, &v); code != 200 || v.State != "running" || !strings.HasPrefix(v.StartedBy, "ops-alice") {
		t.Fatalf("enable: %d %+v", code, v)
	}
	refuse("POST", base+"/enable", `{}`, 409, "already enabled")
	refuse("POST", base+"/rollout/resume", nil, 409, "running")
	refuse("POST", base+"/rollout/pause", `{"retry_failed":true}`, 400, "retry_failed")
	refuse("GET", base+"/devices?status=happy", nil, 400, "status")
	refuse("GET", "/api/v1/devices/nope/policies", nil, 404, "not found")
	if code := e.do("POST", base+"/rollout/pause", `{"reason":"change freeze"}`, &v); code != 200 || v.State != "paused" || v.Reason != "change freeze" {
		t.Fatalf("pause: %d %+v", code, v)
	}
	refuse("PUT", base, PolicyRequest{Name: "inform", Kind: "parameters", Enabled: true,
		Spec: json.RawMessage(`{"parameters":[{"path":"Device.ManagementServer.PeriodicInformInterval","value":"300"}]}`)}, 400, "/enable")
	if code := e.do("POST", base+"/rollout/abort", nil, &v); code != 200 || v.State != "aborted" {
		t.Fatalf("abort: %d %+v", code, v)
	}
	refuse("POST", base+"/rollout/resume", nil, 409, "aborted")
	var audit struct {
		Entries []store.AuditEntry `json:"entries"`
	}
	if code := e.do("GET", "/api/v1/audit?object_type=rollout&object_id="+p.ID, nil, &audit); code != 200 {
		t.Fatalf("audit: %d", code)
	}
	var actions []string
	for _, a := range audit.Entries {
		if !strings.HasPrefix(a.Actor, "ops-alice") {
			t.Errorf("audit actor %q", a.Actor)
		}
		actions = append(actions, a.Action)
	}
	if strings.Join(actions, ",") != "aborted,paused,enable" {
		t.Fatalf("audit: %v", actions)
	}
}
