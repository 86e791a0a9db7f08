package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/duet-dm/duet/controller/api"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/store"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

func TestListDevicesRejectsBadParameters(t *testing.T) {
	e := newEnv(t)
	for query, param := range map[string]string{
		"online=maybe":      "online",
		"protocol=snmp":     "protocol",
		"limit=0":           "limit",
		"limit=abc":         "limit",
		"cursor=%%%":        "cursor",
		"colour=red":        "colour",
		"online=1&online=0": "online",
	} {
		res, err := e.get("/api/v1/devices?" + query)
		if err != nil {
			t.Fatal(err)
		}
		var body api.ErrorJSON
		_ = json.NewDecoder(res.Body).Decode(&body)
		res.Body.Close()
		if res.StatusCode != http.StatusBadRequest || body.Code != "invalid_argument" || !strings.Contains(body.Message, `"`+param+`"`) {
			t.Errorf("%s: %d %+v, want 400 naming %q", query, res.StatusCode, body, param)
		}
	}
	res, err := e.get("/api/v1/nothing-here")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusNotFound || res.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("unknown route: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
}

func TestListDevicesFilters(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	ctx := context.Background()
	for i := 0; i < 6; i++ {
		ev := informEvent(fmt.Sprintf("f-%d", i), []string{"1.0", "2.0"}[i%2])
		if i >= 4 {
			ev.Device.Protocol = duetv1.Protocol_PROTOCOL_USP
		}
		if err := e.bus.PublishEvent(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	list := func(q string) api.DeviceList {
		res, err := e.get("/api/v1/devices?" + q)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var l api.DeviceList
		if err := json.NewDecoder(res.Body).Decode(&l); err != nil || res.StatusCode != 200 {
			t.Fatalf("%s: %d %v", q, res.StatusCode, err)
		}
		return l
	}
	bustest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if n := len(list("").Devices); n != 6 {
			return fmt.Errorf("%d devices", n)
		}
		return nil
	})
	if n := len(list("protocol=cwmp&software_version=2.0").Devices); n != 2 {
		t.Fatalf("cwmp 2.0: %d, want 2", n)
	}
	if n := len(list("protocol=usp&online=true&manufacturer=Acme&product_class=ONT").Devices); n != 2 {
		t.Fatalf("usp: %d, want 2", n)
	}
	p1 := list("limit=4")
	if len(p1.Devices) != 4 || p1.NextCursor == "" {
		t.Fatalf("page 1: %d devices, cursor %q", len(p1.Devices), p1.NextCursor)
	}
	p2 := list("limit=4&cursor=" + p1.NextCursor)
	if len(p2.Devices) != 2 || p2.NextCursor != "" || p2.Devices[0].ID <= p1.Devices[3].ID {
		t.Fatalf("page 2: %+v", p2)
	}
}

func TestAPIAuthentication(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	ctx := context.Background()
	if err := e.bus.PublishEvent(ctx, informEvent("auth-dev", "1")); err != nil {
		t.Fatal(err)
	}
	bustest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if code, _ := getDevice(t, e, "auth-dev"); code != 200 {
			return fmt.Errorf("status %d", code)
		}
		return nil
	})
	_, viewer, err := e.store.CreateToken(ctx, "dashboard", store.RoleViewer)
	if err != nil {
		t.Fatal(err)
	}
	revokedTok, revoked, err := e.store.CreateToken(ctx, "old", store.RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.store.RevokeToken(ctx, revokedTok.ID); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, token, method, path string
		want                      int
		code                      string
	}{
		{"no token", "", "GET", "/api/v1/devices", 401, "unauthenticated"},
		{"no token, unknown route", "", "GET", "/api/v1/nothing", 401, "unauthenticated"},
		{"bad token", "duet_not-a-real-token", "GET", "/api/v1/devices/auth-dev", 401, "unauthenticated"},
		{"revoked token", revoked, "GET", "/api/v1/devices", 401, "unauthenticated"},
		{"viewer reads", viewer, "GET", "/api/v1/devices/auth-dev", 200, ""},
		{"viewer writes", viewer, "POST", "/api/v1/devices/auth-dev/tasks", 403, "denied"},
		{"viewer deletes", viewer, "DELETE", "/api/v1/tasks/x", 403, "denied"},
		{"admin reads", e.token, "GET", "/api/v1/devices", 200, ""},
	} {
		res, err := e.doAs(c.token, c.method, c.path, `{"operation":"reboot"}`)
		if err != nil {
			t.Fatal(err)
		}
		var body api.ErrorJSON
		_ = json.NewDecoder(res.Body).Decode(&body)
		res.Body.Close()
		if res.StatusCode != c.want || body.Code != c.code {
			t.Errorf("%s: %d %+v, want %d %q", c.name, res.StatusCode, body, c.want, c.code)
		}
		if c.want == 401 && !strings.HasPrefix(res.Header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s: 401 without a Bearer challenge", c.name)
		}
	}
	// Scheme is case-insensitive (RFC 7235 §2.1).
	req, _ := http.NewRequest("GET", e.api.URL+"/api/v1/devices", nil)
	req.Header.Set("Authorization", "bearer "+viewer)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("lower-case scheme: %d", res.StatusCode)
	}
}

func TestListDevicesByLastSeenAndTag(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	ctx := context.Background()
	now := time.Now().UTC()
	for i, age := range []time.Duration{3 * time.Hour, 2 * time.Hour, time.Minute} {
		ev := informEvent(fmt.Sprintf("seen-%d", i), "1")
		ev.Time = timestamppb.New(now.Add(-age))
		if err := e.bus.PublishEvent(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	ids := func(q string) string {
		t.Helper()
		res, err := e.get("/api/v1/devices?" + q)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var l api.DeviceList
		if err := json.NewDecoder(res.Body).Decode(&l); err != nil || res.StatusCode != 200 {
			t.Fatalf("%s: %d %v", q, res.StatusCode, err)
		}
		var out []string
		for _, d := range l.Devices {
			out = append(out, d.ID)
		}
		return strings.Join(out, ",")
	}
	bustest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if got := ids(""); got != "seen-0,seen-1,seen-2" {
			return fmt.Errorf("devices %s", got)
		}
		return nil
	})
	ts := func(d time.Duration) string { return url.QueryEscape(now.Add(-d).Format(time.RFC3339Nano)) }
	if got := ids("last_seen_after=" + ts(150*time.Minute)); got != "seen-1,seen-2" {
		t.Fatalf("after: %s", got)
	}
	if got := ids("last_seen_after=" + ts(150*time.Minute) + "&last_seen_before=" + ts(time.Hour)); got != "seen-1" {
		t.Fatalf("range: %s", got)
	}
	if err := e.store.SetDeviceTags(ctx, "seen-2", []string{"lab"}); err != nil {
		t.Fatal(err)
	}
	if got := ids("tag=lab"); got != "seen-2" {
		t.Fatalf("tag: %s", got)
	}
	res, err := e.get("/api/v1/devices?limit=1&count=true&last_seen_after=" + ts(150*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	var l api.DeviceList
	_ = json.NewDecoder(res.Body).Decode(&l)
	res.Body.Close()
	if l.Count == nil || *l.Count != 2 || len(l.Devices) != 1 {
		t.Fatalf("count: %+v", l)
	}
	res, err = e.get("/api/v1/devices?last_seen_after=yesterday")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 400 {
		t.Fatalf("bad time: %d", res.StatusCode)
	}
}

func TestDeviceTagsAPI(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	e.seen(t, "tagged-1", duetv1.Protocol_PROTOCOL_CWMP, "inform")
	tags := func(method, path string, wantCode int) []string {
		t.Helper()
		code, body := e.do(t, method, path, "")
		if code != wantCode {
			t.Fatalf("%s %s: %d %s, want %d", method, path, code, body, wantCode)
		}
		if code != 200 {
			return nil
		}
		var out api.DeviceTagsJSON
		if err := json.Unmarshal([]byte(body), &out); err != nil {
			t.Fatal(err)
		}
		return out.Tags
	}
	// Idempotent add; a tag with '/' goes percent-encoded in the path.
	for i := 0; i < 2; i++ {
		if got := tags("POST", "/api/v1/devices/tagged-1/tags/site:paris%2F3", 200); strings.Join(got, ",") != "site:paris/3" {
			t.Fatalf("add %d: %v", i, got)
		}
	}
	if got := tags("POST", "/api/v1/devices/tagged-1/tags/lab", 200); strings.Join(got, ",") != "lab,site:paris/3" {
		t.Fatalf("add lab: %v", got)
	}
	code, body := e.do(t, "GET", "/api/v1/devices/tagged-1", "")
	if code != 200 || !strings.Contains(body, `"tags":["lab","site:paris/3"]`) {
		t.Fatalf("GET device: %d %s", code, body)
	}
	code, body = e.do(t, "GET", "/api/v1/devices?tag=lab", "")
	if code != 200 || !strings.Contains(body, `"tags":["lab","site:paris/3"]`) {
		t.Fatalf("GET devices: %d %s", code, body)
	}
	for i := 0; i < 2; i++ {
		if got := tags("DELETE", "/api/v1/devices/tagged-1/tags/lab", 200); strings.Join(got, ",") != "site:paris/3" {
			t.Fatalf("remove %d: %v", i, got)
		}
	}
	// Bad tags: 400 saying why; unknown device: 404.
	for path, why := range map[string]string{
		"/api/v1/devices/tagged-1/tags/has%20space":                 "allowed are letters",
		"/api/v1/devices/tagged-1/tags/" + strings.Repeat("x", 129): "more than 128",
		"/api/v1/devices/tagged-1/tags/a%2Ab":                       "allowed are letters",
	} {
		code, body := e.do(t, "POST", path, "")
		if code != 400 || !strings.Contains(body, why) {
			t.Errorf("POST %s: %d %s", path, code, body)
		}
	}
	tags("POST", "/api/v1/devices/nobody/tags/lab", 404)
	// Viewers may not.
	_, viewer, err := e.store.CreateToken(context.Background(), "viewer", store.RoleViewer)
	if err != nil {
		t.Fatal(err)
	}
	res, err := e.doAs(viewer, "POST", "/api/v1/devices/tagged-1/tags/x", "")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 403 {
		t.Fatalf("viewer: %d", res.StatusCode)
	}
	// Audited with the token's owner: three changes (add, add, remove).
	code, body = e.do(t, "GET", "/api/v1/audit?object_type=device_tags&object_id=tagged-1", "")
	var al api.AuditList
	if err := json.Unmarshal([]byte(body), &al); err != nil || code != 200 || len(al.Entries) != 3 {
		t.Fatalf("audit: %d %s", code, body)
	}
	if !strings.HasPrefix(al.Entries[0].Actor, "test admin (") || string(al.Entries[0].Before) != `{"tags":["lab","site:paris/3"]}` {
		t.Fatalf("audit entry: %+v", al.Entries[0])
	}
}

func TestListDevicesSearchSortAndBadInput(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	ctx := context.Background()
	for i, sw := range []string{"3.0", "1.0", "2.0", "1.0"} {
		e.seen(t, fmt.Sprintf("search-%d", i), duetv1.Protocol_PROTOCOL_CWMP, "inform")
		if err := e.store.UpsertParameters(ctx, []store.Parameter{
			{DeviceID: fmt.Sprintf("search-%d", i), Path: "Device.DeviceInfo.SoftwareVersion", Value: sw, UpdatedAt: time.Now()},
			{DeviceID: fmt.Sprintf("search-%d", i), Path: "Device.ManagementServer.PeriodicInformInterval", Value: fmt.Sprint(100 * (i + 1)), UpdatedAt: time.Now()},
		}); err != nil {
			t.Fatal(err)
		}
	}
	ids := func(q string) (string, api.DeviceList) {
		t.Helper()
		code, body := e.do(t, "GET", "/api/v1/devices?"+q, "")
		var l api.DeviceList
		if err := json.Unmarshal([]byte(body), &l); err != nil || code != 200 {
			t.Fatalf("%s: %d %s", q, code, body)
		}
		var out []string
		for _, d := range l.Devices {
			out = append(out, d.ID)
		}
		return strings.Join(out, ","), l
	}
	for q, want := range map[string]string{
		"q=SEARCH-2": "search-2",
		"param=" + url.QueryEscape("Device.DeviceInfo.SoftwareVersion:eq:1.0"):                                                                                          "search-1,search-3",
		"param=" + url.QueryEscape("Device.ManagementServer.PeriodicInformInterval:gt:250") + "&param=" + url.QueryEscape("Device.DeviceInfo.SoftwareVersion:prefix:1"): "search-3",
		"sort=-id":                  "search-3,search-2,search-1,search-0",
		"sort=-id&q=search&limit=2": "search-3,search-2",
	} {
		if got, _ := ids(q); got != want {
			t.Errorf("%s: %s, want %s", q, got, want)
		}
	}
	// count follows every condition; paging follows the sort.
	_, l := ids("count=true&limit=1&sort=-id&param=" + url.QueryEscape("Device.ManagementServer.PeriodicInformInterval:ge:200"))
	if l.Count == nil || *l.Count != 3 || l.Devices[0].ID != "search-3" || l.NextCursor == "" {
		t.Fatalf("count page: %+v", l)
	}
	if got, _ := ids("limit=5&sort=-id&cursor=" + l.NextCursor + "&param=" + url.QueryEscape("Device.ManagementServer.PeriodicInformInterval:ge:200")); got != "search-2,search-1" {
		t.Fatalf("page 2: %s", got)
	}
	_, sl := ids("sort=last_seen&limit=1")
	for q, want := range map[string]string{
		"param=" + url.QueryEscape("Device..X:eq:1"):     "position 7",
		"param=" + url.QueryEscape("Device.X:between:1"): "unknown",
		"param=" + url.QueryEscape("Device.X:gt:many"):   "not a number",
		"param=Device.X":                             "<path>:<op>:<value>",
		"sort=colour":                                `"sort"`,
		"q=" + url.QueryEscape("a\x01"):              `"q"`,
		"sort=serial_number&cursor=" + sl.NextCursor: "sort=last_seen",
	} {
		code, body := e.do(t, "GET", "/api/v1/devices?"+q, "")
		var ej api.ErrorJSON
		_ = json.Unmarshal([]byte(body), &ej)
		if code != 400 || !strings.Contains(ej.Message, want) {
			t.Errorf("%s: %d %s, want 400 with %q", q, code, body, want)
		}
	}
}
