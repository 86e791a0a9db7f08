package controller_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// devicesGauge reads duet_devices from the default registry.
func devicesGauge(t *testing.T) map[string]float64 {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "duet_devices" && mf.GetName() != "duet_tasks_open" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var p, s string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "protocol":
					p = l.GetValue()
				case "state":
					s = l.GetValue()
				}
			}
			if mf.GetName() == "duet_tasks_open" {
				p = "tasks"
			}
			out[p+"/"+s] = m.GetGauge().GetValue()
		}
	}
	return out
}

// duet_devices{protocol,state} counts the registry, follows it, and is
// withdrawn by a replica that stops (so sum() over replicas stays right).
func TestDeviceGauge(t *testing.T) {
	st, _ := storetest.Open(t)
	ctx := context.Background()
	now := time.Now()
	obs := []store.Observation{
		{EventID: "g1", Kind: "inform", Time: now, Payload: []byte("x"), Online: true, Device: devicemodel.Device{ID: "gauge-cpe-1", Protocol: devicemodel.ProtocolCWMP}},
		{EventID: "g2", Kind: "inform", Time: now, Payload: []byte("x"), Online: true, Device: devicemodel.Device{ID: "gauge-cpe-2", Protocol: devicemodel.ProtocolCWMP}},
		{EventID: "g3", Kind: "inform", Time: now, Payload: []byte("x"), Device: devicemodel.Device{ID: "gauge-agent-1", Protocol: devicemodel.ProtocolUSP}},
	}
	if err := st.ApplyObservations(ctx, obs); err != nil {
		t.Fatal(err)
	}
	g := controller.StartDeviceGauge(st, 50*time.Millisecond, nil)
	defer g.Stop()
	want := func(w map[string]float64) {
		bustest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
			got := devicesGauge(t)
			for k, v := range w {
				if got[k] != v {
					return fmt.Errorf("duet_devices %v, want %v", got, w)
				}
			}
			return nil
		})
	}
	want(map[string]float64{"cwmp/online": 2, "cwmp/offline": 0, "usp/online": 0, "usp/offline": 1, "tasks/queued": 0, "tasks/dispatched": 0})
	// A task for the offline agent waits: the queue is one deep.
	if _, err := st.CreateTask(ctx, store.Task{ID: "task-gauge-1", DeviceID: "gauge-agent-1", Operation: "reboot", Request: []byte(`{}`), Command: []byte("cmd"), NonIdempotent: true}); err != nil {
		t.Fatal(err)
	}
	want(map[string]float64{"tasks/queued": 1})
	if err := st.ApplyObservations(ctx, []store.Observation{{EventID: "g4", Kind: "inform", Time: now.Add(time.Second), Payload: []byte("x"), Online: true,
		Device: devicemodel.Device{ID: "gauge-agent-1", Protocol: devicemodel.ProtocolUSP}}}); err != nil {
		t.Fatal(err)
	}
	want(map[string]float64{"cwmp/online": 2, "usp/online": 1, "usp/offline": 0})
	// Its reboot accepted, the agent is rebooting until it is back.
	if _, ok, err := st.ClaimNextTask(ctx, "gauge-agent-1", "usp", ""); err != nil || !ok {
		t.Fatalf("claim: %v %v", ok, err)
	}
	if _, ok, err := st.AwaitTask(ctx, "task-gauge-1", store.SubStateAwaitingBoot, "k", now.Add(time.Hour), nil); err != nil || !ok {
		t.Fatalf("await: %v %v", ok, err)
	}
	want(map[string]float64{"usp/online": 0, "usp/rebooting": 1, "tasks/dispatched": 0, "tasks/awaiting": 1})
	g.Stop()
	if got := devicesGauge(t); len(got) != 0 {
		t.Fatalf("a stopped gauge still reports %v", got)
	}
}
