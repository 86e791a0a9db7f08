package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/store"
)

// TestPolicySecretsRedacted (issue 15 §9): a policy whose spec sets a
// …Password, its preview and the audit log of its changes and of a task
// setting one show "***" to every role; a client that sends the policy
// back as it read it keeps the stored secret. Before, a viewer read the
// value from all three.
func TestPolicySecretsRedacted(t *testing.T) {
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
	const secret, exprSecret, taskSecret = "cr-hunter2-secret", "expr-hunter3", "task-hunter4"
	if err := e.bus.PublishEvent(ctx, informEvent("pol-sec", "1")); err != nil {
		t.Fatal(err)
	}
	call := func(tok, method, path, body string) (int, string) {
		t.Helper()
		res, err := e.doAs(tok, method, path, body)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	bustest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if code, body := call(e.token, "GET", "/api/v1/devices/pol-sec", ""); code != 200 {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})
	code, body := call(operator, "POST", "/api/v1/groups", `{"name":"all","filter":"true"}`)
	if code != 201 {
		t.Fatalf("group: %d %s", code, body)
	}
	var g store.Group
	_ = json.Unmarshal([]byte(body), &g)
	spec := `{"parameters":[{"path":"Device.ManagementServer.ConnectionRequestPassword","value":"` + secret + `"},` +
		`{"path":"Device.Users.User.1.Password","expr":"\"` + exprSecret + `\" + serial_number"},` +
		`{"path":"Device.ManagementServer.PeriodicInformInterval","value":"300"}]}`
	code, body = call(operator, "POST", "/api/v1/policies", `{"group_id":"`+g.ID+`","name":"creds","priority":1,"kind":"parameters","spec":`+spec+`}`)
	if code != 201 {
		t.Fatalf("policy: %d %s", code, body)
	}
	var p store.Policy
	_ = json.Unmarshal([]byte(body), &p)
	if strings.Contains(body, secret) || strings.Contains(body, exprSecret) {
		t.Errorf("create answer shows the secret: %s", body)
	}
	if code, body := call(operator, "POST", "/api/v1/devices/pol-sec/tasks",
		`{"operation":"set","connection_request":false,"params":[{"path":"Device.Users.User.1.Password","value":"`+taskSecret+`"}]}`); code != 202 {
		t.Fatalf("task: %d %s", code, body)
	}

	for name, tok := range map[string]string{"viewer": viewer, "operator": operator, "admin": e.token} {
		for _, path := range []string{"/api/v1/policies/" + p.ID, "/api/v1/policies?group_id=" + g.ID, "/api/v1/audit?limit=100"} {
			code, body := call(tok, "GET", path, "")
			if code != 200 || strings.Contains(body, secret) || strings.Contains(body, exprSecret) || strings.Contains(body, taskSecret) {
				t.Errorf("%s: GET %s: %d shows a secret: %s", name, path, code, body)
			}
			if !strings.Contains(body, `"***"`) || !strings.Contains(body, `"300"`) {
				t.Errorf("%s: GET %s: %d, want *** for the secrets and the rest as it is: %s", name, path, code, body)
			}
		}
	}
	code, body = call(operator, "POST", "/api/v1/policies/"+p.ID+"/preview", "")
	if code != 200 || strings.Contains(body, secret) || strings.Contains(body, exprSecret) {
		t.Errorf("preview: %d shows a secret: %s", code, body)
	}

	// Read, rename, send back: the secret is kept, not set to "***".
	_, body = call(operator, "GET", "/api/v1/policies/"+p.ID, "")
	var got store.Policy
	_ = json.Unmarshal([]byte(body), &got)
	code, body = call(operator, "PUT", "/api/v1/policies/"+p.ID, `{"name":"creds2","priority":1,"kind":"parameters","spec":`+string(got.Spec)+`}`)
	if code != 200 || strings.Contains(body, secret) {
		t.Fatalf("PUT back: %d %s", code, body)
	}
	stored, err := e.store.FindPolicyByID(ctx, p.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(stored.Spec), secret) || !strings.Contains(string(stored.Spec), exprSecret) || strings.Contains(string(stored.Spec), "***") {
		t.Fatalf("the stored spec lost its secrets: %s", stored.Spec)
	}
}
