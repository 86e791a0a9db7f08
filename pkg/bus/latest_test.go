package bus_test

import (
	"context"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// TestLatestOnlyKindsKeepOnePerDevice (issue 12 item 5): the stream keeps
// only each device's newest event of a latest-only kind, and every event
// of the other kinds.
func TestLatestOnlyKindsKeepOnePerDevice(t *testing.T) {
	srv := bustest.StartServer(t)
	ctx := context.Background()
	b, err := bus.Connect(ctx, bus.Options{URL: srv.URL(), Name: t.Name(), DefaultTimeout: 10 * time.Second,
		LatestOnlyKinds: []string{"inform", "periodic"}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	dev := func(id string) *duetv1.DeviceIdentity {
		return &duetv1.DeviceIdentity{Id: id, Protocol: duetv1.Protocol_PROTOCOL_CWMP}
	}
	for range 5 {
		for _, id := range []string{"00D09E-A-1", "00D09E-A-2"} {
			if err := b.PublishEvents(ctx,
				&duetv1.Event{Device: dev(id), Kind: &duetv1.Event_Inform{Inform: &duetv1.Inform{}}},
				&duetv1.Event{Device: dev(id), Kind: &duetv1.Event_Periodic{Periodic: &duetv1.Periodic{}}},
				&duetv1.Event{Device: dev(id), Kind: &duetv1.Event_Boot{Boot: &duetv1.Boot{}}},
			); err != nil {
				t.Fatal(err)
			}
		}
	}
	s, err := b.JetStream().Stream(ctx, bus.EventStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// 2 devices x (1 inform + 1 periodic + 5 boots).
	if info.State.Msgs != 14 {
		t.Fatalf("stream holds %d events, want 14", info.State.Msgs)
	}
}
