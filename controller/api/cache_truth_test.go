package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/controller/api"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/store"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// TestParamSearchSaysWhatItCannotJudge (issue 12 item 6): a param
// condition on a path the cache holds for no device matches nothing and
// says so; with a path cached for some devices, the rest are counted as
// unknown; the other filters narrow the count.
func TestParamSearchSaysWhatItCannotJudge(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	ctx := context.Background()
	for i := range 4 {
		p := duetv1.Protocol_PROTOCOL_CWMP
		if i == 3 {
			p = duetv1.Protocol_PROTOCOL_USP
		}
		e.seen(t, fmt.Sprintf("unk-%d", i), p, "inform")
	}
	for _, id := range []string{"unk-0", "unk-1"} {
		if err := e.store.UpsertParameters(ctx, []store.Parameter{{DeviceID: id, Path: "Device.X.Read", Value: "1", UpdatedAt: time.Now()}}); err != nil {
			t.Fatal(err)
		}
	}
	list := func(q string) api.DeviceList {
		t.Helper()
		code, body := e.do(t, "GET", "/api/v1/devices?"+q, "")
		var l api.DeviceList
		if err := json.Unmarshal([]byte(body), &l); err != nil || code != 200 {
			t.Fatalf("%s: %d %s", q, code, body)
		}
		return l
	}
	never := list("param=" + url.QueryEscape("Device.X.NeverRead:eq:1"))
	if len(never.Devices) != 0 || never.Unknown["Device.X.NeverRead"] != 4 {
		t.Fatalf("a never-read path: %+v, want no device and unknown 4", never)
	}
	some := list("param=" + url.QueryEscape("Device.X.Read:ne:0") + "&param=" + url.QueryEscape("Device.X.NeverRead:ne:0") + "&protocol=cwmp")
	if some.Unknown["Device.X.Read"] != 1 || some.Unknown["Device.X.NeverRead"] != 3 {
		t.Fatalf("unknown counts %v, want Device.X.Read 1 (unk-2), Device.X.NeverRead 3", some.Unknown)
	}
	if plain := list("protocol=cwmp"); plain.Unknown != nil {
		t.Fatalf("no param condition, yet unknown %v", plain.Unknown)
	}
}

// TestRoutineEventsAreCountedNotStored (issue 12 item 5): with Informs and
// periodic events kept for no time, they leave no history row but count on
// the device, once each even when delivered twice; a boot is stored.
func TestRoutineEventsAreCountedNotStored(t *testing.T) {
	e := newEnv(t)
	kinds, err := controller.ParseHistoryKinds(controller.DefaultHistoryKinds)
	if err != nil {
		t.Fatal(err)
	}
	r, err := controller.NewRegistry(context.Background(), controller.RegistryOptions{Bus: e.bus, Store: e.store, Tasks: e.tasks,
		History: controller.HistoryOptions{Retention: time.Hour, ByKind: kinds}})
	if err != nil {
		t.Fatal(err)
	}
	r.Start()
	t.Cleanup(r.Stop)
	ctx := context.Background()
	dev := "00D09E-ROUTINE-1"
	var last *duetv1.Event
	for range 3 {
		inf := informEvent(dev, "1")
		per := informEvent(dev, "1")
		per.Kind = &duetv1.Event_Periodic{Periodic: &duetv1.Periodic{}}
		if err := e.bus.PublishEvents(ctx, inf, per); err != nil {
			t.Fatal(err)
		}
		last = inf
	}
	boot := informEvent(dev, "1")
	boot.Kind = &duetv1.Event_Boot{Boot: &duetv1.Boot{}}
	if err := e.bus.PublishEvent(ctx, boot); err != nil {
		t.Fatal(err)
	}
	waitEvents(t, e, dev, 1)
	_, d := getDevice(t, e, dev)
	if d.InformsTotal != 3 || d.LastInformAt == nil || !d.LastInformAt.Equal(last.Time.AsTime().Truncate(time.Microsecond)) {
		t.Fatalf("device counters: informs_total %d, last_inform_at %v; want 3, %v", d.InformsTotal, d.LastInformAt, last.Time.AsTime())
	}
	// The newest Inform again (a redelivery with a new stream message):
	// not counted twice.
	again := informEvent(dev, "1")
	again.Time = last.Time
	if err := e.bus.PublishEvent(ctx, again); err != nil {
		t.Fatal(err)
	}
	marker := informEvent(dev, "1")
	marker.Kind = &duetv1.Event_Boot{Boot: &duetv1.Boot{}}
	if err := e.bus.PublishEvent(ctx, marker); err != nil {
		t.Fatal(err)
	}
	waitEvents(t, e, dev, 2)
	if _, d := getDevice(t, e, dev); d.InformsTotal != 3 {
		t.Fatalf("informs_total %d after a replayed Inform, want 3", d.InformsTotal)
	}
	if n, _ := e.store.CountDeviceEvents(ctx, dev); n != 2 {
		t.Fatalf("%d history rows, want the 2 boots only", n)
	}
}

func TestParseHistoryKinds(t *testing.T) {
	got, err := controller.ParseHistoryKinds(" inform=0, online=24h ,")
	if err != nil || len(got) != 2 || got["inform"] != 0 || got["online"] != 24*time.Hour {
		t.Fatalf("%v %v", got, err)
	}
	for in, want := range map[string]string{
		"informs=0":          "not an event kind",
		"inform":             "kind=duration",
		"inform=soon":        "duration",
		"inform=-1h":         "duration",
		"inform=0,inform=1h": "twice",
	} {
		if _, err := controller.ParseHistoryKinds(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error with %q", in, err, want)
		}
	}
	if got, err := controller.ParseHistoryKinds("none"); err != nil || len(got) != 0 {
		t.Errorf("none: %v %v", got, err)
	}
	if got, err := controller.ParseEventKinds("none"); err != nil || len(got) != 0 {
		t.Errorf("none: %v %v", got, err)
	}
	if _, err := controller.ParseEventKinds("inform,nope"); err == nil {
		t.Error("unknown kind accepted")
	}
}

// TestHistoryRetentionPerKind: each kind goes after its own retention.
func TestHistoryRetentionPerKind(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	ctx := context.Background()
	dev := "00D09E-RET-1"
	old := time.Now().Add(-3 * time.Hour)
	for _, kind := range []string{"online", "boot"} {
		ev := informEvent(dev, "1")
		ev.Time = timestamppb.New(old)
		if kind == "online" {
			ev.Kind = &duetv1.Event_Online{Online: &duetv1.Online{}}
		} else {
			ev.Kind = &duetv1.Event_Boot{Boot: &duetv1.Boot{}}
		}
		if err := e.bus.PublishEvent(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	waitEvents(t, e, dev, 2)
	p := controller.StartHistoryPrunerWith(e.store, controller.HistoryOptions{Retention: 24 * time.Hour,
		ByKind: map[string]time.Duration{"online": time.Hour}}, nil)
	defer p.Stop()
	bustest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		evs, _, err := e.store.FindDeviceEvents(ctx, store.EventFilter{DeviceID: dev})
		if err != nil {
			return err
		}
		if len(evs) != 1 || evs[0].Kind != "boot" {
			return fmt.Errorf("%d events left, want the boot only", len(evs))
		}
		return nil
	})
}
