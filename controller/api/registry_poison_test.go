package api_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// publishRaw puts an event on its subject as a forged or buggy publisher
// would, past the adapters' checks (bus.SanitizeEvent).
func publishRaw(t *testing.T, e *env, ev *duetv1.Event) string {
	t.Helper()
	ev.Id = bus.NewID()
	p, _ := bus.ProtocolOf(ev.Device.Protocol)
	subj := bus.EventSubject(p, ev.Device.Id, bus.EventKind(ev))
	if _, err := e.bus.JetStream().PublishMsg(context.Background(), &nats.Msg{Subject: subj, Data: mustMarshal(t, ev)}); err != nil {
		t.Fatal(err)
	}
	return subj
}

// TestPoisonEventsDoNotStopTheFleet is issue 15 §1 on the real bus: a USP
// agent's online event with SoftwareVersion "v1\x00nul" and a CPE's inform
// with a 6,000-character Manufacturer ("index row size 6040 exceeds btree
// maximum 2704"), in one batch with other devices' events. Before the
// change the whole batch failed and was redelivered forever, and no other
// device was ever applied. Now the other devices are applied, the NUL is
// stored as U+FFFD, the event PostgreSQL cannot index is moved to
// DUET_DEADLETTER with its subject after MaxDeliveries, and events after
// it are applied too.
func TestPoisonEventsDoNotStopTheFleet(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	before := counterValue(t, "duet_controller_events_dead_lettered_total", "")
	publishRaw(t, e, informEvent("good-1", "1"))
	publishRaw(t, e, &duetv1.Event{
		Device: &duetv1.DeviceIdentity{Id: "os::poison-nul", Protocol: duetv1.Protocol_PROTOCOL_USP, SoftwareVersion: "v1\x00nul"},
		Kind:   &duetv1.Event_Online{Online: &duetv1.Online{}},
	})
	publishRaw(t, e, informEvent("good-2", "2"))
	long := informEvent("poison-long", "3")
	// Incompressible, or PostgreSQL's compression fits it in the index.
	var b strings.Builder
	for b.Len() < 6000 {
		b.WriteString(bus.NewID())
	}
	long.Device.Manufacturer = b.String()[:6000]
	longSubject := publishRaw(t, e, long)
	publishRaw(t, e, informEvent("good-3", "3"))

	// Started after the events are in: they come in one batch.
	r, err := controller.NewRegistry(ctx, controller.RegistryOptions{Bus: e.bus, Store: e.store, Tasks: e.tasks, MaxDeliveries: 2})
	if err != nil {
		t.Fatal(err)
	}
	r.Start()
	t.Cleanup(r.Stop)

	bustest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		for _, id := range []string{"good-1", "good-2", "good-3"} {
			if code, _ := getDevice(t, e, id); code != http.StatusOK {
				return fmt.Errorf("%s not applied (%d)", id, code)
			}
		}
		return nil
	})
	if code, d := getDevice(t, e, "os::poison-nul"); code != http.StatusOK || d.SoftwareVersion != "v1\uFFFDnul" {
		t.Errorf("NUL device: %d %q, want it applied with U+FFFD", code, d.SoftwareVersion)
	}

	dl, err := e.bus.JetStream().Stream(ctx, bus.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	var msg *jetstream.RawStreamMsg
	bustest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		msg, err = dl.GetLastMsgForSubject(ctx, bus.DeadLetterSubject(longSubject))
		return err
	})
	if got := msg.Header.Get(bus.HeaderDeadSubject); got != longSubject {
		t.Errorf("dead letter subject header %q, want %q", got, longSubject)
	}
	if !strings.Contains(msg.Header.Get(bus.HeaderDeadReason), "index row size") {
		t.Errorf("dead letter reason %q", msg.Header.Get(bus.HeaderDeadReason))
	}
	if n := counterValue(t, "duet_controller_events_dead_lettered_total", "") - before; n != 1 {
		t.Errorf("dead letters counted %v, want 1", n)
	}
	if code, _ := getDevice(t, e, "poison-long"); code != http.StatusNotFound {
		t.Errorf("poison-long applied (%d)", code)
	}

	// The ack floor moved: later events are applied and nothing is pending.
	publishRaw(t, e, informEvent("good-4", "4"))
	cons, err := e.bus.JetStream().Consumer(ctx, bus.EventStream, "duet-controller")
	if err != nil {
		t.Fatal(err)
	}
	bustest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if code, _ := getDevice(t, e, "good-4"); code != http.StatusOK {
			return fmt.Errorf("good-4 not applied (%d)", code)
		}
		info, err := cons.Info(ctx)
		if err != nil {
			return err
		}
		if info.NumAckPending != 0 || info.NumPending != 0 {
			return fmt.Errorf("consumer still has %d unacked, %d pending", info.NumAckPending, info.NumPending)
		}
		return nil
	})
}
