package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// reconcileEnv is a store with devices whose parameter is cached, and a
// reconciler driven pass by pass (no task queue: tasks stay queued until
// the test finishes them as a device would).
type reconcileEnv struct {
	t   *testing.T
	st  *store.Store
	r   *Reconciler
	ctx context.Context
}

const informPath = "Device.ManagementServer.PeriodicInformInterval"

func newReconcileEnv(t *testing.T, n int) *reconcileEnv {
	st, _ := storetest.Open(t)
	e := &reconcileEnv{t: t, st: st, r: NewReconciler(ReconcilerOptions{Store: st}), ctx: context.Background()}
	// The passes run here, not in Start's loop: give its lease back so
	// the database can be dropped.
	t.Cleanup(func() {
		if e.r.lease != nil {
			e.r.lease.Release(context.Background())
		}
	})
	var obs []store.Observation
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("dev-%02d", i)
		obs = append(obs, store.Observation{EventID: id, Kind: "inform", Time: time.Now(), Payload: []byte{}, Online: true,
			Device: devicemodel.Device{ID: id, Protocol: devicemodel.ProtocolCWMP, Manufacturer: "ACME", SerialNumber: id},
			Params: []store.Parameter{{DeviceID: id, Path: informPath, Value: "3600", Type: "unsignedInt", UpdatedAt: time.Now()}}})
	}
	if err := st.ApplyObservations(e.ctx, obs); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *reconcileEnv) pass() {
	e.t.Helper()
	e.r.mu.Lock()
	e.r.fullAsked = true
	e.r.mu.Unlock()
	if err := e.r.pass(e.ctx); err != nil {
		e.t.Fatal(err)
	}
}

func (e *reconcileEnv) policy(filter, spec string, prio int) store.Policy {
	e.t.Helper()
	g, err := e.st.CreateGroup(e.ctx, "t", store.Group{Name: fmt.Sprintf("g-%d-%d", prio, time.Now().UnixNano()), Filter: filter})
	if err != nil {
		e.t.Fatal(err)
	}
	p, err := e.st.CreatePolicy(e.ctx, "t", store.Policy{GroupID: g.ID, Name: "p", Priority: prio, Kind: "parameters", Spec: json.RawMessage(spec)})
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

func (e *reconcileEnv) enable(p store.Policy, strategy string) {
	e.t.Helper()
	s, err := ParseRolloutStrategy(json.RawMessage(strategy))
	if err != nil {
		e.t.Fatal(err)
	}
	b, _ := json.Marshal(s)
	if _, err := e.st.EnablePolicy(e.ctx, "t", p.ID, b, s.BatchSize); err != nil {
		e.t.Fatal(err)
	}
}

func (e *reconcileEnv) counts(p store.Policy) store.RolloutCounts {
	e.t.Helper()
	ro, err := e.st.FindRollout(e.ctx, p.ID)
	if err != nil {
		e.t.Fatal(err)
	}
	c, err := e.st.CountRollout(e.ctx, p.ID, ro.Batch)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// queued returns the queued tasks, by device.
func (e *reconcileEnv) queued() map[string]store.Task {
	e.t.Helper()
	out := map[string]store.Task{}
	rows, err := e.st.Pool().Query(e.ctx, "SELECT id, device_id FROM tasks WHERE state = 'queued'")
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, dev string
		if err := rows.Scan(&id, &dev); err != nil {
			e.t.Fatal(err)
		}
		t, err := e.st.FindTaskByID(e.ctx, id)
		if err != nil {
			e.t.Fatal(err)
		}
		out[dev] = t
	}
	return out
}

// finish settles a queued task as the device answered: on success the
// set value is cached, as the task queue does.
func (e *reconcileEnv) finish(t store.Task, ok bool, value string) {
	e.t.Helper()
	if _, err := e.st.Pool().Exec(e.ctx, "UPDATE tasks SET state = 'dispatched' WHERE id = $1", t.ID); err != nil {
		e.t.Fatal(err)
	}
	o := store.TaskOutcome{State: store.TaskSucceeded}
	if ok {
		if err := e.st.UpsertParameters(e.ctx, []store.Parameter{{DeviceID: t.DeviceID, Path: informPath, Value: value, UpdatedAt: time.Now()}}); err != nil {
			e.t.Fatal(err)
		}
	} else {
		o = store.TaskOutcome{State: store.TaskFailed, ErrorCode: "invalid_value", ErrorMessage: "9007 Invalid parameter value", DeviceFault: 9007}
	}
	final, done, err := e.st.FinishTask(e.ctx, t.ID, o)
	if err != nil || !done {
		e.t.Fatalf("finish %s: %v %v", t.ID, done, err)
	}
	e.r.TaskFinished(e.ctx, final)
}

// TestReconcilerBatchesPauseAndAbort: max_in_flight bounds the devices
// with work; a paused rollout admits nobody; abort disables the policy,
// cancels its queued work and drops its statuses.
func TestReconcilerBatchesPauseAndAbort(t *testing.T) {
	e := newReconcileEnv(t, 6)
	p := e.policy(`manufacturer == "ACME"`, `{"parameters":[{"path":"`+informPath+`","value":"300"}]}`, 0)
	e.enable(p, `{"batch_size":4,"max_in_flight":2}`)
	e.pass() // full pass: 6 pending
	e.pass() // batch 1 admits 2 (in-flight bound) ...
	e.pass() // ... and they get their Set
	q := e.queued()
	if c := e.counts(p); len(q) != 2 || c.Admitted != 2 || c.Waiting != 4 || c.ByStatus["applying"] != 2 {
		t.Fatalf("first admission: %d queued, %+v", len(q), c)
	}
	for _, task := range q {
		var req TaskRequest
		if err := json.Unmarshal(task.Request, &req); err != nil || req.Operation != "set" || len(req.Params) != 1 ||
			req.Params[0].Value != "300" || req.Params[0].Type != "unsignedInt" {
			t.Fatalf("task %s: %+v %v", task.ID, req, err)
		}
		e.finish(task, true, "300")
	}
	e.pass() // the two finished devices are compliant; batch 1 tops up to 4
	e.pass()
	if c := e.counts(p); c.ByStatus["compliant"] != 2 || c.Admitted != 4 || len(e.queued()) != 2 {
		t.Fatalf("top-up: %+v, %d queued", c, len(e.queued()))
	}
	if _, err := e.st.SetRolloutState(e.ctx, "ops", p.ID, []string{store.RolloutRunning}, store.RolloutPaused, "night"); err != nil {
		t.Fatal(err)
	}
	for _, task := range e.queued() {
		e.finish(task, true, "300")
	}
	e.pass()
	e.pass()
	if c := e.counts(p); c.Admitted != 4 || c.Waiting != 2 || len(e.queued()) != 0 {
		t.Fatalf("paused rollout admitted: %+v", c)
	}
	if _, err := e.st.SetRolloutState(e.ctx, "ops", p.ID, []string{store.RolloutPaused}, store.RolloutRunning, ""); err != nil {
		t.Fatal(err)
	}
	e.pass() // batch 1 is marked finished,
	e.pass() // batch 2 admits the last two,
	e.pass() // which get their Set
	if n := len(e.queued()); n != 2 {
		t.Fatalf("resumed: %d queued", n)
	}
	if _, err := e.st.SetRolloutState(e.ctx, "ops", p.ID, []string{store.RolloutRunning}, store.RolloutAborted, "wrong value"); err != nil {
		t.Fatal(err)
	}
	if n := len(e.queued()); n != 0 {
		t.Fatalf("abort left %d queued tasks", n)
	}
	e.pass()
	if got, _ := e.st.FindPolicyByID(e.ctx, p.ID); got.Enabled {
		t.Fatal("aborted policy still enabled")
	}
	if list, _, _ := e.st.FindStatuses(e.ctx, store.StatusFilter{PolicyID: p.ID}); len(list) != 0 {
		t.Fatalf("aborted policy has statuses: %+v", list)
	}
}

// TestReconcilerFailureStopsAndFailedSticks: a failure rate over the
// threshold stops the rollout; a failed device is not retried on its next
// inform; a device that leaves the group loses its status.
func TestReconcilerFailureStopsAndFailedSticks(t *testing.T) {
	e := newReconcileEnv(t, 4)
	p := e.policy(`manufacturer == "ACME" && !("lab" in tags)`, `{"parameters":[{"path":"`+informPath+`","value":"300"}]}`, 0)
	e.enable(p, `{"batch_size":2,"failure_threshold":0.4,"min_finished":2}`)
	e.pass()
	e.pass()
	e.pass()
	q := e.queued()
	if len(q) != 2 {
		t.Fatalf("%d queued", len(q))
	}
	for _, task := range q {
		e.finish(task, false, "")
	}
	e.pass()
	ro, _ := e.st.FindRollout(e.ctx, p.ID)
	if ro.State != store.RolloutStopped || ro.Reason == "" {
		t.Fatalf("rollout %+v", ro)
	}
	// The failed devices inform again: nothing is retried.
	for dev := range q {
		e.r.DevicesChanged([]string{dev})
	}
	e.pass()
	if n := len(e.queued()); n != 0 {
		t.Fatalf("failed devices retried: %d queued", n)
	}
	if c := e.counts(p); c.Failed != 2 || c.Waiting != 2 {
		t.Fatalf("counts %+v", c)
	}
	// A device tagged "lab" leaves the group: its status goes.
	var leaving string
	for dev := range q {
		leaving = dev
	}
	if err := e.st.SetDeviceTags(e.ctx, leaving, []string{"lab"}); err != nil {
		t.Fatal(err)
	}
	e.r.DevicesChanged([]string{leaving})
	e.pass()
	if st, _ := e.st.DeviceStatuses(e.ctx, []string{leaving}); len(st) != 0 {
		t.Fatalf("device outside the group keeps a status: %+v", st)
	}
}

// TestOneReconcilerLeads: of two controller replicas, one runs full
// passes and rollouts; when it goes, the other takes over.
func TestOneReconcilerLeads(t *testing.T) {
	e := newReconcileEnv(t, 1)
	other := NewReconciler(ReconcilerOptions{Store: e.st})
	if !e.r.lead(e.ctx) {
		t.Fatal("the first reconciler does not lead")
	}
	if other.lead(e.ctx) {
		t.Fatal("two reconcilers lead")
	}
	if !e.r.lead(e.ctx) {
		t.Fatal("the leader lost its lease")
	}
	e.r.lease.Release(e.ctx)
	e.r.lease = nil
	if !other.lead(e.ctx) {
		t.Fatal("the lease was not taken over")
	}
	other.lease.Release(e.ctx)
}

// TestReconcilerAddsAnInstanceOnce: an objects policy reads the table,
// adds the missing instance once, and is compliant when the Add's result
// is cached. A second decision to add while the first Add is on the
// device (another replica's judgement) is dropped, not queued.
func TestReconcilerAddsAnInstanceOnce(t *testing.T) {
	e := newReconcileEnv(t, 1)
	const table = "Device.NAT.PortMapping."
	g, err := e.st.CreateGroup(e.ctx, "t", store.Group{Name: "nat", Filter: `manufacturer == "ACME"`})
	if err != nil {
		t.Fatal(err)
	}
	p, err := e.st.CreatePolicy(e.ctx, "t", store.Policy{GroupID: g.ID, Name: "nat", Kind: "objects",
		Spec: json.RawMessage(`{"objects":[{"table":"` + table + `","key":{"Alias":"sip"},"parameters":{"Enable":"true"}}]}`)})
	if err != nil {
		t.Fatal(err)
	}
	e.enable(p, `{"batch_percent":100}`)
	e.pass()
	e.pass()
	only := func(op string) store.Task {
		t.Helper()
		q := e.queued()
		task, ok := q["dev-00"]
		if len(q) != 1 || !ok || task.Operation != op {
			t.Fatalf("want one queued %s, have %+v", op, q)
		}
		return task
	}
	settle := func(task store.Task, cache ...store.Parameter) {
		t.Helper()
		if _, err := e.st.Pool().Exec(e.ctx, "UPDATE tasks SET state = 'dispatched' WHERE id = $1", task.ID); err != nil {
			t.Fatal(err)
		}
		if err := e.st.UpsertParameters(e.ctx, cache); err != nil {
			t.Fatal(err)
		}
		final, done, err := e.st.FinishTask(e.ctx, task.ID, store.TaskOutcome{State: store.TaskSucceeded})
		if err != nil || !done {
			t.Fatalf("finish %s: %v %v", task.ID, done, err)
		}
		e.r.TaskFinished(e.ctx, final)
	}
	get := only("get")
	// The table is read: it is empty. The task queue records the listing
	// when a Get of the table succeeds (recordListings).
	if err := e.st.RecordTableListings(e.ctx, "dev-00", []string{table}, store.ListingFull, time.Now()); err != nil {
		t.Fatal(err)
	}
	settle(get)
	e.pass()
	add := only("add")
	if _, err := e.st.Pool().Exec(e.ctx, "UPDATE tasks SET state = 'dispatched' WHERE id = $1", add.ID); err != nil {
		t.Fatal(err)
	}
	twin := add
	twin.ID = add.ID + "-twin"
	if err := e.st.ApplyReconciliation(e.ctx, store.Reconciliation{Tasks: []store.Task{twin},
		Links: []store.PolicyTask{{TaskID: twin.ID, PolicyID: p.ID, DeviceID: "dev-00", Revision: 1, Purpose: "add", Target: "x"}}}); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := e.st.Pool().QueryRow(e.ctx, "SELECT count(*) FROM tasks WHERE operation = 'add'").Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d add tasks after a twin decision (%v)", n, err)
	}
	now := time.Now()
	settle(add,
		store.Parameter{DeviceID: "dev-00", Path: table + "1.Alias", Value: "sip", UpdatedAt: now},
		store.Parameter{DeviceID: "dev-00", Path: table + "1.Enable", Value: "true", UpdatedAt: now})
	e.pass()
	e.pass()
	if q := e.queued(); len(q) != 0 {
		t.Fatalf("work after the instance exists: %+v", q)
	}
	if c := e.counts(p); c.ByStatus["compliant"] != 1 {
		t.Fatalf("counts: %+v", c)
	}
	e.r.lastGauge = time.Time{} // recount now
	e.pass()
	if n := testutil.ToFloat64(metricPolicyDevices.WithLabelValues(p.ID, "compliant")); n != 1 {
		t.Fatalf("duet_policy_devices{compliant} = %v", n)
	}
}

// TestReconcilerReadsAnOldListingBeforeAdding: Duet listed the table two
// hours ago, and the device's user has since created the policy's
// instance (no notification). The policy reads the table again before
// adding, finds that instance and sets it in place (issue 12 §3).
func TestReconcilerReadsAnOldListingBeforeAdding(t *testing.T) {
	e := newReconcileEnv(t, 1)
	const table, dev = "Device.NAT.PortMapping.", "dev-00"
	now := time.Now()
	if err := e.st.UpsertParameters(e.ctx, []store.Parameter{{DeviceID: dev, Path: table + "1.Alias", Value: "web", UpdatedAt: now.Add(-2 * time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	if err := e.st.RecordTableListings(e.ctx, dev, []string{table}, store.ListingFull, now.Add(-2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	g, err := e.st.CreateGroup(e.ctx, "t", store.Group{Name: "nat", Filter: `manufacturer == "ACME"`})
	if err != nil {
		t.Fatal(err)
	}
	p, err := e.st.CreatePolicy(e.ctx, "t", store.Policy{GroupID: g.ID, Name: "nat", Kind: "objects",
		Spec: json.RawMessage(`{"objects":[{"table":"` + table + `","key":{"Alias":"sip"},"parameters":{"Enable":"true"}}]}`)})
	if err != nil {
		t.Fatal(err)
	}
	e.enable(p, `{"batch_percent":100}`)
	e.pass()
	e.pass()
	q := e.queued()
	get, ok := q[dev]
	if len(q) != 1 || !ok || get.Operation != "get" {
		t.Fatalf("want the table read before adding, have %+v", q)
	}
	// The read finds the user's instance; the task queue caches it and
	// records the listing, then the task finishes.
	if _, err := e.st.Pool().Exec(e.ctx, "UPDATE tasks SET state = 'dispatched' WHERE id = $1", get.ID); err != nil {
		t.Fatal(err)
	}
	read := time.Now()
	if err := e.st.UpsertParameters(e.ctx, []store.Parameter{
		{DeviceID: dev, Path: table + "1.Alias", Value: "web", UpdatedAt: read},
		{DeviceID: dev, Path: table + "2.Alias", Value: "sip", UpdatedAt: read},
		{DeviceID: dev, Path: table + "2.Enable", Value: "false", UpdatedAt: read},
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.st.RecordTableListings(e.ctx, dev, []string{table}, store.ListingFull, read); err != nil {
		t.Fatal(err)
	}
	final, done, err := e.st.FinishTask(e.ctx, get.ID, store.TaskOutcome{State: store.TaskSucceeded})
	if err != nil || !done {
		t.Fatalf("finish: %v %v", done, err)
	}
	e.r.TaskFinished(e.ctx, final)
	e.pass()
	q = e.queued()
	set, ok := q[dev]
	if len(q) != 1 || !ok || set.Operation != "set" {
		t.Fatalf("want the user's instance set in place, have %+v", q)
	}
	var req TaskRequest
	if err := json.Unmarshal(set.Request, &req); err != nil || len(req.Params) != 1 || req.Params[0].Path != table+"2.Enable" || req.Params[0].Value != "true" {
		t.Fatalf("set %+v %v", req, err)
	}
}

// TestReconcilerReportsATableItCannotList: the device answers the
// policy's read of the table with an error for it (the Get succeeds, the
// path does not), so Duet still holds no listing. The device is reported
// failed, once, instead of being read again and again; a retry reads it
// again.
func TestReconcilerReportsATableItCannotList(t *testing.T) {
	e := newReconcileEnv(t, 1)
	const table, dev = "Device.NAT.PortMapping.", "dev-00"
	g, err := e.st.CreateGroup(e.ctx, "t", store.Group{Name: "nat", Filter: `manufacturer == "ACME"`})
	if err != nil {
		t.Fatal(err)
	}
	p, err := e.st.CreatePolicy(e.ctx, "t", store.Policy{GroupID: g.ID, Name: "nat", Kind: "objects",
		Spec: json.RawMessage(`{"objects":[{"table":"` + table + `","key":{"Alias":"sip"}}]}`)})
	if err != nil {
		t.Fatal(err)
	}
	e.enable(p, `{"batch_percent":100}`)
	e.pass()
	e.pass()
	get, ok := e.queued()[dev]
	if !ok || get.Operation != "get" {
		t.Fatalf("want the table read, have %+v", e.queued())
	}
	if _, err := e.st.Pool().Exec(e.ctx, "UPDATE tasks SET state = 'dispatched' WHERE id = $1", get.ID); err != nil {
		t.Fatal(err)
	}
	// What the task queue records for an error on the table's path.
	if err := e.st.UnlistTables(e.ctx, dev, []string{table}, time.Now()); err != nil {
		t.Fatal(err)
	}
	final, done, err := e.st.FinishTask(e.ctx, get.ID, store.TaskOutcome{State: store.TaskSucceeded})
	if err != nil || !done {
		t.Fatalf("finish: %v %v", done, err)
	}
	e.r.TaskFinished(e.ctx, final)
	e.pass()
	e.pass()
	if q := e.queued(); len(q) != 0 {
		t.Fatalf("the table is read again and again: %+v", q)
	}
	st, err := e.st.DeviceStatuses(e.ctx, []string{dev})
	if err != nil {
		t.Fatal(err)
	}
	if s := st[p.ID][dev]; s.Status != store.StatusFailed || s.ErrorCode != "unavailable" {
		t.Fatalf("status %+v", s)
	}
	if _, _, err := e.st.ResumeRollout(e.ctx, "ops", p.ID, true); err != nil {
		t.Fatal(err)
	}
	e.pass()
	e.pass()
	if get, ok := e.queued()[dev]; !ok || get.Operation != "get" {
		t.Fatalf("a retry reads the table again; have %+v", e.queued())
	}
}
