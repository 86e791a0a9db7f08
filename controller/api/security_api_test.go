package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/controller/api"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/store"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// TestAPIRefusesNUL: a NUL anywhere in API input (path segment, query
// parameter, param condition, JSON body) is a 400, not a 500 from
// PostgreSQL (issue 15 §1). Before, ?manufacturer=%00 and the tag and
// body cases answered 500.
func TestAPIRefusesNUL(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	if err := e.bus.PublishEvent(context.Background(), informEvent("nul-dev", "1")); err != nil {
		t.Fatal(err)
	}
	bustest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if code, _ := getDevice(t, e, "nul-dev"); code != http.StatusOK {
			return fmt.Errorf("device not applied (%d)", code)
		}
		return nil
	})
	for _, c := range []struct{ method, path, body string }{
		{"GET", "/api/v1/devices?manufacturer=a%00b", ""},
		{"GET", "/api/v1/devices?q=a%00", ""},
		{"GET", "/api/v1/devices?param=Device.X:eq:a%00", ""},
		{"GET", "/api/v1/devices/nul%00dev", ""},
		{"GET", "/api/v1/devices/nul-dev/parameters?path=Device.%00", ""},
		{"POST", "/api/v1/devices/nul-dev/tags/a%00b", ""},
		{"POST", "/api/v1/devices/nul-dev/tasks", `{"operation":"set","params":[{"path":"Device.X","value":"a\u0000b"}]}`},
		{"POST", "/api/v1/groups", `{"name":"g\u0000","filter":{}}`},
	} {
		res, err := e.doAs(e.token, c.method, c.path, c.body)
		if err != nil {
			t.Fatal(err)
		}
		var body api.ErrorJSON
		_ = json.NewDecoder(res.Body).Decode(&body)
		res.Body.Close()
		if res.StatusCode != http.StatusBadRequest || body.Code != "invalid_argument" {
			t.Errorf("%s %s: %d %+v, want 400 invalid_argument", c.method, c.path, res.StatusCode, body)
		}
	}
	// An escaped backslash before "u0000" is no NUL.
	res, err := e.doAs(e.token, "POST", "/api/v1/devices/nul-dev/tasks", `{"operation":"set","connection_request":false,"params":[{"path":"Device.X","value":"a\\u0000b"}]}`)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusAccepted {
		t.Errorf("literal backslash-u0000: %d, want 202", res.StatusCode)
	}
}

// TestSecretsRedacted: a secret parameter (…KeyPassphrase, …Password) is
// "***" with "redacted": true for viewers, operators and admins in the
// parameter cache, the device history and task requests; an admin reveals
// a cached one with reveal=true, which is audited; other roles get 403
// for reveal (issue 15 §9). Before, viewers read "hunter2" from all three.
func TestSecretsRedacted(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	ctx := context.Background()
	_, viewer, err := e.store.CreateToken(ctx, "viewer", store.RoleViewer)
	if err != nil {
		t.Fatal(err)
	}
	_, operator, err := e.store.CreateToken(ctx, "operator", store.RoleOperator)
	if err != nil {
		t.Fatal(err)
	}
	const secretPath, secret = "Device.WiFi.AccessPoint.1.Security.KeyPassphrase", "hunter2-secret"
	ev := informEvent("sec-dev", "1")
	ev.GetInform().Params = []*duetv1.Parameter{{Path: secretPath, Value: secret}, {Path: "Device.WiFi.SSID.1.SSID", Value: "home"}}
	if err := e.bus.PublishEvent(ctx, ev); err != nil {
		t.Fatal(err)
	}
	read := func(tok, path string) (int, string) {
		res, err := e.doAs(tok, "GET", path, "")
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	bustest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if code, body := read(e.token, "/api/v1/devices/sec-dev/parameters"); code != 200 || !strings.Contains(body, "home") {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})
	for name, tok := range map[string]string{"viewer": viewer, "operator": operator, "admin": e.token} {
		code, body := read(tok, "/api/v1/devices/sec-dev/parameters")
		var list api.ParameterList
		_ = json.Unmarshal([]byte(body), &list)
		if code != 200 || strings.Contains(body, secret) {
			t.Errorf("%s: parameters %d show the secret: %s", name, code, body)
		}
		for _, p := range list.Parameters {
			if p.Path == secretPath && (p.Value != "***" || !p.Redacted) {
				t.Errorf("%s: %+v, want *** and redacted", name, p)
			}
			if p.Path != secretPath && (p.Value != "home" || p.Redacted) {
				t.Errorf("%s: %+v redacted", name, p)
			}
		}
		if code, body := read(tok, "/api/v1/devices/sec-dev/events"); code != 200 || strings.Contains(body, secret) || !strings.Contains(body, `"redacted":true`) {
			t.Errorf("%s: history %d: %s", name, code, body)
		}
	}
	for name, tok := range map[string]string{"viewer": viewer, "operator": operator} {
		if code, _ := read(tok, "/api/v1/devices/sec-dev/parameters?reveal=true"); code != http.StatusForbidden {
			t.Errorf("%s reveal: %d, want 403", name, code)
		}
	}
	code, body := read(e.token, "/api/v1/devices/sec-dev/parameters?reveal=true")
	if code != 200 || !strings.Contains(body, secret) {
		t.Fatalf("admin reveal: %d %s", code, body)
	}
	if code, body := read(e.token, "/api/v1/audit?object_type=device"); code != 200 || !strings.Contains(body, "reveal_secrets") || !strings.Contains(body, secretPath) || strings.Contains(body, secret) {
		t.Errorf("audit of the reveal: %d %s", code, body)
	}

	// A task carrying a secret: its request is redacted for everyone.
	res, err := e.doAs(operator, "POST", "/api/v1/devices/sec-dev/tasks",
		`{"operation":"set","connection_request":false,"params":[{"path":"`+secretPath+`","value":"`+secret+`"}]}`)
	if err != nil {
		t.Fatal(err)
	}
	var task api.TaskJSON
	_ = json.NewDecoder(res.Body).Decode(&task)
	res.Body.Close()
	if res.StatusCode != http.StatusAccepted || strings.Contains(string(task.Request), secret) || !task.Redacted {
		t.Fatalf("create: %d %s", res.StatusCode, task.Request)
	}
	for name, tok := range map[string]string{"viewer": viewer, "admin": e.token} {
		if code, body := read(tok, "/api/v1/tasks/"+task.ID); code != 200 || strings.Contains(body, secret) {
			t.Errorf("%s: task %d %s", name, code, body)
		}
	}
}

// TestViewerCannotRefresh: refresh=true creates a get task and a
// connection request, so a read-only role gets 403 and no task is made
// (issue 15 §10). Before, the viewer's request created the task.
func TestViewerCannotRefresh(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	ctx := context.Background()
	_, viewer, err := e.store.CreateToken(ctx, "viewer", store.RoleViewer)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.bus.PublishEvent(ctx, informEvent("ref-dev", "1")); err != nil {
		t.Fatal(err)
	}
	bustest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if code, _ := getDevice(t, e, "ref-dev"); code != http.StatusOK {
			return fmt.Errorf("device not applied (%d)", code)
		}
		return nil
	})
	res, err := e.doAs(viewer, "GET", "/api/v1/devices/ref-dev/parameters?path=Device.DeviceInfo.&refresh=true", "")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusForbidden {
		t.Fatalf("viewer refresh: %d, want 403", res.StatusCode)
	}
	ts, _, err := e.store.FindTasks(ctx, store.TaskFilter{DeviceID: "ref-dev"})
	if err != nil || len(ts) != 0 {
		t.Fatalf("viewer refresh created %d tasks (%v)", len(ts), err)
	}
}

// TestCheapDenialOfServiceRefused (issue 15 §8): 300 param conditions are
// a 400 (before: a 200 after minutes of planning on a real fleet) while
// ordinary requests made at the same time are answered; wait 1e308 is a
// 400 (before: accepted); an oversized task body is a 413 (before: 429).
func TestCheapDenialOfServiceRefused(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	ctx := context.Background()
	_, viewer, err := e.store.CreateToken(ctx, "viewer", store.RoleViewer)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.bus.PublishEvent(ctx, informEvent("dos-dev", "1")); err != nil {
		t.Fatal(err)
	}
	bustest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if code, _ := getDevice(t, e, "dos-dev"); code != http.StatusOK {
			return fmt.Errorf("device not applied (%d)", code)
		}
		return nil
	})
	var q strings.Builder
	for i := 0; i < 300; i++ {
		fmt.Fprintf(&q, "&param=Device.X.P%d:eq:v", i)
	}
	heavy := "/api/v1/devices?limit=10" + q.String()
	done := make(chan int, 16)
	for i := 0; i < 16; i++ {
		go func() {
			res, err := e.doAs(viewer, "GET", heavy, "")
			if err != nil {
				done <- 0
				return
			}
			var body api.ErrorJSON
			_ = json.NewDecoder(res.Body).Decode(&body)
			res.Body.Close()
			if !strings.Contains(body.Message, "at most 16") {
				done <- -res.StatusCode
				return
			}
			done <- res.StatusCode
		}()
	}
	// Normal requests, meanwhile.
	for i := 0; i < 5; i++ {
		if code, _ := getDevice(t, e, "dos-dev"); code != http.StatusOK {
			t.Fatalf("normal request during the flood: %d", code)
		}
	}
	for i := 0; i < 16; i++ {
		if code := <-done; code != http.StatusBadRequest {
			t.Fatalf("300 param conditions: %d, want 400 naming the limit", code)
		}
	}
	// Sixteen are fine.
	var q16 strings.Builder
	for i := 0; i < 16; i++ {
		fmt.Fprintf(&q16, "&param=Device.X.P%d:eq:v", i)
	}
	res, err := e.doAs(viewer, "GET", "/api/v1/devices?limit=10"+q16.String(), "")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("16 conditions: %d", res.StatusCode)
	}

	for _, wait := range []string{"1e308", "121", "-1"} {
		res, err := e.doAs(e.token, "POST", "/api/v1/devices/dos-dev/tasks", `{"operation":"reboot","connection_request":false,"wait":`+wait+`}`)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusBadRequest {
			t.Errorf("wait %s: %d, want 400", wait, res.StatusCode)
		}
	}
	big := `{"operation":"set","params":[{"path":"Device.X","value":"` + strings.Repeat("a", 2<<20) + `"}]}`
	res, err = e.doAs(e.token, "POST", "/api/v1/devices/dos-dev/tasks", big)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized task body: %d, want 413", res.StatusCode)
	}
}

// TestTaskURLSchemes: file:// and schemes other than http, https and ftp
// are refused in download and upload URLs and in URL arguments at task
// creation (issue 15 §7); before, file:///etc/passwd was queued.
func TestTaskURLSchemes(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	if err := e.bus.PublishEvent(context.Background(), informEvent("url-dev", "1")); err != nil {
		t.Fatal(err)
	}
	bustest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if code, _ := getDevice(t, e, "url-dev"); code != http.StatusOK {
			return fmt.Errorf("device not applied (%d)", code)
		}
		return nil
	})
	for body, want := range map[string]int{
		`{"operation":"download","url":"file:///etc/passwd"}`:                                        400,
		`{"operation":"upload","url":"file:///tmp/x"}`:                                               400,
		`{"operation":"download","url":"gopher://h/x"}`:                                              400,
		`{"operation":"download","url":"tftp://h/fw.bin"}`:                                           400,
		`{"operation":"download","url":"/relative"}`:                                                 400,
		`{"operation":"operate","command":"Device.X.Y()","input_args":{"URL":"file:///etc/shadow"}}`: 400,
		`{"operation":"download","url":"https://files.example/fw.bin","connection_request":false}`:   202,
		`{"operation":"download","url":"ftp://files.example/fw.bin","connection_request":false}`:     202,
	} {
		res, err := e.doAs(e.token, "POST", "/api/v1/devices/url-dev/tasks", body)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != want {
			t.Errorf("%s: %d, want %d", body, res.StatusCode, want)
		}
	}
}
