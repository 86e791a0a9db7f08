package usp

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/duet-dm/duet/adapters/usp/internal/testagent"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/devicemodel"
	pkgusp "github.com/duet-dm/duet/pkg/usp"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// loopMTP is an in-process MTP: records to an agent are handed straight to
// it. It exercises everything above the transport; the transports have
// their own tests against real brokers.
type loopMTP struct {
	mu     sync.Mutex
	agents map[string]*testagent.Agent
}

func (m *loopMTP) Name() string { return "loop" }

func (m *loopMTP) Send(_ context.Context, to Address, record []byte) error {
	m.mu.Lock()
	a := m.agents[to.Reply]
	m.mu.Unlock()
	if a == nil {
		return errors.New("no such agent")
	}
	a.Handle(record)
	return nil
}

type fixture struct {
	t   testing.TB
	ep  *Endpoint
	bus *bus.Bus
	mtp *loopMTP
}

func newFixture(t testing.TB, mod ...func(*Options)) *fixture {
	t.Helper()
	b, _ := bustest.Start(t)
	o := Options{EndpointID: "self::duet-test", Bus: b, RequestTimeout: 5 * time.Second, AdapterID: "test"}
	for _, f := range mod {
		f(&o)
	}
	ep, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := ep.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return &fixture{t: t, ep: ep, bus: b, mtp: &loopMTP{agents: map[string]*testagent.Agent{}}}
}

// agent creates an agent wired to the endpoint through the loop MTP; it is
// not connected yet.
func (f *fixture) agent(id string) *testagent.Agent {
	a := testagent.New(id, f.ep.ID())
	a.Send = func(rec []byte) error { return f.ep.HandleRecord(f.mtp, Address{Reply: id}, rec) }
	f.mtp.mu.Lock()
	f.mtp.agents[id] = a
	f.mtp.mu.Unlock()
	return a
}

func (f *fixture) connect(a *testagent.Agent) {
	f.t.Helper()
	rec, err := pkgusp.MarshalWebSocketConnect(a.ID, f.ep.ID())
	if err != nil {
		f.t.Fatal(err)
	}
	if err := a.Send(rec); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) disconnect(a *testagent.Agent) {
	f.t.Helper()
	rec, err := pkgusp.MarshalDisconnect(a.ID, f.ep.ID(), "test", 0)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := a.Send(rec); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) do(id string, cmd *duetv1.Command) (*duetv1.CommandResult, error) {
	cmd.DeviceId = id
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return f.bus.Request(ctx, devicemodel.ProtocolUSP, cmd)
}

// mustDo runs a command and fails the test on a transport error or a
// result error.
func (f *fixture) mustDo(id string, cmd *duetv1.Command) *duetv1.CommandResult {
	f.t.Helper()
	res, err := f.do(id, cmd)
	if err != nil {
		f.t.Fatalf("command %v: %v", cmd.GetOp(), err)
	}
	if res.GetError() != nil {
		f.t.Fatalf("command %v: result error %v", cmd.GetOp(), res.GetError())
	}
	return res
}

// eventWatch collects the events of one device from the bus.
type eventWatch struct {
	t  testing.TB
	ch chan *nats.Msg
	mu sync.Mutex
	// all events seen so far, in order
	seen []*duetv1.Event
}

func watchEvents(t testing.TB, b *bus.Bus, eid string) *eventWatch {
	t.Helper()
	w := &eventWatch{t: t, ch: make(chan *nats.Msg, 4096)}
	sub, err := b.Conn().ChanSubscribe(bus.EventFilter(devicemodel.ProtocolUSP, eid, ""), w.ch)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return w
}

// next waits for the next event of kind matching ok.
func (w *eventWatch) wait(kind string, ok func(*duetv1.Event) bool) *duetv1.Event {
	w.t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case m := <-w.ch:
			ev := &duetv1.Event{}
			if err := proto.Unmarshal(m.Data, ev); err != nil {
				w.t.Fatalf("bad event: %v", err)
			}
			w.mu.Lock()
			w.seen = append(w.seen, ev)
			w.mu.Unlock()
			if bus.EventKind(ev) == kind && (ok == nil || ok(ev)) {
				return ev
			}
		case <-deadline:
			w.t.Fatalf("no %s event within 10s", kind)
			return nil
		}
	}
}

func (w *eventWatch) count(kind string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, ev := range w.seen {
		if bus.EventKind(ev) == kind {
			n++
		}
	}
	return n
}

// metricValue reads a counter or gauge from the default registry.
func metricValue(t testing.TB, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for k, v := range labels {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == k && lp.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

func checkFor(t testing.TB, what string, fn func() bool) {
	t.Helper()
	bustest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if fn() {
			return nil
		}
		return fmt.Errorf("%s", what)
	})
}
