package console

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// seedFleet registers n devices: every other one a Huawei, serials
// SN000..; device 0 has Device.WiFi.SSID.1.SSID cached as "old".
func seedFleet(t *testing.T, st *store.Store, n int) {
	t.Helper()
	ctx := context.Background()
	at := time.Now().Add(-time.Minute)
	var batch []store.Observation
	for i := range n {
		id := fmt.Sprintf("dev-%03d", i)
		d := devicemodel.Device{ID: id, Protocol: devicemodel.ProtocolCWMP, Manufacturer: "ZTE", SerialNumber: fmt.Sprintf("SN%03d", i)}
		if i%2 == 0 {
			d.Manufacturer = "Huawei"
		}
		batch = append(batch, store.Observation{EventID: id + "-boot", Kind: "inform", Time: at, Payload: []byte{}, Device: d, Online: true})
	}
	if err := st.ApplyObservations(ctx, batch); err != nil {
		t.Fatal(err)
	}
	if err := st.UpsertParameters(ctx, []store.Parameter{{DeviceID: "dev-000", Path: "Device.WiFi.SSID.1.SSID", Value: "old", UpdatedAt: at}}); err != nil {
		t.Fatal(err)
	}
}

// userSession makes a user of role and logs in.
func userSession(t *testing.T, c *Console, st *store.Store, name string, role store.Role) ([]*http.Cookie, string) {
	t.Helper()
	pw := name + "'s long password"
	if _, err := st.CreateUser(context.Background(), "test", name, role, pw); err != nil {
		t.Fatal(err)
	}
	sess, csrf := logIn(t, c, name, pw, nil)
	return []*http.Cookie{sess}, csrf
}

var htmx = map[string]string{"HX-Request": "true"}

// TestFilterCheckedAsTyped: the editor's check marks a filter's first
// error with a caret under its column, on its line, and counts the
// members of a valid one.
func TestFilterCheckedAsTyped(t *testing.T) {
	c, st := newTestConsole(t)
	seedFleet(t, st, 6)
	ck, _ := userSession(t, c, st, "otto", store.RoleOperator)

	check := func(filter string) answer {
		t.Helper()
		a := do(c, "GET", "/groups/check?"+url.Values{"filter": {filter}}.Encode(), nil, ck, htmx)
		if a.code != 200 {
			t.Fatalf("check %q: %d\n%s", filter, a.code, a.body)
		}
		return a
	}
	caret := regexp.MustCompile(`(?s)<pre class="code caret" id="filter-caret"[^>]*>([^\n]*)\n<mark>([^<]*)</mark></pre>`)
	for _, x := range []struct{ filter, line, caret string }{
		// The error is at column 28 of line 1: the caret is under it.
		{`manufacturer == "Huawei" &&`, `manufacturer == &#34;Huawei&#34; &amp;&amp;`, strings.Repeat(" ", 27) + "^"},
		// On the second line, at column 3.
		{"online &&\n  nope == 1", "  nope == 1", "  ^"},
	} {
		a := check(x.filter)
		m := caret.FindStringSubmatch(a.body)
		if m == nil || !strings.Contains(a.body, `id="filter-error"`) {
			t.Fatalf("check %q shows no marked error:\n%s", x.filter, a.body)
		}
		if m[1] != x.line || m[2] != x.caret {
			t.Errorf("check %q: line %q caret %q, want %q %q", x.filter, m[1], m[2], x.line, x.caret)
		}
	}
	// A valid filter: its members counted.
	a := check(`manufacturer == "Huawei"`)
	if !strings.Contains(a.body, `<strong>3</strong> devices`) || strings.Contains(a.body, "filter-error") {
		t.Fatalf("valid filter:\n%s", a.body)
	}
	// One that cannot be judged on devices without the parameter says so.
	a = check(`params["Device.WiFi.SSID.1.SSID"] == "old"`)
	if !strings.Contains(a.body, `<strong>1</strong> device`) || !strings.Contains(a.body, "5 could not be judged") {
		t.Fatalf("params filter:\n%s", a.body)
	}
}

// TestViewerRefusedEveryPolicyChange: a viewer reads the lists, sees no
// control that changes anything, and each POST of groups, policies and
// rollouts, sent with the viewer's own session and CSRF token, is refused
// before it changes anything.
func TestViewerRefusedEveryPolicyChange(t *testing.T) {
	c, st := newTestConsole(t)
	seedFleet(t, st, 2)
	ctx := context.Background()
	g, err := c.pol.CreateGroup(ctx, "test", "all", `true`)
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.pol.CreatePolicy(ctx, "test", policyInput(g.ID, "ssid", `{"parameters":[{"path":"Device.WiFi.SSID.1.SSID","value":"x"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.pol.EnablePolicy(ctx, "test", p.ID, nil); err != nil {
		t.Fatal(err)
	}
	ck, csrf := userSession(t, c, st, "vera", store.RoleViewer)
	for _, page := range []string{"/groups", "/groups/" + g.ID, "/policies", "/policies/" + p.ID} {
		a := do(c, "GET", page, nil, ck, nil)
		if a.code != 200 {
			t.Fatalf("viewer GET %s: %d\n%s", page, a.code, a.body)
		}
		for _, control := range []string{"<form method=\"post\"", "hx-post", "id=\"new-group\"", "id=\"new-policy\"", "id=\"enable\""} {
			if strings.Contains(a.body, control) && !(control == "<form method=\"post\"" && strings.Count(a.body, control) == 1) {
				// The one plain POST form every page has is the logout.
				t.Errorf("viewer's %s has a change control %s", page, control)
			}
		}
	}
	if a := do(c, "GET", "/policies/"+p.ID+"/rollout", nil, ck, htmx); a.code != 200 || !strings.Contains(a.body, `id="rollout-state"`) || strings.Contains(a.body, "hx-post") {
		t.Fatalf("viewer's rollout progress: %d\n%s", a.code, a.body)
	}
	form := url.Values{"csrf": {csrf}, "name": {"evil"}, "filter": {"true"}, "group_id": {g.ID}, "kind": {"parameters"}, "mode": {"json"},
		"spec": {`{"parameters":[{"path":"Device.WiFi.SSID.1.SSID","value":"evil"}]}`}, "batch": {"100"}}
	for _, path := range []string{"/groups", "/groups/" + g.ID, "/groups/" + g.ID + "/delete", "/policies", "/policies/check", "/policies/preview",
		"/policies/" + p.ID, "/policies/" + p.ID + "/delete", "/policies/" + p.ID + "/enable",
		"/policies/" + p.ID + "/rollout/pause", "/policies/" + p.ID + "/rollout/resume", "/policies/" + p.ID + "/rollout/abort", "/policies/" + p.ID + "/rollout/retry"} {
		a := do(c, "POST", path, form, ck, nil)
		if a.code != http.StatusForbidden || !strings.Contains(a.body, "Your role (viewer) may not do this") {
			t.Errorf("viewer POST %s: %d\n%s", path, a.code, a.body)
		}
	}
	for _, path := range []string{"/groups/new", "/groups/check?filter=true", "/policies/new", "/policies/" + p.ID + "/enable"} {
		if a := do(c, "GET", path, nil, ck, nil); a.code != http.StatusForbidden {
			t.Errorf("viewer GET %s: %d", path, a.code)
		}
	}
	var audited int
	if err := st.Pool().QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE actor LIKE 'vera%'`).Scan(&audited); err != nil || audited != 0 {
		t.Fatalf("the viewer's refused POSTs left %d audit rows (%v)", audited, err)
	}
	if ro, err := st.FindRollout(ctx, p.ID); err != nil || ro.State != store.RolloutRunning {
		t.Fatalf("rollout after the viewer's POSTs: %+v %v", ro, err)
	}
}

func policyInput(groupID, name, spec string) controller.PolicyInput {
	return controller.PolicyInput{GroupID: groupID, Name: name, Kind: "parameters", Spec: []byte(spec)}
}

// TestGroupPolicyPreviewEnable: an operator makes a group and a
// parameters policy from the rows form, previews it (each member's
// current → desired value), enables it after a confirmation that counts
// the members, pauses its rollout; every change is audited under the
// user's name.
func TestGroupPolicyPreviewEnable(t *testing.T) {
	c, st := newTestConsole(t)
	seedFleet(t, st, 6)
	ctx := context.Background()
	ck, csrf := userSession(t, c, st, "otto", store.RoleOperator)

	// A bad filter is refused on the page, in words, the typed values kept.
	a := do(c, "POST", "/groups", url.Values{"csrf": {csrf}, "name": {"huawei"}, "filter": {`manufacturer = "Huawei"`}}, ck, nil)
	if a.code != http.StatusBadRequest || !strings.Contains(a.body, `id="form-error"`) || !strings.Contains(a.body, `manufacturer = &#34;Huawei&#34;`) {
		t.Fatalf("bad filter: %d\n%s", a.code, a.body)
	}
	a = do(c, "POST", "/groups", url.Values{"csrf": {csrf}, "name": {"huawei"}, "filter": {`manufacturer == "Huawei"`}}, ck, nil)
	loc := a.header.Get("Location")
	if a.code != http.StatusSeeOther || !strings.HasPrefix(loc, "/groups/") {
		t.Fatalf("create group: %d %v\n%s", a.code, a.header, a.body)
	}
	gid := strings.TrimPrefix(loc, "/groups/")
	// Its page loads the count and the members after itself.
	if a := do(c, "GET", loc, nil, ck, nil); a.code != 200 || !strings.Contains(a.body, `hx-get="`+loc+`/members"`) || !strings.Contains(a.body, `id="filter"`) {
		t.Fatalf("group page: %d\n%s", a.code, a.body)
	}
	if a := do(c, "GET", loc+"/members", nil, ck, htmx); a.code != 200 || !strings.Contains(a.body, `<a href="/devices/dev-004">`) || strings.Contains(a.body, "dev-001") {
		t.Fatalf("group members: %d\n%s", a.code, a.body)
	}
	if a := do(c, "GET", loc+"/count", nil, ck, htmx); a.code != 200 || !strings.Contains(a.body, `<strong>3</strong> devices`) {
		t.Fatalf("group count: %d\n%s", a.code, a.body)
	}

	// The policy, from rows; an empty row is skipped.
	form := url.Values{"csrf": {csrf}, "name": {"ssid"}, "group_id": {gid}, "priority": {"5"}, "kind": {"parameters"}, "mode": {"rows"},
		"path": {"Device.WiFi.SSID.1.SSID", ""}, "value": {"duet", ""}, "as": {"value", "value"}, "spec": {"ignored in rows mode"}}
	if a := do(c, "POST", "/policies/check", form, ck, htmx); a.code != 200 || !strings.Contains(a.body, "1 parameter value to hold.") {
		t.Fatalf("check: %d\n%s", a.code, a.body)
	}
	a = do(c, "POST", "/policies/preview", form, ck, htmx)
	if a.code != 200 {
		t.Fatalf("preview: %d\n%s", a.code, a.body)
	}
	for _, want := range []string{
		`<tr data-device="dev-000">`, `<del>old</del> → <ins>duet</ins>`, // a known current value
		`<tr data-device="dev-002">`, `<del>unknown</del> → <ins>duet</ins>`, // one never read
		"3 member devices on this page",
	} {
		if !strings.Contains(a.body, want) {
			t.Fatalf("preview lacks %q:\n%s", want, a.body)
		}
	}
	if strings.Contains(a.body, "dev-001") {
		t.Fatalf("preview shows a non-member:\n%s", a.body)
	}
	// A spec that does not validate is said in words, never saved.
	bad := url.Values{"csrf": {csrf}, "name": {"bad"}, "group_id": {gid}, "kind": {"parameters"}, "mode": {"json"}, "spec": {`{"parameters":[{"path":"Device.WiFi.","value":"x"}]}`}}
	if a := do(c, "POST", "/policies/check", bad, ck, htmx); !strings.Contains(a.body, `id="spec-error"`) || !strings.Contains(a.body, "Spec.parameters[0].path") {
		t.Fatalf("bad spec check:\n%s", a.body)
	}
	if a := do(c, "POST", "/policies", bad, ck, nil); a.code != http.StatusBadRequest || !strings.Contains(a.body, `id="form-error"`) {
		t.Fatalf("bad spec save: %d\n%s", a.code, a.body)
	}
	a = do(c, "POST", "/policies", form, ck, nil)
	loc = a.header.Get("Location")
	if a.code != http.StatusSeeOther || !strings.HasPrefix(loc, "/policies/") {
		t.Fatalf("create policy: %d\n%s", a.code, a.body)
	}
	pid := strings.TrimPrefix(loc, "/policies/")
	pol, err := st.FindPolicyByID(ctx, pid)
	if err != nil || string(pol.Spec) != `{"parameters": [{"path": "Device.WiFi.SSID.1.SSID", "value": "duet"}]}` || pol.Priority != 5 {
		t.Fatalf("saved policy: %+v %s %v", pol, pol.Spec, err)
	}
	// Its page shows the rows again, and the way to enable it.
	if a := do(c, "GET", loc, nil, ck, nil); a.code != 200 || !strings.Contains(a.body, `value="Device.WiFi.SSID.1.SSID"`) || !strings.Contains(a.body, `id="enable"`) {
		t.Fatalf("policy page: %d\n%s", a.code, a.body)
	}

	// Enabling: a wrong strategy is said in words; a right one is
	// confirmed with the number of devices it touches.
	if a := do(c, "GET", loc+"/enable?review=1&batch_mode=percent&batch=150", nil, ck, nil); a.code != http.StatusBadRequest || !strings.Contains(a.body, "batch_percent must be between 0 and 100") {
		t.Fatalf("bad strategy: %d\n%s", a.code, a.body)
	}
	a = do(c, "GET", loc+"/enable?review=1&batch_mode=size&batch=1&failure_threshold=50&pause=1s", nil, ck, nil)
	if a.code != 200 || !regexp.MustCompile(`id="confirm-members">3</strong> member devices`).MatchString(a.body) || !strings.Contains(a.body, "In batches of 1 device (about 3 batches)") ||
		!strings.Contains(a.body, "more than 50 % of the finished devices") {
		t.Fatalf("confirmation: %d\n%s", a.code, a.body)
	}
	enable := url.Values{"csrf": {csrf}, "batch_mode": {"size"}, "batch": {"1"}, "failure_threshold": {"50"}, "pause": {"1s"}}
	if a := do(c, "POST", loc+"/enable", enable, ck, nil); a.code != http.StatusSeeOther {
		t.Fatalf("enable: %d\n%s", a.code, a.body)
	}
	ro, err := st.FindRollout(ctx, pid)
	if err != nil || ro.State != store.RolloutRunning || !strings.Contains(string(ro.Strategy), `"batch_size": 1`) || !strings.Contains(string(ro.Strategy), `"failure_threshold": 0.5`) {
		t.Fatalf("rollout: %+v %s %v", ro, ro.Strategy, err)
	}
	a = do(c, "GET", loc+"/rollout", nil, ck, htmx)
	if a.code != 200 || !strings.Contains(a.body, `id="rollout-state">running`) || !strings.Contains(a.body, `id="rollout-pause"`) {
		t.Fatalf("rollout part: %d\n%s", a.code, a.body)
	}
	a = do(c, "POST", loc+"/rollout/pause", nil, ck, map[string]string{"HX-Request": "true", "X-CSRF-Token": csrf})
	if a.code != 200 || !strings.Contains(a.body, `id="rollout-state">paused`) || !strings.Contains(a.body, `id="rollout-resume"`) {
		t.Fatalf("pause: %d\n%s", a.code, a.body)
	}
	// The list counts the policy's statuses.
	if a := do(c, "GET", "/policies", nil, ck, nil); a.code != 200 || !strings.Contains(a.body, `<span class="rollout paused">paused</span>`) {
		t.Fatalf("policy list: %d\n%s", a.code, a.body)
	}

	// Every change is in the audit log under the user's name.
	rows, err := st.Pool().Query(ctx, `SELECT object_type, action FROM audit_log WHERE actor = 'otto (user)' ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var typ, action string
		if err := rows.Scan(&typ, &action); err != nil {
			t.Fatal(err)
		}
		got = append(got, typ+" "+action)
	}
	if want := "group create,policy create,policy update,rollout enable,rollout paused"; strings.Join(got, ",") != want {
		t.Fatalf("audit of otto's changes: %v, want %s", got, want)
	}

	// A group its policies use is not deleted; the page says why.
	a = do(c, "POST", "/groups/"+gid+"/delete", url.Values{"csrf": {csrf}}, ck, nil)
	if a.code != http.StatusConflict || !strings.Contains(a.body, "the group still has policies; delete them first") {
		t.Fatalf("delete a group in use: %d\n%s", a.code, a.body)
	}
	for _, path := range []string{"/policies/" + pid + "/delete", "/groups/" + gid + "/delete"} {
		if a := do(c, "POST", path, url.Values{"csrf": {csrf}}, ck, nil); a.code != http.StatusSeeOther {
			t.Fatalf("POST %s: %d\n%s", path, a.code, a.body)
		}
	}
	if _, err := st.FindGroupByID(ctx, gid); devicemodel.ErrorCode(err) != devicemodel.CodeNotFound {
		t.Fatalf("the group after its deletion: %v", err)
	}
}
