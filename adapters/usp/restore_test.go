package usp

import (
	"context"
	"testing"
	"time"

	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// TestRestoreRoutesProbesAgents: an adapter that starts asks the controller
// for the agents last online over its MTP (issue 11 §2), serves commands
// for each, and probes them: the one that answers is announced online, the
// silent one is taken offline. Pages are followed.
func TestRestoreRoutesProbesAgents(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.RequestTimeout = 500 * time.Millisecond })
	alive := f.agent("os::00D09E-ALIVE")
	dead := f.agent("os::00D09E-DEAD")
	dead.Silent.Store(true)
	// Connected already (it spoke first): its own address wins over the
	// registry's.
	live := f.agent("os::00D09E-LIVE")
	wLive := watchEvents(t, f.bus, live.ID)
	f.connect(live)
	wLive.wait("online", nil)
	wAlive := watchEvents(t, f.bus, alive.ID)
	wDead := watchEvents(t, f.bus, dead.ID)
	asked := make(chan *duetv1.RoutesRequest, 8)
	sub, err := f.bus.ServeRoutes("", func(_ context.Context, req *duetv1.RoutesRequest) (*duetv1.Routes, error) {
		asked <- req
		if req.GetAfter() == "" {
			return &duetv1.Routes{Routes: []*duetv1.Route{{DeviceId: alive.ID, Address: alive.ID}}, More: true}, nil
		}
		return &duetv1.Routes{Routes: []*duetv1.Route{{DeviceId: dead.ID, Address: dead.ID}, {DeviceId: live.ID, Address: "stale/topic"},
			{DeviceId: "bad id", Address: "x"}}}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Stop)
	f.ep.RestoreRoutes(f.mtp)
	if r := <-asked; r.GetTransport() != "loop" || r.GetAfter() != "" {
		t.Fatalf("first request %v", r)
	}
	if r := <-asked; r.GetAfter() != alive.ID {
		t.Fatalf("second request %v", r)
	}
	if r := wAlive.wait("online", nil).GetReachability(); r.GetTransport() != "loop" || r.GetAddress() != alive.ID {
		t.Fatalf("reachability %v", r)
	}
	res := f.mustDo(alive.ID, &duetv1.Command{Op: &duetv1.Command_Get{Get: &duetv1.GetRequest{Paths: []string{"Device.DeviceInfo.ModelName"}}}})
	if res.GetGet().GetParams()[0].GetValue() != "TA-1" {
		t.Fatal(res)
	}
	if why := wDead.wait("offline", nil).GetOffline().GetReason(); why == "" {
		t.Fatal("offline without a reason")
	}
	if n := wDead.count("online"); n != 0 {
		t.Fatalf("silent agent announced online %d times", n)
	}
	if f.ep.session(dead.ID) != nil {
		t.Fatal("silent agent still has a session")
	}
	f.ep.mu.Lock()
	addr := f.ep.agents[live.ID].addr.Reply
	f.ep.mu.Unlock()
	if addr != live.ID {
		t.Fatalf("a restored route replaced a live session's address with %q", addr)
	}
	f.mustDo(live.ID, &duetv1.Command{Op: &duetv1.Command_Get{Get: &duetv1.GetRequest{Paths: []string{"Device.DeviceInfo.ModelName"}}}})
}
