package controller_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// TestReplicaLeavesLiveDispatcherTasksAlone: two task queues (replicas)
// share one database. A reboot in flight in the first is not settled when
// the second starts, nor by its sweeps; once the first stops (its
// dispatcher lease is free) the second's sweep fails it as outcome_unknown.
func TestReplicaLeavesLiveDispatcherTasksAlone(t *testing.T) {
	b, _ := bustest.Start(t)
	s, _ := storetest.Open(t)
	ctx := context.Background()
	newQueue := func() *controller.TaskQueue {
		q, err := controller.NewTaskQueue(controller.TaskQueueOptions{Store: s, Bus: b,
			SweepInterval: 50 * time.Millisecond, CommandTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return q
	}
	// queue creates a non-idempotent task for a new CWMP device.
	queue := func(dev, id string) {
		t.Helper()
		if err := s.ApplyObservations(ctx, []store.Observation{{EventID: "ev-" + dev, Kind: "inform", Time: time.Now(),
			Payload: []byte("inform"), Online: true, Device: devicemodel.Device{ID: dev, Protocol: devicemodel.ProtocolCWMP}}}); err != nil {
			t.Fatal(err)
		}
		cmd, err := proto.Marshal(&duetv1.Command{Id: id, DeviceId: dev})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.CreateTask(ctx, store.Task{ID: id, DeviceID: dev, Operation: "reboot", Request: []byte(`{}`),
			Command: cmd, NonIdempotent: true}); err != nil {
			t.Fatal(err)
		}
	}
	failedUnknown := func(id string) func() error {
		return func() error {
			tk, err := s.FindTaskByID(ctx, id)
			if err != nil {
				return err
			}
			if tk.State != store.TaskFailed || tk.ErrorCode != devicemodel.CodeOutcomeUnknown.String() {
				return fmt.Errorf("task %s is %s (%s), want failed outcome_unknown", id, tk.State, tk.ErrorCode)
			}
			return nil
		}
	}
	const dev, id = "00D09E-REPLICA-1", "task-replica-reboot"
	queue(dev, id)

	first := newQueue()
	if err := first.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(first.Stop)
	// A CWMP session served by the first replica takes the reboot.
	w, err := first.SessionWork(ctx, &duetv1.SessionWorkRequest{DeviceId: dev, SessionId: "s1"})
	if err != nil || len(w.GetCommands()) != 1 || w.GetCommands()[0].GetId() != id {
		t.Fatalf("session work: %v %v", w, err)
	}

	second := newQueue()
	if err := second.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(second.Stop)
	// A task of a dispatcher that holds no lease (a crashed replica),
	// dispatched after the second started: once a sweep of the second
	// has settled it, that sweep has also judged the first's reboot.
	const gone = "00D09E-REPLICA-GONE"
	queue(gone, "task-replica-gone")
	if _, ok, err := s.ClaimNextTask(ctx, gone, "s0", "crashed-replica"); err != nil || !ok {
		t.Fatalf("claim as a crashed replica: %v %v", ok, err)
	}
	bustest.CheckFor(t, 30*time.Second, 20*time.Millisecond, failedUnknown("task-replica-gone"))
	if tk, err := s.FindTaskByID(ctx, id); err != nil || tk.State != store.TaskDispatched {
		t.Fatalf("a live replica's in-flight reboot after another started and swept: %s %s %v", tk.State, tk.ErrorCode, err)
	}

	// The first replica goes away: the second takes its task over.
	first.Stop()
	bustest.CheckFor(t, 30*time.Second, 20*time.Millisecond, failedUnknown(id))
}
