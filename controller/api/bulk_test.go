package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/controller/api"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// withBulk gives e an API whose batches run on a fresh BulkRunner.
func withBulk(t *testing.T, e *env, o controller.BulkOptions) *controller.BulkRunner {
	t.Helper()
	b := startBulk(t, e, o)
	srv := httptest.NewServer(api.New(api.Options{Store: e.store, Tasks: e.tasks, Bulk: b}))
	t.Cleanup(srv.Close)
	e.api = srv
	return b
}

func startBulk(t *testing.T, e *env, o controller.BulkOptions) *controller.BulkRunner {
	t.Helper()
	o.Store, o.Tasks = e.store, e.tasks
	b, err := controller.NewBulkRunner(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Stop)
	return b
}

// seedOffline stores USP devices that are offline, so their tasks stay
// queued: a batch's outcome is then exactly the rows it created.
func seedOffline(t *testing.T, e *env, ids []string, sw string) {
	t.Helper()
	var obs []store.Observation
	for _, id := range ids {
		obs = append(obs, store.Observation{EventID: "seed-" + id, Kind: "inform", Time: time.Now(), Payload: []byte("x"),
			Device: devicemodel.Device{ID: id, Protocol: devicemodel.ProtocolUSP, SoftwareVersion: sw, Manufacturer: "Acme"}})
	}
	if err := e.store.ApplyObservations(context.Background(), obs); err != nil {
		t.Fatal(err)
	}
}

func (e *env) batch(t *testing.T, id string) api.TaskBatchJSON {
	t.Helper()
	code, body := e.do(t, "GET", "/api/v1/task-batches/"+id, "")
	var b api.TaskBatchJSON
	if code != 200 || json.Unmarshal([]byte(body), &b) != nil {
		t.Fatalf("GET batch %s: %d %s", id, code, body)
	}
	return b
}

func (e *env) waitBatch(t *testing.T, id, state string) api.TaskBatchJSON {
	t.Helper()
	var b api.TaskBatchJSON
	bustest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if b = e.batch(t, id); b.State != state {
			return fmt.Errorf("batch %s is %s (%+v), want %s", id, b.State, b, state)
		}
		return nil
	})
	return b
}

// batchTasks counts tasks per device, for the batch ("" for every task).
func batchTasks(t *testing.T, e *env, batch string) map[string]int {
	t.Helper()
	rows, err := e.store.Pool().Query(context.Background(),
		"SELECT device_id, count(*) FROM tasks WHERE $1 = '' OR batch_id = $1 GROUP BY device_id", batch)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var id string
		var n int
		if err := rows.Scan(&id, &n); err != nil {
			t.Fatal(err)
		}
		out[id] = n
	}
	return out
}

func deviceIDs(prefix string, n int) []string {
	var out []string
	for i := 0; i < n; i++ {
		out = append(out, fmt.Sprintf("%s-%02d", prefix, i))
	}
	return out
}

func TestBulkTasksOnePerMatchingDevice(t *testing.T) {
	e := newEnv(t)
	withBulk(t, e, controller.BulkOptions{DefaultRate: 1000, PageSize: 3})
	match, other := deviceIDs("bulk-m", 7), deviceIDs("bulk-o", 4)
	seedOffline(t, e, match, "2.0")
	seedOffline(t, e, other, "1.0")
	code, body := e.do(t, "POST", "/api/v1/tasks", `{"filter":{"software_version":"2.0","q":"bulk-"},
		"task":{"operation":"get","paths":["Device.DeviceInfo."]}}`)
	var b api.TaskBatchJSON
	if code != 202 || json.Unmarshal([]byte(body), &b) != nil || b.State != "running" || b.Rate != 1000 || !strings.HasPrefix(b.Actor, "test admin (") {
		t.Fatalf("POST: %d %s", code, body)
	}
	done := e.waitBatch(t, b.ID, "done")
	if done.Matched != 7 || done.CreatedTasks != 7 || done.Errors != 0 || done.FinishedAt == nil {
		t.Fatalf("done batch: %+v", done)
	}
	got := batchTasks(t, e, "")
	for _, id := range match {
		if got[id] != 1 {
			t.Errorf("%s has %d tasks, want 1", id, got[id])
		}
	}
	for _, id := range other {
		if got[id] != 0 {
			t.Errorf("non-matching %s has %d tasks", id, got[id])
		}
	}
	// A device's task list shows the batch's task like any other.
	code, body = e.do(t, "GET", "/api/v1/devices/"+match[0]+"/tasks", "")
	if code != 200 || !strings.Contains(body, `"batch_id":"`+b.ID+`"`) || !strings.Contains(body, `"state":"queued"`) {
		t.Fatalf("device tasks: %d %s", code, body)
	}
	code, body = e.do(t, "GET", "/api/v1/task-batches?state=done", "")
	if code != 200 || !strings.Contains(body, b.ID) {
		t.Fatalf("list: %d %s", code, body)
	}
	// Finished: cancelling is a conflict.
	if code, body := e.do(t, "DELETE", "/api/v1/task-batches/"+b.ID, ""); code != 409 {
		t.Fatalf("cancel a done batch: %d %s", code, body)
	}

	// By group: the members of its CEL filter.
	g, err := e.store.CreateGroup(context.Background(), "test", store.Group{Name: "old", Filter: `software_version == "1.0"`})
	if err != nil {
		t.Fatal(err)
	}
	code, body = e.do(t, "POST", "/api/v1/tasks", `{"filter":{"group":"`+g.ID+`"},"task":{"operation":"reboot"},"rate":500}`)
	if code != 202 || json.Unmarshal([]byte(body), &b) != nil {
		t.Fatalf("POST group batch: %d %s", code, body)
	}
	if done := e.waitBatch(t, b.ID, "done"); done.Matched != 4 || done.CreatedTasks != 4 {
		t.Fatalf("group batch: %+v", done)
	}
	got = batchTasks(t, e, b.ID)
	for _, id := range other {
		if got[id] != 1 {
			t.Errorf("group member %s has %d tasks of the batch", id, got[id])
		}
	}
	if len(got) != len(other) {
		t.Errorf("group batch reached %d devices: %v", len(got), got)
	}
}

func TestBulkRequestsRejectedCreateNothing(t *testing.T) {
	e := newEnv(t)
	withBulk(t, e, controller.BulkOptions{DefaultRate: 1000})
	seedOffline(t, e, deviceIDs("rej", 3), "1.0")
	past := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	for body, want := range map[string]string{
		`{"task":{"operation":"reboot"}}`:                                             "filter is required",
		`{"filter":{}}`:                                                               "task is required",
		`{"filter":{},"task":{"operation":"explode"}}`:                                `operation "explode" is unknown`,
		`{"filter":{},"task":{"operation":"get","paths":["Device..X"]}}`:              "paths[0]: invalid path \"Device..X\" at position 7",
		`{"filter":{},"task":{"operation":"get"}}`:                                    "get needs paths",
		`{"filter":{},"task":{"operation":"reboot","wait":5}}`:                        "task.wait",
		`{"filter":{},"task":{"operation":"reboot","expires_at":"` + past + `"}}`:     "in the past",
		`{"filter":{"param":["Device.X..Y:eq:1"]},"task":{"operation":"reboot"}}`:     "filter.param[0]: invalid path \"Device.X..Y\" at position 9",
		`{"filter":{"param":["Device.X:gt:lots"]},"task":{"operation":"reboot"}}`:     "filter.param[0]: gt",
		`{"filter":{"protocol":"snmp"},"task":{"operation":"reboot"}}`:                "filter.protocol",
		`{"filter":{"tag":"no spaces"},"task":{"operation":"reboot"}}`:                "filter.tag",
		`{"filter":{"group":"grp_x","protocol":"usp"},"task":{"operation":"reboot"}}`: "group selects the devices on its own",
		`{"filter":{"group":"grp_nope"},"task":{"operation":"reboot"}}`:               `filter.group: no group "grp_nope"`,
		`{"filter":{},"task":{"operation":"reboot"},"rate":0}`:                        "rate: 0",
		`{"filter":{},"task":{"operation":"reboot"},"rate":5000}`:                     "rate: 5000",
		`{"filter":{},"task":{"operation":"reboot"},"colour":"red"}`:                  "unknown field",
		`{"filter":{"colour":"red"},"task":{"operation":"reboot"}}`:                   "unknown field",
	} {
		code, out := e.do(t, "POST", "/api/v1/tasks", body)
		var ej api.ErrorJSON
		_ = json.Unmarshal([]byte(out), &ej)
		if code != 400 || !strings.Contains(ej.Message, want) {
			t.Errorf("%s: %d %s, want 400 with %q", body, code, out, want)
		}
	}
	if n := e.taskCount(t); n != 0 {
		t.Fatalf("%d tasks created by rejected batches", n)
	}
	if code, body := e.do(t, "GET", "/api/v1/task-batches", ""); code != 200 || body != "{\"batches\":[]}\n" {
		t.Fatalf("batches stored by rejected requests: %d %s", code, body)
	}
}

func TestBulkCancelStopsARunningBatch(t *testing.T) {
	e := newEnv(t)
	b := withBulk(t, e, controller.BulkOptions{DefaultRate: 1000})
	seedOffline(t, e, deviceIDs("slow", 6), "1.0")
	// Two tasks a second: the batch is still running when cancelled.
	code, body := e.do(t, "POST", "/api/v1/tasks", `{"filter":{"q":"slow-"},"task":{"operation":"reboot"},"rate":2}`)
	var bj api.TaskBatchJSON
	if code != 202 || json.Unmarshal([]byte(body), &bj) != nil {
		t.Fatalf("POST: %d %s", code, body)
	}
	bustest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := len(batchTasks(t, e, bj.ID)); n < 1 {
			return fmt.Errorf("%d tasks", n)
		}
		return nil
	})
	code, body = e.do(t, "DELETE", "/api/v1/task-batches/"+bj.ID, "")
	if code != 200 || !strings.Contains(body, `"state":"cancelled"`) {
		t.Fatalf("cancel: %d %s", code, body)
	}
	// Stop waits for the batch's goroutine: after it nothing can be created.
	b.Stop()
	n := len(batchTasks(t, e, bj.ID))
	if n < 1 || n >= 6 {
		t.Fatalf("%d tasks after cancelling a batch of 6 at 2/s", n)
	}
	if got := e.batch(t, bj.ID); got.State != "cancelled" || got.CreatedTasks != int64(n) {
		t.Fatalf("cancelled batch: %+v (tasks %d)", got, n)
	}
	// The tasks it created stay queued.
	var queued int
	if err := e.store.Pool().QueryRow(context.Background(), "SELECT count(*) FROM tasks WHERE batch_id = $1 AND state = 'queued'", bj.ID).Scan(&queued); err != nil || queued != n {
		t.Fatalf("%d of %d tasks queued, %v", queued, n, err)
	}
	// Audited: created and cancelled by the token's owner.
	entries, _, err := e.store.FindAudit(context.Background(), store.AuditFilter{ObjectType: store.AuditTaskBatch, ObjectID: bj.ID})
	if err != nil || len(entries) != 2 || entries[0].Action != "update" || !strings.Contains(string(entries[0].After), `"cancelled"`) {
		t.Fatalf("audit: %+v %v", entries, err)
	}
}

// TestBulkResumesAfterRestartExactlyOnce: a batch interrupted mid-page
// (tasks created past the saved cursor) and a runner stopped mid-run both
// finish after a restart with exactly one task per matching device.
func TestBulkResumesAfterRestartExactlyOnce(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	devs := deviceIDs("resume", 10)
	seedOffline(t, e, devs, "1.0")
	req := controller.TaskRequest{Operation: "get", Paths: []string{"Device.DeviceInfo.SoftwareVersion"}}
	reqJSON, _ := json.Marshal(req)
	job, err := e.store.CreateTaskBatch(ctx, "tester", store.TaskBatch{Filter: []byte(`{"q":"resume-"}`), Request: reqJSON, Rate: 1000}, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The state a crash leaves: page 1 (devices 0-2) saved, tasks for 3
	// and 4 created, their page never saved.
	for _, d := range devs[:5] {
		if _, err := e.tasks.Create(store.ContextWithTaskBatch(ctx, job.ID), d, req); err != nil {
			t.Fatal(err)
		}
	}
	if running, err := e.store.SaveTaskBatchProgress(ctx, job.ID, store.BatchProgress{Cursor: devs[2], Matched: 3}); err != nil || !running {
		t.Fatalf("save: %v %v", running, err)
	}
	// A second create for the same device and batch is refused by the
	// database, whatever the worker believes.
	if _, err := e.tasks.Create(store.ContextWithTaskBatch(ctx, job.ID), devs[0], req); devicemodel.ErrorCode(err) != devicemodel.CodeConflict {
		t.Fatalf("duplicate batch task: %v", err)
	}
	withBulk(t, e, controller.BulkOptions{PageSize: 3})
	done := e.waitBatch(t, job.ID, "done")
	if done.Matched != 10 || done.CreatedTasks != 10 {
		t.Fatalf("resumed batch: %+v", done)
	}
	got := batchTasks(t, e, job.ID)
	for _, d := range devs {
		if got[d] != 1 {
			t.Errorf("%s has %d tasks of the batch", d, got[d])
		}
	}

	// A runner stopped while a batch runs; the next one finishes it.
	more := deviceIDs("again", 12)
	seedOffline(t, e, more, "1.0")
	b1 := startBulk(t, e, controller.BulkOptions{PageSize: 4})
	j2, err := b1.Submit(ctx, "tester", controller.BulkRequest{Filter: &controller.BulkFilter{Q: "again-"}, Task: &req, Rate: ptr(20.0)})
	if err != nil {
		t.Fatal(err)
	}
	bustest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := len(batchTasks(t, e, j2.ID)); n < 5 {
			return fmt.Errorf("%d tasks", n)
		}
		return nil
	})
	b1.Stop()
	stoppedAt := len(batchTasks(t, e, j2.ID))
	if stoppedAt == len(more) {
		t.Fatal("the batch finished before the runner stopped; slow it down")
	}
	if j := e.batch(t, j2.ID); j.State != "running" {
		t.Fatalf("stopped runner left the batch %s", j.State)
	}
	startBulk(t, e, controller.BulkOptions{PageSize: 4})
	if done := e.waitBatch(t, j2.ID, "done"); done.Matched != 12 || done.CreatedTasks != 12 {
		t.Fatalf("batch after restart: %+v (stopped at %d)", done, stoppedAt)
	}
	got = batchTasks(t, e, j2.ID)
	for _, d := range more {
		if got[d] != 1 {
			t.Errorf("%s has %d tasks of the batch", d, got[d])
		}
	}
}

func ptr[T any](v T) *T { return &v }

// TestBulkBatchRunsInOneReplica: two controller replicas share the task
// queue. A batch runs only in the replica that took it, however often the
// other looks for work (before, a starting replica resumed every running
// batch, one a live replica was running too); when that replica is gone
// (its runner and its dispatcher lease), the other takes the batch over
// and finishes it, one task per device.
func TestBulkBatchRunsInOneReplica(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	devs := deviceIDs("replica", 12)
	seedOffline(t, e, devs, "1.0")
	req := controller.TaskRequest{Operation: "get", Paths: []string{"Device.DeviceInfo.SoftwareVersion"}}
	qA := e.tasks
	rA := withBulk(t, e, controller.BulkOptions{PageSize: 2, AdoptInterval: 20 * time.Millisecond})
	j, err := rA.Submit(ctx, "tester", controller.BulkRequest{Filter: &controller.BulkFilter{Q: "replica-"}, Task: &req, Rate: ptr(4.0)})
	if err != nil {
		t.Fatal(err)
	}
	qB := e.startTasks(t)
	rB, err := controller.NewBulkRunner(controller.BulkOptions{Store: e.store, Tasks: qB, PageSize: 2, AdoptInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := rB.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rB.Stop)
	// Many of B's looks while A creates tasks 2 to 5.
	bustest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if rB.Runs(j.ID) {
			t.Fatal("the second replica runs the batch the first one is running")
		}
		if n := len(batchTasks(t, e, j.ID)); n < 5 {
			return fmt.Errorf("%d tasks", n)
		}
		return nil
	})
	first, err := e.store.FindTaskBatchByID(ctx, j.ID)
	if err != nil || first.Runner == "" {
		t.Fatalf("batch runner %q: %v", first.Runner, err)
	}
	// Replica A goes away (the runner and the lease its liveness is).
	rA.Stop()
	qA.Stop()
	if done := e.waitBatch(t, j.ID, "done"); done.Matched != 12 || done.CreatedTasks != 12 {
		t.Fatalf("batch after the takeover: %+v", done)
	}
	if last, err := e.store.FindTaskBatchByID(ctx, j.ID); err != nil || last.Runner == first.Runner || last.Runner == "" {
		t.Fatalf("runner %q after the takeover (was %q): %v", last.Runner, first.Runner, err)
	}
	for d, n := range batchTasks(t, e, j.ID) {
		if n != 1 {
			t.Errorf("%s has %d tasks of the batch", d, n)
		}
	}
}

// TestBulkFilterIDs: filter.ids names the batch's devices (the console's
// selection), with the other conditions; a bad ID or one with a group is
// refused naming the field.
func TestBulkFilterIDs(t *testing.T) {
	e := newEnv(t)
	withBulk(t, e, controller.BulkOptions{DefaultRate: 1000, PageSize: 2})
	ids := deviceIDs("sel", 5)
	seedOffline(t, e, ids, "1.0")
	code, body := e.do(t, "POST", "/api/v1/tasks", `{"filter":{"ids":["sel-00","sel-02","sel-04","nobody"],"software_version":"1.0"},
		"task":{"operation":"reboot"}}`)
	var b api.TaskBatchJSON
	if code != 202 || json.Unmarshal([]byte(body), &b) != nil {
		t.Fatalf("POST: %d %s", code, body)
	}
	if done := e.waitBatch(t, b.ID, "done"); done.Matched != 3 || done.CreatedTasks != 3 {
		t.Fatalf("done batch: %+v", done)
	}
	got := batchTasks(t, e, b.ID)
	if len(got) != 3 || got["sel-00"] != 1 || got["sel-02"] != 1 || got["sel-04"] != 1 {
		t.Fatalf("tasks by device: %v", got)
	}
	for body, want := range map[string]string{
		`{"filter":{"ids":["sel-00",""]},"task":{"operation":"reboot"}}`:              "filter.ids[1]: device id is empty",
		`{"filter":{"ids":["sel-00"],"group":"grp_x"},"task":{"operation":"reboot"}}`: "group selects the devices on its own",
	} {
		code, out := e.do(t, "POST", "/api/v1/tasks", body)
		if code != 400 || !strings.Contains(out, want) {
			t.Errorf("%s: %d %s, want 400 with %q", body, code, out, want)
		}
	}
}
