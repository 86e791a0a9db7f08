package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// groupsEnv is the real API stack (New's authentication and route
// error mapping) with the group routes registered the way the wiring line
// in New will, over a real database.
type groupsEnv struct {
	t        *testing.T
	st       *store.Store
	srv      *httptest.Server
	operator string
	viewer   string
}

func newGroupsEnv(t *testing.T) *groupsEnv {
	t.Helper()
	st, _ := storetest.Open(t)
	a := New(Options{Store: st})
	srv := httptest.NewServer(a)
	t.Cleanup(srv.Close)
	ctx := context.Background()
	_, op, err := st.CreateToken(ctx, "ops-alice", store.RoleOperator)
	if err != nil {
		t.Fatal(err)
	}
	_, view, err := st.CreateToken(ctx, "noc-viewer", store.RoleViewer)
	if err != nil {
		t.Fatal(err)
	}
	return &groupsEnv{t: t, st: st, srv: srv, operator: op, viewer: view}
}

// do sends a request with the operator token and decodes the body into
// out (when non-nil), returning the status.
func (e *groupsEnv) do(method, path string, body any, out any) int {
	return e.doAs(e.operator, method, path, body, out)
}

func (e *groupsEnv) doAs(token, method, path string, body any, out any) int {
	e.t.Helper()
	var rd *bytes.Reader
	switch b := body.(type) {
	case nil:
		rd = bytes.NewReader(nil)
	case string:
		rd = bytes.NewReader([]byte(b))
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	if out != nil && res.StatusCode != http.StatusNoContent {
		if err := json.NewDecoder(res.Body).Decode(out); err != nil {
			e.t.Fatalf("%s %s: %d, body: %v", method, path, res.StatusCode, err)
		}
	}
	return res.StatusCode
}

func TestGroupsAPILifecycleAndAudit(t *testing.T) {
	e := newGroupsEnv(t)
	var g store.Group
	if code := e.do("POST", "/api/v1/groups", GroupRequest{Name: "huawei-online", Filter: `manufacturer == "Huawei" && online`}, &g); code != 201 || !strings.HasPrefix(g.ID, "grp_") {
		t.Fatalf("create: %d %+v", code, g)
	}
	var got store.Group
	if code := e.do("GET", "/api/v1/groups/"+g.ID, nil, &got); code != 200 || got.Filter != g.Filter {
		t.Fatalf("get: %d %+v", code, got)
	}
	var ej ErrorJSON
	if code := e.do("POST", "/api/v1/groups", GroupRequest{Name: "huawei-online", Filter: "true"}, &ej); code != 409 || ej.Code != "conflict" {
		t.Fatalf("duplicate: %d %+v", code, ej)
	}
	var u store.Group
	if code := e.do("PUT", "/api/v1/groups/"+g.ID, GroupRequest{Name: "huawei", Filter: `manufacturer == "Huawei"`}, &u); code != 200 || u.Name != "huawei" {
		t.Fatalf("update: %d %+v", code, u)
	}
	if code := e.do("PUT", "/api/v1/groups/grp_nope", GroupRequest{Name: "x", Filter: "true"}, &ej); code != 404 {
		t.Fatalf("update missing: %d %+v", code, ej)
	}
	var list GroupList
	if code := e.do("GET", "/api/v1/groups?limit=10", nil, &list); code != 200 || len(list.Groups) != 1 || list.NextCursor != "" {
		t.Fatalf("list: %d %+v", code, list)
	}
	// Viewers read but do not change.
	if code := e.doAs(e.viewer, "GET", "/api/v1/groups/"+g.ID, nil, &got); code != 200 {
		t.Fatalf("viewer get: %d", code)
	}
	if code := e.doAs(e.viewer, "DELETE", "/api/v1/groups/"+g.ID, nil, &ej); code != 403 {
		t.Fatalf("viewer delete: %d %+v", code, ej)
	}
	if code := e.do("DELETE", "/api/v1/groups/"+g.ID, nil, nil); code != 204 {
		t.Fatalf("delete: %d", code)
	}
	if code := e.do("GET", "/api/v1/groups/"+g.ID, nil, &ej); code != 404 || ej.Code != "not_found" {
		t.Fatalf("get deleted: %d %+v", code, ej)
	}

	var audit AuditList
	if code := e.do("GET", "/api/v1/audit?object_type=group&object_id="+g.ID, nil, &audit); code != 200 {
		t.Fatalf("audit: %d", code)
	}
	var actions []string
	for _, a := range audit.Entries {
		actions = append(actions, a.Action)
		if !strings.HasPrefix(a.Actor, "ops-alice (tok_") {
			t.Errorf("actor %q, want the operator token's owner", a.Actor)
		}
	}
	if !slices.Equal(actions, []string{"delete", "update", "create"}) {
		t.Fatalf("audit actions %v", actions)
	}
	if string(audit.Entries[2].Before) != "null" && audit.Entries[2].Before != nil {
		t.Errorf("create's before: %s", audit.Entries[2].Before)
	}
	var page AuditList
	if code := e.do("GET", "/api/v1/audit?limit=2", nil, &page); code != 200 || len(page.Entries) != 2 || page.NextCursor == "" {
		t.Fatalf("audit page 1: %d %+v", code, page)
	}
	var rest AuditList
	if code := e.do("GET", "/api/v1/audit?limit=2&cursor="+page.NextCursor, nil, &rest); code != 200 || len(rest.Entries) != 1 || rest.NextCursor != "" || rest.Entries[0].Action != "create" {
		t.Fatalf("audit page 2: %d %+v", code, rest)
	}
}

func TestGroupsAPIRejectsBadFiltersWithPosition(t *testing.T) {
	e := newGroupsEnv(t)
	for body, want := range map[string]string{
		`{"name":"a","filter":"manufacturer == 3"}`:            "filter 1:14: found no matching overload",
		`{"name":"a","filter":"online &&\n  serail == \"x\""}`: "filter 2:3: undeclared reference to 'serail'",
		`{"name":"a","filter":"serial_number"}`:                "must be a bool expression",
		`{"name":"a","filter":""}`:                             "filter is empty",
		`{"name":"","filter":"true"}`:                          "needs a name",
		`{"name":"a","filter":"true","colour":"red"}`:          "unknown field",
		`{"name":"a","filter":"true"} {}`:                      "data after the JSON object",
		`not json`:                                             "request body",
	} {
		var ej ErrorJSON
		if code := e.do("POST", "/api/v1/groups", body, &ej); code != 400 || ej.Code != "invalid_argument" || !strings.Contains(ej.Message, want) {
			t.Errorf("%s: %d %+v, want 400 saying %q", body, code, ej, want)
		}
	}
	huge := fmt.Sprintf(`{"name":"a","filter":"%s"}`, strings.Repeat("x", maxGroupBody))
	var ej ErrorJSON
	if code := e.do("POST", "/api/v1/groups", huge, &ej); code != 413 || !strings.Contains(ej.Message, "larger than") {
		t.Errorf("huge body: %d %+v", code, ej)
	}
	var list GroupList
	if code := e.do("GET", "/api/v1/groups", nil, &list); code != 200 || len(list.Groups) != 0 {
		t.Fatalf("rejected groups were stored: %+v", list)
	}
	var audit AuditList
	if code := e.do("GET", "/api/v1/audit", nil, &audit); code != 200 || len(audit.Entries) != 0 {
		t.Fatalf("rejected changes were audited: %+v", audit)
	}
	for _, q := range []string{"limit=0", "limit=x", "cursor=%%%", "colour=red", "limit=1&limit=2"} {
		if code := e.do("GET", "/api/v1/groups?"+q, nil, &ej); code != 400 {
			t.Errorf("groups?%s: %d", q, code)
		}
	}
	if code := e.do("GET", "/api/v1/audit?cursor=eA", nil, &ej); code != 400 || !strings.Contains(ej.Message, "cursor") {
		t.Errorf("bad audit cursor: %d %+v", code, ej)
	}
}

func TestGroupsAPIDevicesPaging(t *testing.T) {
	e := newGroupsEnv(t)
	ctx := context.Background()
	var batch []store.Observation
	var want []string
	for i := 0; i < 25; i++ {
		id := fmt.Sprintf("dev-%02d", i)
		d := devicemodel.Device{ID: id, Protocol: devicemodel.ProtocolUSP, Manufacturer: "ZTE"}
		if i%4 == 1 {
			d.Manufacturer = "Huawei"
			want = append(want, id)
		}
		batch = append(batch, store.Observation{EventID: id, Kind: "online", Time: time.Now(), Payload: []byte{}, Device: d, Online: true})
	}
	if err := e.st.ApplyObservations(ctx, batch); err != nil {
		t.Fatal(err)
	}
	var g store.Group
	if code := e.do("POST", "/api/v1/groups", GroupRequest{Name: "hw", Filter: `manufacturer == "Huawei" && protocol == "usp"`}, &g); code != 201 {
		t.Fatalf("create: %d", code)
	}
	var got []string
	cursor := ""
	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatal("paging does not end")
		}
		path := "/api/v1/groups/" + g.ID + "/devices?limit=2"
		if cursor != "" {
			path += "&cursor=" + cursor
		}
		var m GroupMembers
		if code := e.do("GET", path, nil, &m); code != 200 || len(m.DeviceIDs) > 2 {
			t.Fatalf("%s: %d %+v", path, code, m)
		}
		got = append(got, m.DeviceIDs...)
		if m.NextCursor == "" {
			break
		}
		cursor = m.NextCursor
	}
	if !slices.Equal(got, want) {
		t.Fatalf("members %v, want %v", got, want)
	}
	var ej ErrorJSON
	if code := e.do("GET", "/api/v1/groups/grp_nope/devices", nil, &ej); code != 404 {
		t.Fatalf("unknown group: %d %+v", code, ej)
	}
	if code := e.do("GET", "/api/v1/groups/"+g.ID+"/devices?cursor=%%%", nil, &ej); code != 400 {
		t.Fatalf("bad cursor: %d %+v", code, ej)
	}
}

// TestGroupListsOnePagingRule: every paged list of the group routes
// (groups, members, audit, a device's policy statuses) answers an empty
// page as [] and a malformed cursor as a 400 naming it, through one
// helper (listPage).
func TestGroupListsOnePagingRule(t *testing.T) {
	e := newGroupsEnv(t)
	var g store.Group
	if code := e.do("POST", "/api/v1/groups", `{"name":"none","filter":"serial_number == \"nobody\""}`, &g); code != 201 {
		t.Fatalf("create group: %d", code)
	}
	if err := e.st.ApplyObservations(context.Background(), []store.Observation{{EventID: "seed-paging", Kind: "inform", Time: time.Now(),
		Payload: []byte("x"), Online: true, Device: devicemodel.Device{ID: "dev-paging", Protocol: devicemodel.ProtocolCWMP}}}); err != nil {
		t.Fatal(err)
	}
	for path, field := range map[string]string{
		"/api/v1/groups/" + g.ID + "/devices": "device_ids",
		"/api/v1/audit?object_type=task":      "entries",
		"/api/v1/devices/dev-paging/policies": "statuses",
	} {
		var body map[string]json.RawMessage
		if code := e.doAs(e.viewer, "GET", path, nil, &body); code != 200 || string(body[field]) != "[]" {
			t.Errorf("%s: %d %s=%s, want 200 and []", path, code, field, body[field])
		}
		sep := "?"
		if strings.Contains(path, "?") {
			sep = "&"
		}
		var ej ErrorJSON
		if code := e.doAs(e.viewer, "GET", path+sep+"cursor=%%%", nil, &ej); code != 400 || !strings.Contains(ej.Message, "cursor") {
			t.Errorf("%s with a malformed cursor: %d %+v", path, code, ej)
		}
	}
}
