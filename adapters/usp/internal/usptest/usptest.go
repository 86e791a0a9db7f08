// Package usptest holds the test harness the transport packages share: an
// Endpoint on an embedded NATS, an event watcher, command helpers and the
// pkg/sim/agent interop scenario. Only _test.go files import it; it is
// internal so nothing outside adapters/usp can.
package usptest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/duet-dm/duet/adapters/usp"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/devicemodel"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// Endpoint starts a bus and an Endpoint with a unique controller ID; both
// stop when the test ends.
func Endpoint(t testing.TB, mod ...func(*usp.Options)) (*usp.Endpoint, *bus.Bus) {
	t.Helper()
	b, _ := bustest.Start(t)
	o := usp.Options{EndpointID: "self::duet-" + bus.NewID()[:10], Bus: b, RequestTimeout: 10 * time.Second}
	for _, f := range mod {
		f(&o)
	}
	ep, err := usp.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = ep.Shutdown(ctx)
	})
	return ep, b
}

// Do sends a command to a device and returns its result.
func Do(b *bus.Bus, id string, cmd *duetv1.Command) (*duetv1.CommandResult, error) {
	cmd.DeviceId = id
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return b.Request(ctx, devicemodel.ProtocolUSP, cmd)
}

// MustGet runs a Get and returns path->value, failing on any error.
func MustGet(t testing.TB, b *bus.Bus, id string, paths ...string) map[string]string {
	t.Helper()
	res, err := Do(b, id, &duetv1.Command{Op: &duetv1.Command_Get{Get: &duetv1.GetRequest{Paths: paths}}})
	if err != nil {
		t.Fatalf("get %v: %v", paths, err)
	}
	if res.GetError() != nil {
		t.Fatalf("get %v: %v", paths, res.GetError())
	}
	out := map[string]string{}
	for _, p := range res.GetGet().GetParams() {
		out[p.GetPath()] = p.GetValue()
	}
	return out
}

// Events collects one device's events.
type Events struct {
	t    testing.TB
	ch   chan *nats.Msg
	mu   sync.Mutex
	seen []*duetv1.Event
}

// Watch subscribes to a device's events.
func Watch(t testing.TB, b *bus.Bus, id string) *Events {
	t.Helper()
	w := &Events{t: t, ch: make(chan *nats.Msg, 4096)}
	sub, err := b.Conn().ChanSubscribe(bus.EventFilter(devicemodel.ProtocolUSP, id, ""), w.ch)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return w
}

// Wait returns the next event of kind accepted by ok, failing after 15 s.
func (w *Events) Wait(kind string, ok func(*duetv1.Event) bool) *duetv1.Event {
	w.t.Helper()
	deadline := time.After(15 * time.Second)
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
			w.t.Fatalf("no %s event within 15s (seen %s)", kind, w.kinds())
			return nil
		}
	}
}

func (w *Events) kinds() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var k []string
	for _, ev := range w.seen {
		k = append(k, bus.EventKind(ev))
	}
	sort.Strings(k)
	return fmt.Sprint(k)
}

// Latencies summarises round-trip samples as p50/p99.
func Latencies(d []time.Duration) (p50, p99 time.Duration) {
	if len(d) == 0 {
		return 0, 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)/2], d[min(len(d)-1, len(d)*99/100)]
}

// BenchGet issues b.N Gets, round-robin over the agents, one at a time, and
// reports the full round trip (bus request -> adapter -> MTP -> agent and
// back) as p50/p99 in microseconds plus requests/s.
func BenchGet(b *testing.B, bs *bus.Bus, ids []string) {
	b.Helper()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		res, err := Do(bs, ids[i%len(ids)], &duetv1.Command{Op: &duetv1.Command_Get{Get: &duetv1.GetRequest{Paths: []string{"Device.DeviceInfo.SoftwareVersion"}}}})
		if err != nil || res.GetError() != nil || len(res.GetGet().GetParams()) != 1 {
			b.Fatalf("get: %v %v", res, err)
		}
		lat = append(lat, time.Since(t0))
	}
	elapsed := time.Since(start)
	b.StopTimer()
	p50, p99 := Latencies(lat)
	b.ReportMetric(float64(p50.Microseconds()), "p50-µs")
	b.ReportMetric(float64(p99.Microseconds()), "p99-µs")
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
	b.ReportMetric(float64(len(ids)), "agents")
}

// Discard is a logger for benchmarks.
var Discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// Count returns how many events of kind arrived so far, those already
// returned by Wait included.
func (w *Events) Count(kind string) int {
	w.t.Helper()
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
			continue
		default:
		}
		break
	}
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

// MetricValue reads a counter or gauge of the default registry (0 when
// absent); labels must match exactly.
func MetricValue(t testing.TB, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, l := range m.GetLabel() {
				if labels[l.GetName()] != l.GetValue() {
					continue metrics
				}
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}
