package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/controller/api"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

type env struct {
	bus   *bus.Bus
	store *store.Store
	tasks *controller.TaskQueue
	api   *httptest.Server
	token string // an admin token
}

func newEnv(t *testing.T) *env {
	t.Helper()
	b, _ := bustest.Start(t)
	s, _ := storetest.Open(t)
	e := &env{bus: b, store: s}
	e.startTasks(t)
	srv := httptest.NewServer(api.New(api.Options{Store: s, Tasks: e.tasks}))
	t.Cleanup(srv.Close)
	_, tok, err := s.CreateToken(context.Background(), "test admin", store.RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	e.api, e.token = srv, tok
	return e
}

// startTasks (re)starts the task queue, as a controller start does.
func (e *env) startTasks(t *testing.T) *controller.TaskQueue {
	t.Helper()
	q, err := controller.NewTaskQueue(controller.TaskQueueOptions{Store: e.store, Bus: e.bus,
		SweepInterval: 100 * time.Millisecond, CommandTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(q.Stop)
	if e.tasks == nil {
		e.tasks = q
	}
	return q
}

// get is http.Get on the API with the admin token.
func (e *env) get(path string) (*http.Response, error) {
	return e.doAs(e.token, "GET", path, "")
}

// doAs sends a request with the given bearer token ("" for none).
func (e *env) doAs(token, method, path, body string) (*http.Response, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.api.URL+path, rd)
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	return http.DefaultClient.Do(req)
}

func (e *env) startRegistry(t *testing.T) *controller.Registry {
	t.Helper()
	r, err := controller.NewRegistry(context.Background(), controller.RegistryOptions{Bus: e.bus, Store: e.store, Tasks: e.tasks})
	if err != nil {
		t.Fatal(err)
	}
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

func informEvent(id, sw string) *duetv1.Event {
	return &duetv1.Event{
		Device: &duetv1.DeviceIdentity{Id: id, Protocol: duetv1.Protocol_PROTOCOL_CWMP, Manufacturer: "Acme",
			Oui: "00D09E", ProductClass: "ONT", SerialNumber: "SN." + id, SoftwareVersion: sw},
		Reachability: &duetv1.Reachability{Transport: "cwmp", Address: "192.0.2.7:50000"},
		Kind:         &duetv1.Event_Inform{Inform: &duetv1.Inform{}},
	}
}

func getDevice(t *testing.T, e *env, id string) (int, api.DeviceJSON) {
	t.Helper()
	res, err := e.get("/api/v1/devices/" + url.PathEscape(id))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var d api.DeviceJSON
	_ = json.NewDecoder(res.Body).Decode(&d)
	return res.StatusCode, d
}

func TestEventShowsUpInAPI(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	id := "00D09E-ONT-SN%2E1" // CWMP IDs carry '%' and go through subjects and URLs
	if err := e.bus.PublishEvent(context.Background(), informEvent(id, "1.2.3")); err != nil {
		t.Fatal(err)
	}
	bustest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		code, d := getDevice(t, e, id)
		if code != http.StatusOK {
			return fmt.Errorf("status %d", code)
		}
		if d.SoftwareVersion != "1.2.3" || d.Manufacturer != "Acme" || !d.Online || d.Address != "192.0.2.7:50000" {
			return fmt.Errorf("device %+v", d)
		}
		return nil
	})
	if code, _ := getDevice(t, e, "unknown"); code != http.StatusNotFound {
		t.Fatalf("unknown device: %d", code)
	}
}

func TestGarbageIsCountedAndDropped(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	before := counterValue(t, "duet_controller_events_invalid_total", "undecodable")
	beforeInvalid := counterValue(t, "duet_controller_events_invalid_total", "invalid")
	ctx := context.Background()
	// Not protobuf at all, straight onto an event subject.
	if _, err := e.bus.JetStream().Publish(ctx, "duet.evt.cwmp.dev-garbage.inform", []byte{0xff, 0x01, 0x02, 0x03}); err != nil {
		t.Fatal(err)
	}
	// Valid protobuf whose device does not match its subject.
	ev := informEvent("dev-a", "1")
	ev.Id = bus.NewID()
	if _, err := e.bus.JetStream().Publish(ctx, bus.EventSubject("cwmp", "dev-b", "inform"), mustMarshal(t, ev)); err != nil {
		t.Fatal(err)
	}
	// And a good event behind them, which must still be applied.
	if err := e.bus.PublishEvent(ctx, informEvent("dev-good", "9")); err != nil {
		t.Fatal(err)
	}
	bustest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if code, _ := getDevice(t, e, "dev-good"); code != http.StatusOK {
			return fmt.Errorf("good event behind garbage not applied (%d)", code)
		}
		return nil
	})
	if got := counterValue(t, "duet_controller_events_invalid_total", "undecodable") - before; got != 1 {
		t.Fatalf("undecodable counted %v times, want 1", got)
	}
	if got := counterValue(t, "duet_controller_events_invalid_total", "invalid") - beforeInvalid; got != 1 {
		t.Fatalf("invalid counted %v times, want 1", got)
	}
	for _, id := range []string{"dev-garbage", "dev-a", "dev-b"} {
		if code, _ := getDevice(t, e, id); code != http.StatusNotFound {
			t.Fatalf("%s was applied from a bad event", id)
		}
	}
	// Terminated, not pending redelivery: the consumer has nothing left.
	cons, err := e.bus.JetStream().Consumer(ctx, bus.EventStream, "duet-controller")
	if err != nil {
		t.Fatal(err)
	}
	bustest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
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

func TestNothingLostOrDoubledAcrossRestart(t *testing.T) {
	e := newEnv(t)
	r := e.startRegistry(t)
	ctx := context.Background()
	const id = "dev-restart"
	publish := func(n int) {
		for i := 0; i < n; i++ {
			if err := e.bus.PublishEvent(ctx, informEvent(id, fmt.Sprint(i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	publish(20)
	waitEvents(t, e, id, 20)
	r.Stop()
	publish(30) // while the controller is down
	r2 := e.startRegistry(t)
	waitEvents(t, e, id, 50)
	r2.Stop()
	// Redelivery of everything (a controller that crashed before acking)
	// is simulated by a fresh consumer replaying the whole stream.
	r3, err := controller.NewRegistry(ctx, controller.RegistryOptions{Bus: e.bus, Store: e.store, Durable: "replay-all"})
	if err != nil {
		t.Fatal(err)
	}
	r3.Start()
	defer r3.Stop()
	cons, _ := e.bus.JetStream().Consumer(ctx, bus.EventStream, "replay-all")
	bustest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		info, err := cons.Info(ctx)
		if err != nil {
			return err
		}
		if info.AckFloor.Stream < 50 {
			return fmt.Errorf("replay acked up to %d", info.AckFloor.Stream)
		}
		return nil
	})
	if n, _ := e.store.CountDeviceEvents(ctx, id); n != 50 {
		t.Fatalf("%d events after replay, want exactly 50", n)
	}
	_, d := getDevice(t, e, id)
	if d.SoftwareVersion != "29" {
		t.Fatalf("software version %q, want the last published (29)", d.SoftwareVersion)
	}
}

func waitEvents(t *testing.T, e *env, id string, want int) {
	t.Helper()
	bustest.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		n, err := e.store.CountDeviceEvents(context.Background(), id)
		if err != nil {
			return err
		}
		if n != want {
			return fmt.Errorf("%d events applied, want %d", n, want)
		}
		return nil
	})
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func marshal(m proto.Message) ([]byte, error) { return proto.Marshal(m) }

// A failed connection request is history, not a sign of life: last_seen
// and online stay what the device itself last said.
func TestConnectionRequestEventIsNotPresence(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	ctx := context.Background()
	const id = "00D09E-ONT-CRX"
	off := informEvent(id, "1")
	off.Kind = &duetv1.Event_Offline{Offline: &duetv1.Offline{Reason: "session end"}}
	if err := e.bus.PublishEvent(ctx, informEvent(id, "1")); err != nil {
		t.Fatal(err)
	}
	if err := e.bus.PublishEvent(ctx, off); err != nil {
		t.Fatal(err)
	}
	waitEvents(t, e, id, 2)
	_, before := getDevice(t, e, id)
	cr := &duetv1.Event{Device: &duetv1.DeviceIdentity{Id: id, Protocol: duetv1.Protocol_PROTOCOL_CWMP},
		Kind: &duetv1.Event_ConnectionRequest{ConnectionRequest: &duetv1.ConnectionRequestOutcome{Accepted: false, HttpStatus: 0}}}
	if err := e.bus.PublishEvent(ctx, cr); err != nil {
		t.Fatal(err)
	}
	waitEvents(t, e, id, 3)
	_, after := getDevice(t, e, id)
	if after.Online || !after.LastSeen.Equal(before.LastSeen) {
		t.Fatalf("connection request changed presence: online %v, last_seen %s -> %s", after.Online, before.LastSeen, after.LastSeen)
	}
}

// counterValue reads a counter of the default registry by name and, for
// a counter with a label, its one label's value: the controller's
// counters are its own, read here as Prometheus would.
func counterValue(t *testing.T, name, label string) float64 {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label == "" || (len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == label) {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}
