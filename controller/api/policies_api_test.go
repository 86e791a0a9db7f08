package api

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/controller/policy"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

func TestPoliciesAPIValidatePreviewAndAudit(t *testing.T) {
	e := newGroupsEnv(t)
	var batch []store.Observation
	for i := 0; i < 6; i++ {
		id := fmt.Sprintf("cpe-%d", i)
		d := devicemodel.Device{ID: id, Protocol: devicemodel.ProtocolCWMP, Manufacturer: []string{"Huawei", "ZTE"}[i%2], SerialNumber: fmt.Sprintf("S%d", i)}
		batch = append(batch, store.Observation{EventID: id, Kind: "inform", Time: time.Now(), Payload: []byte{}, Device: d, Online: true})
	}
	if err := e.st.ApplyObservations(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	var g store.Group
	if code := e.do("POST", "/api/v1/groups", GroupRequest{Name: "hw", Filter: `manufacturer == "Huawei"`}, &g); code != 201 {
		t.Fatalf("group: %d", code)
	}
	spec := json.RawMessage(`{"parameters":[{"path":"Device.PPP.Interface.1.Username","expr":"\"pppoe-\" + serial_number"},
		{"path":"Device.ManagementServer.PeriodicInformInterval","value":"300"}]}`)
	req := PolicyRequest{GroupID: g.ID, Name: "pppoe", Priority: 5, Kind: "parameters", Spec: spec}

	for name, c := range map[string]struct {
		mut  func(*PolicyRequest)
		code int
		says string
	}{
		"expr type error": {func(r *PolicyRequest) {
			r.Spec = json.RawMessage(`{"parameters":[{"path":"Device.X","expr":"serial_number + 1"}]}`)
		}, 400, "spec.parameters[0].expr: value expression 1:15: found no matching overload"},
		"bad path":      {func(r *PolicyRequest) { r.Spec = json.RawMessage(`{"parameters":[{"path":"Device.1X","value":"1"}]}`) }, 400, "at position 8"},
		"unknown kind":  {func(r *PolicyRequest) { r.Kind = "bootloader" }, 400, "not supported"},
		"unknown group": {func(r *PolicyRequest) { r.GroupID = "grp_nope" }, 400, "no such group"},
		"enabled":       {func(r *PolicyRequest) { r.Enabled = true }, 400, "POST /api/v1/policies/{id}/enable"},
	} {
		r := req
		c.mut(&r)
		var ej ErrorJSON
		if code := e.do("POST", "/api/v1/policies", r, &ej); code != c.code || !strings.Contains(ej.Message, c.says) {
			t.Errorf("%s: %d %+v, want %d saying %q", name, code, ej, c.code, c.says)
		}
	}

	// Preview before saving, then save and preview the saved one: same answer.
	var unsaved policy.PreviewPage
	if code := e.do("POST", "/api/v1/policies/preview", req, &unsaved); code != 200 {
		t.Fatalf("unsaved preview: %d", code)
	}
	var p store.Policy
	if code := e.do("POST", "/api/v1/policies", req, &p); code != 201 || p.Enabled || p.GroupID != g.ID {
		t.Fatalf("create: %d %+v", code, p)
	}
	var saved policy.PreviewPage
	if code := e.do("POST", "/api/v1/policies/"+p.ID+"/preview", nil, &saved); code != 200 {
		t.Fatalf("saved preview: %d", code)
	}
	a, _ := json.Marshal(unsaved)
	b, _ := json.Marshal(saved)
	if string(a) != string(b) {
		t.Fatalf("previews differ:\n%s\n%s", a, b)
	}
	// manufacturer == "Huawei" is pushed to SQL: only the 3 Huawei devices are evaluated.
	if len(saved.Devices) != 3 || saved.Scanned != 3 || saved.NextCursor != "" {
		t.Fatalf("preview %s", b)
	}
	for _, d := range saved.Devices {
		want := "pppoe-S" + strings.TrimPrefix(d.DeviceID, "cpe-")
		if len(d.Changes) != 2 || d.Changes[0].Desired != want || d.Changes[0].Current != nil || d.Changes[1].Desired != "300" {
			t.Errorf("device %s: %+v", d.DeviceID, d.Changes)
		}
	}
	// Paged.
	var first policy.PreviewPage
	if code := e.do("POST", "/api/v1/policies/"+p.ID+"/preview?limit=2", nil, &first); code != 200 || len(first.Devices) != 2 || first.NextCursor == "" {
		t.Fatalf("page 1: %d %+v", code, first)
	}
	var second policy.PreviewPage
	if code := e.do("POST", "/api/v1/policies/"+p.ID+"/preview?limit=2&cursor="+first.NextCursor, nil, &second); code != 200 || len(second.Devices) != 1 || second.Devices[0].DeviceID != "cpe-4" {
		t.Fatalf("page 2: %d %+v", code, second)
	}

	var ej ErrorJSON
	if code := e.do("DELETE", "/api/v1/groups/"+g.ID, nil, &ej); code != 409 {
		t.Fatalf("delete group with policy: %d %+v", code, ej)
	}
	upd := req
	upd.Priority = 9
	var u store.Policy
	if code := e.do("PUT", "/api/v1/policies/"+p.ID, upd, &u); code != 200 || u.Priority != 9 {
		t.Fatalf("update: %d %+v", code, u)
	}
	upd.GroupID = "grp_other"
	if code := e.do("PUT", "/api/v1/policies/"+p.ID, upd, &ej); code != 400 || !strings.Contains(ej.Message, "cannot move") {
		t.Fatalf("move: %d %+v", code, ej)
	}
	var list PolicyList
	if code := e.do("GET", "/api/v1/policies?group_id="+g.ID, nil, &list); code != 200 || len(list.Policies) != 1 {
		t.Fatalf("list: %d %+v", code, list)
	}
	if code := e.do("GET", "/api/v1/policies", nil, &ej); code != 400 || !strings.Contains(ej.Message, "group_id") {
		t.Fatalf("list without group: %d %+v", code, ej)
	}
	if code := e.do("DELETE", "/api/v1/policies/"+p.ID, nil, nil); code != 204 {
		t.Fatalf("delete: %d", code)
	}
	if code := e.do("GET", "/api/v1/policies/"+p.ID, nil, &ej); code != 404 {
		t.Fatalf("get deleted: %d", code)
	}
	var audit AuditList
	if code := e.do("GET", "/api/v1/audit?object_type=policy&object_id="+p.ID, nil, &audit); code != 200 || len(audit.Entries) != 3 {
		t.Fatalf("audit: %d %+v", code, audit)
	}
	for i, action := range []string{"delete", "update", "create"} {
		if audit.Entries[i].Action != action || !strings.HasPrefix(audit.Entries[i].Actor, "ops-alice") {
			t.Errorf("audit %d: %+v", i, audit.Entries[i])
		}
	}
}
