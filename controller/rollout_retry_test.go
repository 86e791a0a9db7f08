package controller

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// TestRolloutFailedBeforeAdmissionIsCountedAndRetried: a device that
// fails before any batch admits it (here an expression its cache cannot
// evaluate) is counted as failed and finished, consistently with
// by_status, and the completed rollout resumes with retry_failed once the
// cause is fixed, without a new revision (issue 12 §4). The counts said failed 0 next to by_status failed 1, and the resume was
// refused with 409.
func TestRolloutFailedBeforeAdmissionIsCountedAndRetried(t *testing.T) {
	st, _ := storetest.Open(t)
	pols := NewPolicies(PoliciesOptions{Store: st})
	ctx := context.Background()
	const who = "test operator"
	const limit = "Device.X_ACME_Limit"
	d := devicemodel.Device{ID: "cpe-1", Protocol: devicemodel.ProtocolCWMP, Manufacturer: "ACME"}
	if err := st.ApplyObservations(ctx, []store.Observation{{EventID: "e1", Kind: "inform", Time: time.Now(), Payload: []byte{}, Device: d, Online: true,
		Params: []store.Parameter{{DeviceID: d.ID, Path: informPath, Value: "3600", Type: "unsignedInt", UpdatedAt: time.Now()}}}}); err != nil {
		t.Fatal(err)
	}
	r := NewReconciler(ReconcilerOptions{Store: st})
	t.Cleanup(func() {
		if r.lease != nil {
			r.lease.Release(context.Background())
		}
	})
	pass := func() {
		t.Helper()
		r.mu.Lock()
		r.fullAsked = true
		r.mu.Unlock()
		if err := r.pass(ctx); err != nil {
			t.Fatal(err)
		}
	}
	g, err := pols.CreateGroup(ctx, who, "acme", `manufacturer == "ACME"`)
	if err != nil {
		t.Fatalf("group: %v", err)
	}
	p, err := pols.CreatePolicy(ctx, who, PolicyInput{GroupID: g.ID, Name: "inform", Kind: "parameters",
		Spec: json.RawMessage(`{"parameters":[{"path":"` + informPath + `","expr":"params[\"` + limit + `\"]"}]}`)})
	if err != nil {
		t.Fatalf("policy: %v", err)
	}
	v, err := pols.EnablePolicy(ctx, who, p.ID, json.RawMessage(`{"batch_percent":100}`))
	if err != nil {
		t.Fatalf("enable: %v", err)
	}
	pass()
	pass()
	if v, err = pols.Rollout(ctx, p.ID); err != nil {
		t.Fatalf("rollout: %v", err)
	}
	if v.State != store.RolloutCompleted || v.Counts.ByStatus["failed"] != 1 || v.Counts.Failed != 1 ||
		v.Counts.FailedBeforeAdmission != 1 || v.Counts.Finished != 1 || v.FailureRate != 1 {
		t.Fatalf("a device failed before admission: %+v", v)
	}
	if _, err := pols.ChangeRollout(ctx, who, p.ID, RolloutResume, "", false); devicemodel.ErrorCode(err) != devicemodel.CodeConflict || !strings.Contains(err.Error(), "retry_failed") {
		t.Fatalf("resume of a completed rollout without retry_failed: %v", err)
	}

	// The cause is fixed: the device now reports the value the expression
	// reads. The operator retries the failed devices.
	if err := st.UpsertParameters(ctx, []store.Parameter{{DeviceID: d.ID, Path: limit, Value: "300", UpdatedAt: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	if v, err = pols.ChangeRollout(ctx, who, p.ID, RolloutResume, "", true); err != nil || v.State != store.RolloutRunning ||
		v.Counts.Failed != 0 || v.Counts.Waiting != 1 {
		t.Fatalf("resume with retry_failed of a completed rollout: %v %+v", err, v)
	}
	pass() // judged again: pending, then admitted
	pass() // and given its Set
	var taskID string
	if err := st.Pool().QueryRow(ctx, "SELECT id FROM tasks WHERE device_id = $1 AND state = 'queued' AND operation = 'set'", d.ID).Scan(&taskID); err != nil {
		t.Fatalf("no Set queued after the retry: %v", err)
	}
	if _, err := st.Pool().Exec(ctx, "UPDATE tasks SET state = 'dispatched' WHERE id = $1", taskID); err != nil {
		t.Fatal(err)
	}
	if err := st.UpsertParameters(ctx, []store.Parameter{{DeviceID: d.ID, Path: informPath, Value: "300", UpdatedAt: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	final, done, err := st.FinishTask(ctx, taskID, store.TaskOutcome{State: store.TaskSucceeded})
	if err != nil || !done {
		t.Fatalf("finish: %v %v", done, err)
	}
	r.TaskFinished(ctx, final)
	pass()
	pass()
	if v, err = pols.Rollout(ctx, p.ID); err != nil || v.State != store.RolloutCompleted ||
		v.Counts.ByStatus["compliant"] != 1 || v.Counts.Failed != 0 || v.FailureRate != 0 {
		t.Fatalf("after the retry: %v %+v", err, v)
	}
	// Nothing failed any more: nothing to retry.
	if _, err := pols.ChangeRollout(ctx, who, p.ID, RolloutResume, "", true); devicemodel.ErrorCode(err) != devicemodel.CodeConflict || !strings.Contains(err.Error(), "nothing to retry") {
		t.Fatalf("retry with no failed device: %v", err)
	}
}
