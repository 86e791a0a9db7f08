package store_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

func TestGroupCRUDWritesAudit(t *testing.T) {
	s, _ := storetest.Open(t)
	ctx := context.Background()
	g, err := s.CreateGroup(ctx, "alice", store.Group{Name: "huawei", Filter: `manufacturer == "Huawei"`})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(g.ID, "grp_") || g.CreatedAt.IsZero() {
		t.Fatalf("created %+v", g)
	}
	if _, err := s.CreateGroup(ctx, "alice", store.Group{Name: "huawei", Filter: "true"}); devicemodel.ErrorCode(err) != devicemodel.CodeConflict {
		t.Fatalf("duplicate name: %v", err)
	}
	for _, bad := range []store.Group{{Name: ""}, {Name: "  "}, {Name: strings.Repeat("x", store.MaxNameLen+1)}} {
		if _, err := s.CreateGroup(ctx, "alice", bad); devicemodel.ErrorCode(err) != devicemodel.CodeInvalidArgument {
			t.Errorf("name %q: %v", bad.Name, err)
		}
	}
	if _, err := s.CreateGroup(ctx, "", store.Group{Name: "x"}); devicemodel.ErrorCode(err) != devicemodel.CodeInvalidArgument {
		t.Errorf("no actor: %v", err)
	}
	g.Filter = `manufacturer == "Huawei" && online`
	u, err := s.UpdateGroup(ctx, "bob", g)
	if err != nil || u.Filter != g.Filter || !u.UpdatedAt.After(g.UpdatedAt) && !u.UpdatedAt.Equal(g.UpdatedAt) {
		t.Fatalf("update: %+v %v", u, err)
	}
	if _, err := s.UpdateGroup(ctx, "bob", store.Group{ID: "grp_nope", Name: "n"}); devicemodel.ErrorCode(err) != devicemodel.CodeNotFound {
		t.Fatalf("update missing: %v", err)
	}
	got, err := s.FindGroupByID(ctx, g.ID)
	if err != nil || got.Filter != g.Filter {
		t.Fatalf("find: %+v %v", got, err)
	}
	if err := s.DeleteGroup(ctx, "carol", g.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.FindGroupByID(ctx, g.ID); devicemodel.ErrorCode(err) != devicemodel.CodeNotFound {
		t.Fatalf("after delete: %v", err)
	}
	if err := s.DeleteGroup(ctx, "carol", g.ID); devicemodel.ErrorCode(err) != devicemodel.CodeNotFound {
		t.Fatalf("delete twice: %v", err)
	}

	entries, next, err := s.FindAudit(ctx, store.AuditFilter{ObjectType: store.AuditGroup, ObjectID: g.ID})
	if err != nil || next != "" {
		t.Fatal(err, next)
	}
	// Failed changes leave no audit row: exactly create, update, delete.
	want := []struct{ actor, action, before, after string }{
		{"carol", "delete", `online`, ""},
		{"bob", "update", `"manufacturer == \"Huawei\""`, `online`},
		{"alice", "create", "", `"manufacturer == \"Huawei\""`},
	}
	if len(entries) != len(want) {
		t.Fatalf("%d audit entries: %+v", len(entries), entries)
	}
	for i, w := range want {
		e := entries[i]
		if e.Actor != w.actor || e.Action != w.action || e.ObjectType != "group" || e.ObjectID != g.ID {
			t.Errorf("entry %d: %+v, want %s by %s", i, e, w.action, w.actor)
		}
		check := func(what string, raw json.RawMessage, has string) {
			if has == "" {
				if raw != nil {
					t.Errorf("entry %d %s: %s, want null", i, what, raw)
				}
				return
			}
			var gg store.Group
			if err := json.Unmarshal(raw, &gg); err != nil || gg.ID != g.ID || !strings.Contains(string(raw), has) {
				t.Errorf("entry %d %s: %s, want the group containing %s", i, what, raw, has)
			}
		}
		check("before", e.Before, w.before)
		check("after", e.After, w.after)
	}
}

func TestPolicyCRUDAndGroupDeleteRestricted(t *testing.T) {
	s, _ := storetest.Open(t)
	ctx := context.Background()
	g, err := s.CreateGroup(ctx, "alice", store.Group{Name: "all", Filter: "true"})
	if err != nil {
		t.Fatal(err)
	}
	spec := json.RawMessage(`{"parameters":{"Device.ManagementServer.PeriodicInformInterval":"300"}}`)
	p, err := s.CreatePolicy(ctx, "alice", store.Policy{GroupID: g.ID, Name: "inform", Priority: 10, Kind: "parameters", Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	if p.Enabled || p.Priority != 10 || !strings.Contains(string(p.Spec), "PeriodicInformInterval") {
		t.Fatalf("created %+v", p)
	}
	low, err := s.CreatePolicy(ctx, "alice", store.Policy{GroupID: g.ID, Name: "low", Priority: 1, Kind: "parameters", Spec: json.RawMessage(`{}`)})
	if err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string]store.Policy{
		"unknown group":  {GroupID: "grp_nope", Name: "x", Kind: "parameters", Spec: json.RawMessage(`{}`)},
		"duplicate name": {GroupID: g.ID, Name: "inform", Kind: "parameters", Spec: json.RawMessage(`{}`)},
	} {
		if _, err := s.CreatePolicy(ctx, "alice", bad); devicemodel.ErrorCode(err) != devicemodel.CodeConflict {
			t.Errorf("%s: %v, want conflict", name, err)
		}
	}
	for name, bad := range map[string]store.Policy{
		"no kind":  {GroupID: g.ID, Name: "x", Spec: json.RawMessage(`{}`)},
		"bad spec": {GroupID: g.ID, Name: "x", Kind: "parameters", Spec: json.RawMessage(`{`)},
		"no spec":  {GroupID: g.ID, Name: "x", Kind: "parameters"},
	} {
		if _, err := s.CreatePolicy(ctx, "alice", bad); devicemodel.ErrorCode(err) != devicemodel.CodeInvalidArgument {
			t.Errorf("%s: %v, want invalid argument", name, err)
		}
	}
	if err := s.DeleteGroup(ctx, "alice", g.ID); devicemodel.ErrorCode(err) != devicemodel.CodeConflict || !strings.Contains(err.Error(), "still has policies") {
		t.Fatalf("delete group with policies: %v", err)
	}
	// UpdatePolicy does not enable (that goes with a rollout), and a
	// change of what the policy wants bumps its revision; a rename does not.
	p.Enabled = true
	p.Priority = 0
	if _, err := s.UpdatePolicy(ctx, "bob", p); err != nil {
		t.Fatal(err)
	}
	ps, err := s.FindPolicies(ctx, g.ID)
	if err != nil || len(ps) != 2 || ps[0].ID != low.ID || ps[1].Enabled || ps[1].Revision != 2 {
		t.Fatalf("policies by priority: %+v %v", ps, err)
	}
	p.Name = "renamed"
	if got, err := s.UpdatePolicy(ctx, "bob", p); err != nil || got.Revision != 2 {
		t.Fatalf("rename: %+v %v", got, err)
	}
	for _, id := range []string{p.ID, low.ID} {
		if err := s.DeletePolicy(ctx, "bob", id); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.FindPolicyByID(ctx, p.ID); devicemodel.ErrorCode(err) != devicemodel.CodeNotFound {
		t.Fatalf("deleted policy: %v", err)
	}
	if err := s.DeleteGroup(ctx, "alice", g.ID); err != nil {
		t.Fatalf("delete emptied group: %v", err)
	}
	entries, _, err := s.FindAudit(ctx, store.AuditFilter{ObjectType: store.AuditPolicy, ObjectID: p.ID})
	if err != nil || len(entries) != 4 || entries[1].Action != "update" || !strings.Contains(string(entries[1].After), `"name": "renamed"`) ||
		!strings.Contains(string(entries[2].After), `"priority": 0`) {
		t.Fatalf("policy audit: %+v %v", entries, err)
	}
}

func TestFindGroupsAndAuditPaging(t *testing.T) {
	s, _ := storetest.Open(t)
	ctx := context.Background()
	for i := 0; i < 7; i++ {
		if _, err := s.CreateGroup(ctx, "alice", store.Group{Name: fmt.Sprintf("g%d", i), Filter: "true"}); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	after := ""
	for pages := 0; ; pages++ {
		gs, next, err := s.FindGroups(ctx, store.PageFilter{After: after, Limit: 3})
		if err != nil || pages > 3 {
			t.Fatal(err, pages)
		}
		for _, g := range gs {
			if g.ID <= after || seen[g.ID] {
				t.Fatalf("group %s out of order or repeated", g.ID)
			}
			seen[g.ID] = true
			after = g.ID
		}
		if next == "" {
			break
		}
		if after, err = store.DecodeCursor(next); err != nil {
			t.Fatal(err)
		}
	}
	if len(seen) != 7 {
		t.Fatalf("paged %d groups", len(seen))
	}
	var ids []int64
	var before int64
	for {
		es, next, err := s.FindAudit(ctx, store.AuditFilter{Before: before, Limit: 2})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			ids = append(ids, e.ID)
		}
		if next == "" {
			break
		}
		if before, err = store.DecodeSeqCursor(next); err != nil {
			t.Fatal(err)
		}
	}
	if len(ids) != 7 {
		t.Fatalf("audit pages: %v", ids)
	}
	for i := 1; i < len(ids); i++ {
		if ids[i] >= ids[i-1] {
			t.Fatalf("audit not newest first: %v", ids)
		}
	}
	if _, err := store.DecodeSeqCursor(store.EncodeCursor("x")); devicemodel.ErrorCode(err) != devicemodel.CodeInvalidArgument {
		t.Fatalf("bad audit cursor: %v", err)
	}
}

func TestDeviceTagsAndScanDevices(t *testing.T) {
	s, _ := storetest.Open(t)
	ctx := context.Background()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var batch []store.Observation
	for i := 0; i < 5; i++ {
		batch = append(batch, obs(fmt.Sprintf("dev-%d", i), t0, "inform", true, func(d *devicemodel.Device) { d.Manufacturer = "ACME" }))
	}
	if err := s.ApplyObservations(ctx, batch); err != nil {
		t.Fatal(err)
	}
	if err := s.SetDeviceTags(ctx, "dev-1", []string{"north", "lab", "north"}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetDeviceTags(ctx, "dev-1", []string{"south", "lab"}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetDeviceTags(ctx, "nope", []string{"x"}); devicemodel.ErrorCode(err) != devicemodel.CodeConflict {
		t.Fatalf("unknown device: %v", err)
	}
	if err := s.SetDeviceTags(ctx, "dev-2", []string{""}); devicemodel.ErrorCode(err) != devicemodel.CodeInvalidArgument {
		t.Fatalf("empty tag: %v", err)
	}
	page, err := s.ScanDevices(ctx, store.DeviceFilter{After: "dev-0", Limit: 2})
	if err != nil || len(page) != 2 || page[0].Device.ID != "dev-1" || page[1].Device.ID != "dev-2" {
		t.Fatalf("page: %+v %v", page, err)
	}
	if got := strings.Join(page[0].Tags, ","); got != "lab,south" || page[0].Device.Manufacturer != "ACME" || !page[0].Device.Online {
		t.Fatalf("dev-1: %+v", page[0])
	}
	if page[1].Tags == nil || len(page[1].Tags) != 0 {
		t.Fatalf("dev-2 tags %#v, want empty", page[1].Tags)
	}
	if rest, err := s.ScanDevices(ctx, store.DeviceFilter{After: "dev-3", Limit: 100}); err != nil || len(rest) != 1 {
		t.Fatalf("last page: %+v %v", rest, err)
	}
	if err := s.ApplyObservations(ctx, []store.Observation{obs("dev-2", t0.Add(time.Second), "offline", false, func(d *devicemodel.Device) { d.Manufacturer = "Nokia" })}); err != nil {
		t.Fatal(err)
	}
	off := false
	if got, err := s.ScanDevices(ctx, store.DeviceFilter{Online: &off, Manufacturer: "Nokia", Protocol: devicemodel.ProtocolCWMP}); err != nil || len(got) != 1 || got[0].Device.ID != "dev-2" {
		t.Fatalf("narrowed: %+v %v", got, err)
	}
	if got, err := s.ScanDevices(ctx, store.DeviceFilter{After: "dev-2", Manufacturer: "Nokia"}); err != nil || len(got) != 0 {
		t.Fatalf("narrowed after: %+v %v", got, err)
	}
}

func TestFindParameterValues(t *testing.T) {
	s, _ := storetest.Open(t)
	ctx := context.Background()
	t0 := time.Now()
	if err := s.ApplyObservations(ctx, []store.Observation{obs("a", t0, "inform", true, nil), obs("b", t0, "inform", true, nil)}); err != nil {
		t.Fatal(err)
	}
	if err := s.UpsertParameters(ctx, []store.Parameter{
		{DeviceID: "a", Path: "Device.X", Value: "1", UpdatedAt: t0},
		{DeviceID: "a", Path: "Device.Y", Value: "2", UpdatedAt: t0},
		{DeviceID: "b", Path: "Device.X", Value: "3", UpdatedAt: t0},
	}); err != nil {
		t.Fatal(err)
	}
	got, err := s.FindParameterValues(ctx, []string{"a", "b", "c"}, []string{"Device.X"}, false)
	if err != nil || fmt.Sprint(got) != "map[a:map[Device.X:1] b:map[Device.X:3]]" {
		t.Fatalf("paths: %v %v", got, err)
	}
	got, err = s.FindParameterValues(ctx, []string{"a"}, nil, true)
	if err != nil || fmt.Sprint(got) != "map[a:map[Device.X:1 Device.Y:2]]" {
		t.Fatalf("all: %v %v", got, err)
	}
	if got, err := s.FindParameterValues(ctx, []string{"a"}, nil, false); err != nil || len(got) != 0 {
		t.Fatalf("nothing asked: %v %v", got, err)
	}
	// Subtrees: a prefix is a range, and its wildcard characters are
	// literal (Device.S_ is not Device.SX).
	if err := s.UpsertParameters(ctx, []store.Parameter{
		{DeviceID: "a", Path: "Device.S.1.ID", Value: "s1", Type: "string", UpdatedAt: t0},
		{DeviceID: "a", Path: "Device.S.2.ID", Value: "s2", UpdatedAt: t0},
		{DeviceID: "a", Path: "Device.SX.1.ID", Value: "no", UpdatedAt: t0},
		{DeviceID: "b", Path: "Device.S_.1.ID", Value: "lit", UpdatedAt: t0},
	}); err != nil {
		t.Fatal(err)
	}
	values, types, err := s.FindParameterValuesAndTypes(ctx, []string{"a", "b"}, []string{"Device.X", "Device.S.1.ID"}, false, "Device.S.", "Device.S_.")
	if err != nil || fmt.Sprint(values) != "map[a:map[Device.S.1.ID:s1 Device.S.2.ID:s2 Device.X:1] b:map[Device.S_.1.ID:lit Device.X:3]]" ||
		fmt.Sprint(types) != "map[a:map[Device.S.1.ID:string]]" {
		t.Fatalf("prefixes: %v %v %v", values, types, err)
	}
}
