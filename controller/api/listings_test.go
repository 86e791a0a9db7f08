package api_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/store"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// TestObjectNotificationsKeepListings: a USP ObjectCreation caches the new
// instance's unique keys and keeps the table's complete listing (now of
// its instances, not every value); an ObjectDeletion removes the instance
// from the cache (issue 12 §3).
func TestObjectNotificationsKeepListings(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	ctx := context.Background()
	const id, table = "os::00D09E-LIST1", "Device.NAT.PortMapping."
	usp := func(ev *duetv1.Event) *duetv1.Event {
		ev.Device = &duetv1.DeviceIdentity{Id: id, Protocol: duetv1.Protocol_PROTOCOL_USP, SerialNumber: "LIST1"}
		return ev
	}
	if err := e.bus.PublishEvent(ctx, usp(&duetv1.Event{Kind: &duetv1.Event_Online{Online: &duetv1.Online{}}})); err != nil {
		t.Fatal(err)
	}
	bustest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if code, _ := getDevice(t, e, id); code != 200 {
			return fmt.Errorf("device not registered: %d", code)
		}
		return nil
	})
	// Duet read the table a minute ago: one instance.
	past := time.Now().Add(-time.Minute)
	if err := e.store.UpsertParameters(ctx, []store.Parameter{{DeviceID: id, Path: table + "1.Alias", Value: "cpe-1", UpdatedAt: past}}); err != nil {
		t.Fatal(err)
	}
	if err := e.store.RecordTableListings(ctx, id, []string{table}, store.ListingFull, past); err != nil {
		t.Fatal(err)
	}

	created := usp(&duetv1.Event{Kind: &duetv1.Event_ObjectCreated{ObjectCreated: &duetv1.ObjectCreated{
		Path: table + "5.", UniqueKeys: map[string]string{"Alias": "cpe-5"}}}})
	if err := e.bus.PublishEvent(ctx, created); err != nil {
		t.Fatal(err)
	}
	bustest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		ps, _, err := e.store.FindParameters(ctx, store.ParameterFilter{DeviceID: id, Prefix: table + "5."})
		if err != nil || len(ps) != 1 || ps[0].Value != "cpe-5" {
			return fmt.Errorf("created instance in the cache: %+v %v", ps, err)
		}
		l, err := e.store.FindTableListings(ctx, []string{id}, []string{table})
		if err != nil || l[id][table].Level != store.ListingInstances {
			return fmt.Errorf("listing after the creation: %v %v", l, err)
		}
		return nil
	})

	deleted := usp(&duetv1.Event{Kind: &duetv1.Event_ObjectDeleted{ObjectDeleted: &duetv1.ObjectDeleted{Path: table + "5."}}})
	if err := e.bus.PublishEvent(ctx, deleted); err != nil {
		t.Fatal(err)
	}
	bustest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		ps, _, err := e.store.FindParameters(ctx, store.ParameterFilter{DeviceID: id, Prefix: table})
		if err != nil || len(ps) != 1 || ps[0].Path != table+"1.Alias" {
			return fmt.Errorf("cache after the deletion: %+v %v", ps, err)
		}
		return nil
	})
	if l, _ := e.store.FindTableListings(ctx, []string{id}, []string{table}); l[id][table].Level != store.ListingInstances {
		t.Fatalf("listing after the deletion: %v", l)
	}
}
