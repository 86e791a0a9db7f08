package store_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

func queueTasks(t *testing.T, s *store.Store, dev string, n int) []string {
	t.Helper()
	ctx := context.Background()
	if err := s.ApplyObservations(ctx, []store.Observation{obs(dev, time.Now(), "inform", true, nil)}); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("task-%s-%d", dev, i)
		if _, err := s.CreateTask(ctx, store.Task{ID: id, DeviceID: dev, Operation: "get",
			Request: []byte(`{}`), Command: []byte("cmd")}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// TestClaimNextTaskOneInFlight: claims of one device racing from many
// connections dispatch exactly one task (the lock and the claim share a
// transaction, and the claim's snapshot is taken after the lock), the
// oldest, and say whether more are queued.
func TestClaimNextTaskOneInFlight(t *testing.T) {
	ctx := context.Background()
	s, _ := storetest.OpenWith(t, store.Options{MaxConns: 24})
	ids := queueTasks(t, s, "dev-race", 5)
	for round := 0; round < len(ids); round++ {
		var mu sync.Mutex
		var claimed []store.Task
		var wg sync.WaitGroup
		for i := 0; i < 24; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tk, ok, err := s.ClaimNextTask(ctx, "dev-race", "usp", "d")
				if err != nil {
					t.Error(err)
				}
				if ok {
					mu.Lock()
					claimed = append(claimed, tk)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if len(claimed) != 1 {
			t.Fatalf("round %d: %d claims succeeded, want 1", round, len(claimed))
		}
		tk := claimed[0]
		if tk.ID != ids[round] || tk.State != store.TaskDispatched {
			t.Fatalf("round %d: claimed %s (%s), want %s dispatched", round, tk.ID, tk.State, ids[round])
		}
		if want := round < len(ids)-1; tk.MoreQueued != want {
			t.Fatalf("round %d: MoreQueued %v, want %v", round, tk.MoreQueued, want)
		}
		if _, done, err := s.FinishTask(ctx, tk.ID, store.TaskOutcome{State: store.TaskSucceeded}); err != nil || !done {
			t.Fatalf("finish: %v %v", done, err)
		}
	}
}

// TestOpenTasks: a session learns in one query whether the device has
// open tasks and which dispatched ones still wait for its answer.
func TestOpenTasks(t *testing.T) {
	ctx := context.Background()
	s, _ := storetest.Open(t)
	check := func(step string, wantOpen bool, wantLeft ...string) {
		t.Helper()
		open, left, err := s.OpenTasks(ctx, "dev-open")
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, tk := range left {
			got = append(got, tk.ID)
		}
		if open != wantOpen || fmt.Sprint(got) != fmt.Sprint(wantLeft) {
			t.Fatalf("%s: open %v, unanswered %v; want %v, %v", step, open, got, wantOpen, wantLeft)
		}
	}
	if err := s.ApplyObservations(ctx, []store.Observation{obs("dev-open", time.Now(), "inform", true, nil)}); err != nil {
		t.Fatal(err)
	}
	check("no task", false)
	ids := queueTasks(t, s, "dev-open", 2)
	check("queued", true)
	tk, ok, err := s.ClaimNextTask(ctx, "dev-open", "sess", "d")
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	check("dispatched", true, ids[0])
	if _, ok, err := s.AwaitTask(ctx, tk.ID, store.SubStateAwaitingCompletion, "k", time.Now().Add(time.Hour), nil); err != nil || !ok {
		t.Fatal(ok, err)
	}
	check("awaiting completion", true)
	for _, id := range ids {
		if _, err := s.CancelTask(ctx, id); err != nil && id != tk.ID {
			t.Fatal(err)
		}
	}
	if _, _, err := s.FinishTask(ctx, tk.ID, store.TaskOutcome{State: store.TaskSucceeded}); err != nil {
		t.Fatal(err)
	}
	check("all final", false)
}

// TestCreateTaskFailureUndoesReplace: a create with a unique key goes as
// one transaction; when its insert fails, the queued task it would have
// replaced stays queued.
func TestCreateTaskFailureUndoesReplace(t *testing.T) {
	ctx := context.Background()
	s, _ := storetest.Open(t)
	if err := s.ApplyObservations(ctx, []store.Observation{obs("dev-key", time.Now(), "inform", true, nil)}); err != nil {
		t.Fatal(err)
	}
	first := store.Task{ID: "task-key-1", DeviceID: "dev-key", Operation: "get", Request: []byte(`{}`), Command: []byte("cmd"), UniqueKey: "k"}
	if _, err := s.CreateTask(ctx, first); err != nil {
		t.Fatal(err)
	}
	// The same ID again: the insert fails after the cancel ran.
	if _, err := s.CreateTask(ctx, first); err == nil {
		t.Fatal("a task with a taken ID was created")
	}
	got, err := s.FindTaskByID(ctx, first.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != store.TaskQueued {
		t.Fatalf("the replaced task is %s (%s), want queued", got.State, got.ErrorMessage)
	}
}

// TestCreateTaskWaiting: the reason a new task waits is recorded with it,
// and reported as a change only when it is one.
func TestCreateTaskWaiting(t *testing.T) {
	ctx := context.Background()
	s, _ := storetest.Open(t)
	if err := s.ApplyObservations(ctx, []store.Observation{obs("dev-wait", time.Now(), "inform", true, nil)}); err != nil {
		t.Fatal(err)
	}
	for i, wantChanged := range []bool{true, false} {
		tk, changed, err := s.CreateTaskWaiting(ctx, store.Task{ID: fmt.Sprintf("task-wait-%d", i), DeviceID: "dev-wait",
			Operation: "get", Request: []byte(`{}`), Command: []byte("cmd")}, store.WaitAwaitingInform)
		if err != nil {
			t.Fatal(err)
		}
		if changed != wantChanged {
			t.Fatalf("create %d: changed %v, want %v", i, changed, wantChanged)
		}
		got, err := s.FindTaskByID(ctx, tk.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.WaitingReason != store.WaitAwaitingInform || got.WaitingSince == nil {
			t.Fatalf("create %d: waiting %q since %v", i, got.WaitingReason, got.WaitingSince)
		}
	}
	if _, _, err := s.CreateTaskWaiting(ctx, store.Task{ID: "task-wait-x", DeviceID: "dev-nowhere",
		Operation: "get", Request: []byte(`{}`), Command: []byte("cmd")}, store.WaitAwaitingInform); err == nil {
		t.Fatal("a task for an unknown device was created")
	}
}
