package api_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// offlineReasons returns the reasons of a device's offline events.
func offlineReasons(t *testing.T, e *env, id string) []string {
	t.Helper()
	evs, _, err := e.store.FindDeviceEvents(context.Background(), store.EventFilter{DeviceID: id, Kind: "offline", Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, ev := range evs {
		var pe duetv1.Event
		if err := proto.Unmarshal(ev.Payload, &pe); err != nil {
			t.Fatal(err)
		}
		out = append(out, pe.GetOffline().GetReason())
	}
	return out
}

// TestPresenceSweeperTakesOverdueCPEsOffline: issue 11 §3 in the
// controller. A CPE past its learned PeriodicInformInterval × tolerance +
// grace (TR-181 or TR-098 path) gets one offline event with reason
// inform_overdue however often the sweep runs; one within its schedule,
// one whose interval is unknown (default deadline) and USP agents are left
// alone. A failed connection request takes a CPE offline at once only when
// its last scheduled inform is overdue too.
func TestPresenceSweeperTakesOverdueCPEsOffline(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	ctx := context.Background()
	now := time.Now().UTC()
	seen := now.Add(-10 * time.Second)
	var obs []store.Observation
	var params []store.Parameter
	add := func(id string, p devicemodel.Protocol, intervalPath, interval string) {
		obs = append(obs, store.Observation{EventID: bus.NewID(), Kind: "inform", Time: seen, Online: true, Payload: []byte{},
			Device: devicemodel.Device{ID: id, Protocol: p}})
		if intervalPath != "" {
			params = append(params, store.Parameter{DeviceID: id, Path: intervalPath, Value: interval, UpdatedAt: seen})
		}
	}
	const (
		overdue181 = "00D09E-P-OVERDUE181"
		overdue098 = "00D09E-P-OVERDUE098"
		onTime     = "00D09E-P-ONTIME"
		unknown    = "00D09E-P-UNKNOWN"
		crLate     = "00D09E-P-CRLATE"
		agent      = "os::00D09E-P-AGENT"
	)
	add(overdue181, devicemodel.ProtocolCWMP, "Device.ManagementServer.PeriodicInformInterval", "2")
	add(overdue098, devicemodel.ProtocolCWMP, "InternetGatewayDevice.ManagementServer.PeriodicInformInterval", "3")
	add(onTime, devicemodel.ProtocolCWMP, "Device.ManagementServer.PeriodicInformInterval", "100")
	add(unknown, devicemodel.ProtocolCWMP, "", "")
	add(crLate, devicemodel.ProtocolCWMP, "Device.ManagementServer.PeriodicInformInterval", "5")
	add(agent, devicemodel.ProtocolUSP, "", "")
	if err := e.store.ApplyObservations(ctx, obs); err != nil {
		t.Fatal(err)
	}
	if err := e.store.UpsertParameters(ctx, params); err != nil {
		t.Fatal(err)
	}
	p, err := controller.NewPresenceSweeper(controller.PresenceOptions{Store: e.store, Bus: e.bus, Tolerance: 2.5,
		Grace: time.Second, UnknownAfter: time.Hour, Interval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	// 10 s silent: 2 s × 2.5 + 1 s and 3 s × 2.5 + 1 s are past; 5 s × 2.5
	// + 1 s and 100 s are not. Swept twice before the registry applies:
	// still one event each.
	for range 2 {
		n, err := p.Sweep(ctx, now)
		if err != nil {
			t.Fatal(err)
		}
		if n != 2 {
			t.Fatalf("sweep found %d overdue, want 2", n)
		}
	}
	for _, id := range []string{overdue181, overdue098} {
		bustest.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
			if d, err := e.store.FindDeviceByID(ctx, id); err != nil || d.Online {
				return fmt.Errorf("%s online=%v err=%v", id, d.Online, err)
			}
			return nil
		})
		if r := offlineReasons(t, e, id); len(r) != 1 || r[0] != controller.OfflineInformOverdue {
			t.Fatalf("%s offline events %v", id, r)
		}
	}
	if n, err := p.Sweep(ctx, now); err != nil || n != 0 {
		t.Fatalf("sweep after the registry applied: %d %v", n, err)
	}
	// A connection request fails: the on-time CPE stays online (its last
	// inform is due in 90 s); crLate missed its 5 s inform (+1 s grace).
	refused := errors.New("connection request to http://192.0.2.7:7547/: dial tcp: connect: connection refused")
	p.ConnectionRequestFailed(ctx, onTime, refused)
	p.ConnectionRequestFailed(ctx, unknown, refused)
	p.ConnectionRequestFailed(ctx, crLate, refused)
	bustest.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		if d, err := e.store.FindDeviceByID(ctx, crLate); err != nil || d.Online {
			return fmt.Errorf("%s online=%v err=%v", crLate, d.Online, err)
		}
		return nil
	})
	if r := offlineReasons(t, e, crLate); len(r) != 1 || r[0] != "connection_request_failed: connection refused" {
		t.Fatalf("%s offline events %v", crLate, r)
	}
	for _, id := range []string{onTime, unknown, agent} {
		if d, err := e.store.FindDeviceByID(ctx, id); err != nil || !d.Online {
			t.Fatalf("%s online=%v err=%v, want online", id, d.Online, err)
		}
	}
}
