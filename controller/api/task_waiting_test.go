package api_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/controller/api"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/devicemodel"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// waitReason polls a task until it is queued and waiting for reason (a
// prefix match), and returns it.
func (e *env) waitReason(t *testing.T, id, reason string) api.TaskJSON {
	t.Helper()
	var tj api.TaskJSON
	bustest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		tj = e.task(t, id)
		if tj.State != "queued" || tj.Waiting == nil || !strings.HasPrefix(tj.Waiting.Reason, reason) {
			return fmt.Errorf("task %s is %s, waiting %+v; want queued waiting for %s", id, tj.State, tj.Waiting, reason)
		}
		return nil
	})
	if tj.Waiting.Since.IsZero() {
		t.Fatalf("waiting without since: %+v", tj.Waiting)
	}
	return tj
}

// TestStuckTaskSaysWhy: a task that cannot be delivered says why in its
// JSON (issue 11 §5): before, it sat in queued with no reason anywhere.
func TestStuckTaskSaysWhy(t *testing.T) {
	t.Run("no_adapter", func(t *testing.T) {
		e := newEnv(t)
		e.startRegistry(t)
		const dev = "usp-noadapter"
		e.seen(t, dev, duetv1.Protocol_PROTOCOL_USP, "online")
		// Online in the registry, but no adapter serves it.
		_, tj := e.createTask(t, dev, `{"operation":"get","paths":["Device.DeviceInfo."]}`)
		got := e.waitReason(t, tj.ID, "no_adapter")
		if got.LastAttemptAt == nil {
			t.Fatalf("no last delivery attempt: %+v", got)
		}
		// It comes back: delivered, and no longer waiting.
		serveUSP(t, e.bus, dev, &uspAdapter{})
		e.seen(t, dev, duetv1.Protocol_PROTOCOL_USP, "online")
		if done := e.waitState(t, tj.ID, "succeeded"); done.Waiting != nil {
			t.Fatalf("finished task still waiting: %+v", done.Waiting)
		}
	})
	t.Run("device_offline", func(t *testing.T) {
		e := newEnv(t)
		e.startRegistry(t)
		const dev = "usp-gone"
		e.seen(t, dev, duetv1.Protocol_PROTOCOL_USP, "online")
		off := &duetv1.Event{Device: &duetv1.DeviceIdentity{Id: dev, Protocol: duetv1.Protocol_PROTOCOL_USP},
			Kind: &duetv1.Event_Offline{Offline: &duetv1.Offline{Reason: "test"}}}
		if err := e.bus.PublishEvent(context.Background(), off); err != nil {
			t.Fatal(err)
		}
		waitEvents(t, e, dev, 2)
		_, tj := e.createTask(t, dev, `{"operation":"reboot"}`)
		if got := e.waitReason(t, tj.ID, "device_offline"); got.LastAttemptAt != nil {
			t.Fatalf("never tried, yet a last attempt: %+v", got)
		}
	})
	t.Run("connection_request_failed", func(t *testing.T) {
		e := newEnv(t)
		e.startRegistry(t)
		startDesk(t, e)
		const dev = "00D09E-ONT-CRFAIL"
		e.seen(t, dev, duetv1.Protocol_PROTOCOL_CWMP, "inform")
		sub, err := e.bus.ServeCommands(bus.CommandSubject(devicemodel.ProtocolCWMP, dev), "", func(ctx context.Context, cmd *duetv1.Command) *duetv1.CommandResult {
			return &duetv1.CommandResult{Error: &duetv1.Error{Code: duetv1.ErrorCode_ERROR_CODE_UNAVAILABLE,
				Message: "connection request to http://192.0.2.7:7547/cr: dial tcp 192.0.2.7:7547: connect: connection refused"}}
		})
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Stop()
		_, tj := e.createTask(t, dev, `{"operation":"get","paths":["Device.DeviceInfo."]}`)
		got := e.waitReason(t, tj.ID, "connection_request_failed")
		if got.Waiting.Reason != "connection_request_failed: connection refused" {
			t.Fatalf("reason %q", got.Waiting.Reason)
		}
	})
	t.Run("awaiting_session", func(t *testing.T) {
		e := newEnv(t)
		e.startRegistry(t)
		startDesk(t, e)
		const dev = "00D09E-ONT-CROK"
		e.seen(t, dev, duetv1.Protocol_PROTOCOL_CWMP, "inform")
		sub, err := e.bus.ServeCommands(bus.CommandSubject(devicemodel.ProtocolCWMP, dev), "", func(ctx context.Context, cmd *duetv1.Command) *duetv1.CommandResult {
			return &duetv1.CommandResult{}
		})
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Stop()
		_, tj := e.createTask(t, dev, `{"operation":"get","paths":["Device.DeviceInfo."]}`)
		e.waitReason(t, tj.ID, "awaiting_session")
		_, tj2 := e.createTask(t, dev, `{"operation":"reboot","connection_request":false}`)
		// Still the connection request's session it waits for, or the
		// next inform: either is a reason.
		if got := e.task(t, tj2.ID); got.Waiting == nil && got.State == "queued" {
			e.waitReason(t, tj2.ID, "awaiting_")
		}
	})
}

// TestConnectionRequestSentAgainWhenNoSessionCame: a CPE that accepts a
// connection request but opens no session (one still closing its previous
// session drops it) is asked again, a bounded number of times; before, the
// tasks waited for its next periodic inform, an hour away (seen as a
// management policy stuck in "applying" in e2e).
func TestConnectionRequestSentAgainWhenNoSessionCame(t *testing.T) {
	e := newEnv(t)
	q, err := controller.NewTaskQueue(controller.TaskQueueOptions{Store: e.store, Bus: e.bus,
		SweepInterval: 50 * time.Millisecond, CommandTimeout: 5 * time.Second, ConnReqResendAfter: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(q.Stop)
	e.tasks = q
	srv := httptest.NewServer(api.New(api.Options{Store: e.store, Tasks: q}))
	t.Cleanup(srv.Close)
	e.api = srv
	e.startRegistry(t)
	startDesk(t, e)
	const dev = "00D09E-ONT-CRDROP"
	e.seen(t, dev, duetv1.Protocol_PROTOCOL_CWMP, "inform")
	var mu sync.Mutex
	crs := 0
	sub, err := e.bus.ServeCommands(bus.CommandSubject(devicemodel.ProtocolCWMP, dev), "", func(ctx context.Context, cmd *duetv1.Command) *duetv1.CommandResult {
		mu.Lock()
		crs++
		mu.Unlock()
		return &duetv1.CommandResult{} // accepted; no session follows
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Stop()
	count := func() int { mu.Lock(); defer mu.Unlock(); return crs }
	_, tj := e.createTask(t, dev, `{"operation":"get","paths":["Device.DeviceInfo."]}`)
	bustest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if n := count(); n < 2 {
			return fmt.Errorf("%d connection requests", n)
		}
		return nil
	})
	// Bounded: three accepted requests in all, then the task waits for an inform.
	bustest.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		if n := count(); n != 3 {
			return fmt.Errorf("%d connection requests, want 3", n)
		}
		return nil
	})
	time.Sleep(600 * time.Millisecond) // nothing more may come: a negative check needs a wait
	if n := count(); n != 3 {
		t.Fatalf("%d connection requests, want 3 at most", n)
	}
	// The session comes: work is handed out.
	if cmds := askWork(t, e.bus, dev, "s1", 0); len(cmds) != 1 || cmds[0].Id != tj.ID {
		t.Fatalf("session work %v", cmds)
	}
}

// TestConnectionRequestForTasksQueuedWhileOneIsOut: tasks queued while a
// connection request is still out for the device (accepted by the CPE,
// its answer not yet back) must get a request of their own once it is
// back. The session the first request brought may already have asked for
// its last work and ended before they were queued; before, the second
// wake-up was merged into the first and lost, and the tasks waited for the
// next periodic inform (seen in e2e as a management policy's Set stuck in
// "awaiting_session" after its Get). The resend of unanswered requests is
// off here (an hour), so only a request of their own can come in time.
func TestConnectionRequestForTasksQueuedWhileOneIsOut(t *testing.T) {
	e := newEnv(t)
	q, err := controller.NewTaskQueue(controller.TaskQueueOptions{Store: e.store, Bus: e.bus,
		SweepInterval: 50 * time.Millisecond, CommandTimeout: 5 * time.Second, ConnReqResendAfter: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(q.Stop)
	e.tasks = q
	srv := httptest.NewServer(api.New(api.Options{Store: e.store, Tasks: q}))
	t.Cleanup(srv.Close)
	e.api = srv
	e.startRegistry(t)
	startDesk(t, e)
	const dev = "00D09E-ONT-CRBUSY"
	e.seen(t, dev, duetv1.Protocol_PROTOCOL_CWMP, "inform")

	arrived := make(chan int, 10)
	release := make(chan struct{})
	var mu sync.Mutex
	crs := 0
	sub, err := e.bus.ServeCommands(bus.CommandSubject(devicemodel.ProtocolCWMP, dev), "", func(ctx context.Context, cmd *duetv1.Command) *duetv1.CommandResult {
		mu.Lock()
		crs++
		n := crs
		mu.Unlock()
		arrived <- n
		if n == 1 {
			<-release // the CPE said 200; the adapter's answer is slow to come back
		}
		return &duetv1.CommandResult{}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Stop()

	_, first := e.createTask(t, dev, `{"operation":"get","paths":["Device.DeviceInfo."]}`)
	select {
	case <-arrived:
	case <-time.After(20 * time.Second):
		t.Fatal("no connection request for the first task")
	}
	// The session the request brought runs the first task and ends before
	// the second task is queued.
	cmds := askWork(t, e.bus, dev, "s1", 0)
	if len(cmds) != 1 || cmds[0].Id != first.ID {
		t.Fatalf("s1 round 0: %v", cmds)
	}
	if cmds := askWork(t, e.bus, dev, "s1", 1, ok(cmds[0])); len(cmds) != 0 {
		t.Fatalf("s1 round 1: %v", cmds)
	}
	e.waitState(t, first.ID, "succeeded")
	_, second := e.createTask(t, dev, `{"operation":"get","paths":["Device.ManagementServer."]}`)
	close(release)

	select {
	case <-arrived:
	case <-time.After(20 * time.Second):
		t.Fatalf("no connection request for task %s, queued while the first request was out", second.ID)
	}
	if cmds := askWork(t, e.bus, dev, "s2", 0); len(cmds) != 1 || cmds[0].Id != second.ID {
		t.Fatalf("s2 round 0: %v", cmds)
	}
}
