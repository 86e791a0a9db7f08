package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// TestAwaitingTasks: a task the device accepted stays dispatched with its
// sub-state; awaiting_boot marks the device rebooting until the task ends
// and holds the queue, awaiting_completion does not; neither is an orphan
// nor a leftover of a session; past its deadline it is overdue.
func TestAwaitingTasks(t *testing.T) {
	ctx := context.Background()
	s, err := store.Open(ctx, store.Options{URL: storetest.NewDatabase(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if _, err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	rb := claimOn(t, s, "dev-rb", "")
	if _, ok, err := s.AwaitTask(ctx, rb.ID, store.SubStateAwaitingBoot, "k1", time.Now().Add(-time.Second), []byte("r")); err != nil || !ok {
		t.Fatalf("await: %v %v", ok, err)
	}
	d, _ := s.FindDeviceByID(ctx, "dev-rb")
	if !d.Rebooting {
		t.Fatal("device not rebooting while its reboot awaits boot")
	}
	if _, err := s.CreateTask(ctx, store.Task{ID: "next-rb", DeviceID: "dev-rb", Operation: "get", Request: []byte(`{}`), Command: []byte("c")}); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.ClaimNextTask(ctx, "dev-rb", "usp", ""); ok {
		t.Fatal("a task was claimed while the device reboots")
	}
	if orphanIDs(t, s)[rb.ID] {
		t.Fatal("an awaiting task is an orphan")
	}
	if left, _ := s.DispatchedTasks(ctx, "dev-rb"); len(left) != 0 {
		t.Fatalf("awaiting task among a session's leftovers: %v", left)
	}
	aw, _ := s.AwaitingTasks(ctx, "dev-rb", store.SubStateAwaitingBoot)
	over, _ := s.OverdueTasks(ctx)
	if len(aw) != 1 || aw[0].AwaitKey != "k1" || len(over) != 1 || over[0].ID != rb.ID {
		t.Fatalf("awaiting %v overdue %v", aw, over)
	}
	if _, done, err := s.FinishTask(ctx, rb.ID, store.TaskOutcome{State: store.TaskSucceeded}); !done || err != nil {
		t.Fatalf("finish: %v %v", done, err)
	}
	d, _ = s.FindDeviceByID(ctx, "dev-rb")
	fin, _ := s.FindTaskByID(ctx, rb.ID)
	if d.Rebooting || fin.SubState != "" {
		t.Fatalf("after the reboot ended: rebooting %v sub_state %q", d.Rebooting, fin.SubState)
	}

	tr := claimOn(t, s, "dev-tr", "")
	if _, ok, err := s.AwaitTask(ctx, tr.ID, store.SubStateAwaitingCompletion, "k2", time.Now().Add(time.Hour), nil); err != nil || !ok {
		t.Fatalf("await: %v %v", ok, err)
	}
	if d, _ := s.FindDeviceByID(ctx, "dev-tr"); d.Rebooting {
		t.Fatal("a transfer marks the device rebooting")
	}
	if _, err := s.CreateTask(ctx, store.Task{ID: "next-tr", DeviceID: "dev-tr", Operation: "get", Request: []byte(`{}`), Command: []byte("c")}); err != nil {
		t.Fatal(err)
	}
	if next, ok, _ := s.ClaimNextTask(ctx, "dev-tr", "usp", ""); !ok || next.ID != "next-tr" {
		t.Fatal("a transfer awaiting completion holds the queue")
	}
}
