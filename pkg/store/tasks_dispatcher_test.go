package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// claimOn queues a task for a new device and claims it as dispatcher.
func claimOn(t *testing.T, s *store.Store, dev, dispatcher string) store.Task {
	t.Helper()
	ctx := context.Background()
	if err := s.ApplyObservations(ctx, []store.Observation{obs(dev, time.Now(), "inform", true, nil)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateTask(ctx, store.Task{ID: "task-" + dev, DeviceID: dev, Operation: "reboot",
		Request: []byte(`{}`), Command: []byte("cmd"), NonIdempotent: true}); err != nil {
		t.Fatal(err)
	}
	tk, ok, err := s.ClaimNextTask(ctx, dev, "usp", dispatcher)
	if err != nil || !ok {
		t.Fatalf("claim %s: %v %v", dev, ok, err)
	}
	if tk.Dispatcher != dispatcher {
		t.Fatalf("claimed task's dispatcher %q, want %q", tk.Dispatcher, dispatcher)
	}
	return tk
}

func orphanIDs(t *testing.T, s *store.Store) map[string]bool {
	t.Helper()
	ts, err := s.OrphanedTasks(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, tk := range ts {
		out[tk.ID] = true
	}
	return out
}

// TestOrphanedTasksFollowDispatcherLeases: a dispatched task is an orphan
// exactly when its dispatcher is "" or its lease is free in this database.
// Many leases are taken so that keys with every sign of the high and low
// 32-bit halves are checked against pg_locks.
func TestOrphanedTasksFollowDispatcherLeases(t *testing.T) {
	ctx := context.Background()
	url := storetest.NewDatabase(t)
	s, err := store.Open(ctx, store.Options{URL: url, MaxConns: 48})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if _, err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	var leases []*store.Lease
	held := map[int]bool{}
	// Leases keep pool connections: give them back before s.Close
	// (cleanups run last first), or it waits for them forever.
	release := func(i int) {
		if held[i] {
			leases[i].Release(ctx)
			delete(held, i)
		}
	}
	t.Cleanup(func() {
		for i := range leases {
			release(i)
		}
	})

	const n = 24
	var (
		tasks []store.Task
		// Which halves of the lock keys were negative as int32.
		highNeg, highPos, lowNeg, lowPos bool
	)
	for i := range n {
		d := fmt.Sprintf("dispatcher-%02d", i)
		var key int64
		if err := s.Pool().QueryRow(ctx, "SELECT hashtextextended('duet.lease.dispatcher.' || $1, 0)", d).Scan(&key); err != nil {
			t.Fatal(err)
		}
		highNeg, highPos = highNeg || key < 0, highPos || key >= 0
		lowNeg, lowPos = lowNeg || int32(key) < 0, lowPos || int32(key) >= 0
		l, ok, err := s.TryLease(ctx, "dispatcher."+d)
		if err != nil || !ok {
			t.Fatalf("lease %s: %v %v", d, ok, err)
		}
		leases, held[i] = append(leases, l), true
		tasks = append(tasks, claimOn(t, s, fmt.Sprintf("00D09E-DISP-%02d", i), d))
	}
	if !highNeg || !highPos || !lowNeg || !lowPos {
		t.Fatalf("the keys do not cover every sign: high -%v +%v low -%v +%v", highNeg, highPos, lowNeg, lowPos)
	}
	legacy := claimOn(t, s, "00D09E-DISP-LEGACY", "")
	// A dispatcher whose lease is held in another database of the
	// cluster is gone as far as this one is concerned.
	other, _ := storetest.Open(t)
	ol, ok, err := other.TryLease(ctx, "dispatcher.elsewhere")
	if err != nil || !ok {
		t.Fatalf("lease in the other database: %v %v", ok, err)
	}
	t.Cleanup(func() { ol.Release(ctx) })
	elsewhere := claimOn(t, s, "00D09E-DISP-ELSEWHERE", "elsewhere")

	got := orphanIDs(t, s)
	if len(got) != 2 || !got[legacy.ID] || !got[elsewhere.ID] {
		t.Fatalf("orphans with every lease held: %v, want %s and %s", got, legacy.ID, elsewhere.ID)
	}

	// Release every other lease: exactly those tasks become orphans.
	for i := 0; i < n; i += 2 {
		release(i)
	}
	got = orphanIDs(t, s)
	if len(got) != 2+n/2 {
		t.Fatalf("%d orphans after releasing %d leases, want %d: %v", len(got), n/2, 2+n/2, got)
	}
	for i, tk := range tasks {
		if got[tk.ID] != (i%2 == 0) {
			t.Fatalf("task %s of dispatcher %s: orphan %v, lease released %v", tk.ID, tk.Dispatcher, got[tk.ID], i%2 == 0)
		}
	}
	for i := 1; i < n; i += 2 {
		release(i)
	}
	if got := orphanIDs(t, s); len(got) != n+2 {
		t.Fatalf("%d orphans with every lease released, want %d", len(got), n+2)
	}

	// One adopter wins an orphan; a second with the same stale view loses.
	if ok, err := s.AdoptTask(ctx, tasks[0], "adopter-1"); err != nil || !ok {
		t.Fatalf("first adopt: %v %v", ok, err)
	}
	if ok, err := s.AdoptTask(ctx, tasks[0], "adopter-2"); err != nil || ok {
		t.Fatalf("second adopt: %v %v, want false", ok, err)
	}
	// Requeueing clears the dispatcher.
	if ok, err := s.RequeueTask(ctx, legacy.ID, "test", false); err != nil || !ok {
		t.Fatalf("requeue: %v %v", ok, err)
	}
	if tk, err := s.FindTaskByID(ctx, legacy.ID); err != nil || tk.State != store.TaskQueued || tk.Dispatcher != "" {
		t.Fatalf("requeued: %+v %v", tk, err)
	}
	if tk, err := s.FindTaskByID(ctx, tasks[0].ID); err != nil || tk.Dispatcher != "adopter-1" {
		t.Fatalf("adopted: %+v %v", tk, err)
	}
}
