package api_test

import (
	"context"
	"testing"
	"time"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// TestAdapterDeskServesUSPRoutes: a USP adapter on a broker that starts
// learns from the controller which agents were last online over its
// transport and where they listen (issue 11 §2), page by page; offline
// agents, other transports and CWMP devices are not listed.
func TestAdapterDeskServesUSPRoutes(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	now := time.Now().UTC()
	var obs []store.Observation
	add := func(id string, p devicemodel.Protocol, transport, addr string, online bool) {
		kind := "online"
		if !online {
			kind = "offline"
		}
		obs = append(obs, store.Observation{EventID: bus.NewID(), Kind: kind, Time: now, Online: online, Payload: []byte{},
			Device: devicemodel.Device{ID: id, Protocol: p, Transport: transport, Address: addr}})
	}
	add("os::A1", devicemodel.ProtocolUSP, "mqtt", "usp/agent/a1", true)
	add("os::A2", devicemodel.ProtocolUSP, "mqtt", "usp/agent/a2", true)
	add("os::A3", devicemodel.ProtocolUSP, "mqtt", "usp/agent/a3", false)
	add("os::S1", devicemodel.ProtocolUSP, "stomp", "/queue/s1", true)
	add("os::W1", devicemodel.ProtocolUSP, "websocket", "127.0.0.1:5000", true)
	add("00D09E-X-1", devicemodel.ProtocolCWMP, "mqtt", "nonsense", true)
	if err := e.store.ApplyObservations(ctx, obs); err != nil {
		t.Fatal(err)
	}
	d, err := controller.StartAdapterDeskWith(controller.AdapterDeskOptions{Bus: e.bus, Tasks: e.tasks, Store: e.store})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Stop()
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var got []*duetv1.Route
	after := ""
	for pages := 0; ; pages++ {
		if pages > 3 {
			t.Fatal("paging does not end")
		}
		r, err := e.bus.AskRoutes(rctx, &duetv1.RoutesRequest{Transport: "mqtt", After: after, Limit: 1})
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, r.GetRoutes()...)
		if !r.GetMore() {
			break
		}
		after = r.GetRoutes()[len(r.GetRoutes())-1].GetDeviceId()
	}
	if len(got) != 2 || got[0].GetDeviceId() != "os::A1" || got[0].GetAddress() != "usp/agent/a1" || got[1].GetDeviceId() != "os::A2" {
		t.Fatalf("mqtt routes %v", got)
	}
	r, err := e.bus.AskRoutes(rctx, &duetv1.RoutesRequest{Transport: "stomp"})
	if err != nil || len(r.GetRoutes()) != 1 || r.GetRoutes()[0].GetAddress() != "/queue/s1" {
		t.Fatalf("stomp routes %v %v", r, err)
	}
	if r, err := e.bus.AskRoutes(rctx, &duetv1.RoutesRequest{Transport: "websocket"}); err != nil || len(r.GetRoutes()) != 0 {
		t.Fatalf("websocket routes %v %v", r, err)
	}
}
