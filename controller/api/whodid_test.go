package api_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/controller/api"
	"github.com/duet-dm/duet/pkg/store"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// auditOf returns the audit entries of one object, newest first.
func auditOf(t *testing.T, e *env, objType, id string) []store.AuditEntry {
	t.Helper()
	code, body := e.do(t, "GET", "/api/v1/audit?object_type="+objType+"&object_id="+url.QueryEscape(id), "")
	var l api.AuditList
	if code != 200 || json.Unmarshal([]byte(body), &l) != nil {
		t.Fatalf("audit: %d %s", code, body)
	}
	return l.Entries
}

// TestWhoDidWhat: an operator token runs tasks and policies but may not
// touch credentials; every task it makes names it (created_by) and is in
// the audit log, and so is a cancel by someone else; a batch's tasks
// carry the batch's actor (issue 11 item 8). Before, tasks had no owner,
// the audit log had no task, and operators could set credentials.
func TestWhoDidWhat(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	bulk := startBulk(t, e, controller.BulkOptions{DefaultRate: 1000})
	srv := httptest.NewServer(api.New(api.Options{Store: e.store, Tasks: e.tasks, Bulk: bulk,
		CredentialKey: testCredKey(t)}))
	t.Cleanup(srv.Close)
	e.api = srv
	ctx := context.Background()
	opTok, op, err := e.store.CreateToken(ctx, "ops-bot", store.RoleOperator)
	if err != nil {
		t.Fatal(err)
	}
	opActor := "ops-bot (" + opTok.ID + ")"
	asOp := func(method, path, body string) (int, string) {
		t.Helper()
		res, err := e.doAs(op, method, path, body)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	const dev = "00D09E-ONT-WHO1"
	e.seen(t, dev, duetv1.Protocol_PROTOCOL_CWMP, "inform")

	// The operator reboots and factory-resets the box.
	var tasks []api.TaskJSON
	for _, body := range []string{`{"operation":"reboot","connection_request":false}`, `{"operation":"factory_reset","connection_request":false}`} {
		code, out := asOp("POST", "/api/v1/devices/"+dev+"/tasks", body)
		var tj api.TaskJSON
		if code != 202 || json.Unmarshal([]byte(out), &tj) != nil {
			t.Fatalf("operator %s: %d %s", body, code, out)
		}
		if tj.CreatedBy != opActor {
			t.Errorf("%s created_by %q, want %q", tj.Operation, tj.CreatedBy, opActor)
		}
		tasks = append(tasks, tj)
	}
	reboot, reset := tasks[0], tasks[1]
	if got := e.task(t, reboot.ID).CreatedBy; got != opActor {
		t.Errorf("GET task created_by %q", got)
	}
	// "Who rebooted this box?" The audit log says.
	entries := auditOf(t, e, "task", reboot.ID)
	if len(entries) != 1 || entries[0].Actor != opActor || entries[0].Action != "create" {
		t.Fatalf("audit of the reboot: %+v", entries)
	}
	var after struct {
		DeviceID  string `json:"device_id"`
		Operation string `json:"operation"`
		State     string `json:"state"`
	}
	if err := json.Unmarshal(entries[0].After, &after); err != nil || after.DeviceID != dev || after.Operation != "reboot" || after.State != "queued" {
		t.Fatalf("audit after %s (%v)", entries[0].After, err)
	}
	// An admin cancels the factory reset: that is in the log too, by the
	// admin; the operator retries it.
	if code, body := e.do(t, "DELETE", "/api/v1/tasks/"+reset.ID, ""); code != 200 {
		t.Fatalf("cancel: %d %s", code, body)
	}
	entries = auditOf(t, e, "task", reset.ID)
	if len(entries) != 2 || entries[0].Action != "update" || !strings.HasPrefix(entries[0].Actor, "test admin (") ||
		!strings.Contains(string(entries[0].Before), `"queued"`) || !strings.Contains(string(entries[0].After), `"cancelled"`) {
		t.Fatalf("audit of the cancelled reset: %+v", entries)
	}
	code, out := asOp("POST", "/api/v1/tasks/"+reset.ID+"/retry", "")
	var retried api.TaskJSON
	if code != 202 || json.Unmarshal([]byte(out), &retried) != nil || retried.CreatedBy != opActor {
		t.Fatalf("retry: %d %s", code, out)
	}
	if entries = auditOf(t, e, "task", retried.ID); len(entries) != 1 || entries[0].Actor != opActor ||
		!strings.Contains(string(entries[0].After), `"retry_of":"`+reset.ID+`"`) {
		t.Fatalf("audit of the retry: %+v", entries)
	}

	// Operators run groups and policies...
	code, out = asOp("POST", "/api/v1/groups", `{"name":"who","filter":"manufacturer == \"Acme\""}`)
	var g store.Group
	if code != 201 || json.Unmarshal([]byte(out), &g) != nil {
		t.Fatalf("operator group: %d %s", code, out)
	}
	code, out = asOp("POST", "/api/v1/policies", `{"group_id":"`+g.ID+`","name":"pi","kind":"parameters",
		"spec":{"parameters":[{"path":"Device.ManagementServer.PeriodicInformInterval","value":"300"}]}}`)
	if code != 201 {
		t.Fatalf("operator policy: %d %s", code, out)
	}
	// ... but not credentials, which an admin sets.
	cred := `{"username":"u","password":"p","connection_request_username":"c","connection_request_password":"q"}`
	for _, m := range []string{"PUT", "DELETE"} {
		code, out := asOp(m, "/api/v1/devices/"+dev+"/credentials", cred)
		var ej api.ErrorJSON
		if code != 403 || json.Unmarshal([]byte(out), &ej) != nil || ej.Code != "denied" {
			t.Errorf("operator %s credentials: %d %s, want 403 denied", m, code, out)
		}
	}
	if code, out := e.do(t, "PUT", "/api/v1/devices/"+dev+"/credentials", cred); code != 200 {
		t.Fatalf("admin PUT credentials: %d %s", code, out)
	}

	// Everything done to the box, newest first: the admin's credentials,
	// the retry, the cancel, the two tasks.
	entries = auditOf(t, e, "", "")
	code, out = e.do(t, "GET", "/api/v1/audit?device="+dev, "")
	var byDev api.AuditList
	if code != 200 || json.Unmarshal([]byte(out), &byDev) != nil {
		t.Fatalf("audit by device: %d %s", code, out)
	}
	var got []string
	for _, en := range byDev.Entries {
		who, _, _ := strings.Cut(en.Actor, " (")
		got = append(got, en.ObjectType+":"+en.Action+":"+who)
	}
	if want := "device_credentials:create:test admin task:create:ops-bot task:update:test admin task:create:ops-bot task:create:ops-bot"; strings.Join(got, " ") != want {
		t.Errorf("audit of %s: %v, want %s (all %d entries: %+v)", dev, got, want, len(entries), entries)
	}

	// A viewer reads, but reading live (a task) is not reading.
	_, viewer, err := e.store.CreateToken(ctx, "wall-screen", store.RoleViewer)
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]int{
		"/api/v1/devices/" + dev + "/parameters":                                      200,
		"/api/v1/devices/" + dev + "/parameters?path=Device.DeviceInfo.&refresh=true": 403,
	} {
		res, err := e.doAs(viewer, "GET", path, "")
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != want {
			t.Errorf("viewer GET %s: %d, want %d", path, res.StatusCode, want)
		}
	}

	// A batch's tasks carry the batch's actor.
	code, out = asOp("POST", "/api/v1/tasks", `{"filter":{"q":"WHO1"},"task":{"operation":"get","paths":["Device.DeviceInfo."],"connection_request":false}}`)
	var b api.TaskBatchJSON
	if code != 202 || json.Unmarshal([]byte(out), &b) != nil || b.Actor != opActor {
		t.Fatalf("operator batch: %d %s", code, out)
	}
	e.waitBatch(t, b.ID, "done")
	code, out = e.do(t, "GET", "/api/v1/devices/"+dev+"/tasks?limit=1", "")
	var l api.TaskList
	if code != 200 || json.Unmarshal([]byte(out), &l) != nil || len(l.Tasks) != 1 || l.Tasks[0].BatchID != b.ID || l.Tasks[0].CreatedBy != opActor {
		t.Fatalf("batch task: %d %s", code, out)
	}
}
