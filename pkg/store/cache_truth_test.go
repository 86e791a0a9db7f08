package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

func cachedPaths(t *testing.T, s *store.Store, dev, prefix string) map[string]string {
	t.Helper()
	ps, _, err := s.FindParameters(context.Background(), store.ParameterFilter{DeviceID: dev, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, p := range ps {
		out[p.Path] = p.Value
	}
	return out
}

// TestBootstrapKeepsItsOwnInform (issue 12 item 1): a bootstrap forgets
// what was cached before it, not what the Inform that reported it stored
// (same time), and a value read before it that arrives late is refused.
func TestBootstrapKeepsItsOwnInform(t *testing.T) {
	s, _ := storetest.Open(t)
	ctx := context.Background()
	dev := "00D09E-BOOT-SN1"
	t0 := time.Now().UTC().Truncate(time.Microsecond)
	d := devicemodel.Device{ID: dev, Protocol: devicemodel.ProtocolCWMP}
	old := store.Observation{EventID: "ev-old", Kind: "inform", Time: t0.Add(-time.Hour), Payload: []byte{}, Device: d, Online: true,
		Params: []store.Parameter{{DeviceID: dev, Path: "Device.X.Old", Value: "stale", UpdatedAt: t0.Add(-time.Hour)}}}
	inform := store.Observation{EventID: "ev-inf", Kind: "inform", Time: t0, Payload: []byte{}, Device: d, Online: true,
		Params: []store.Parameter{{DeviceID: dev, Path: "Device.DeviceInfo.SoftwareVersion", Value: "1.2.3", UpdatedAt: t0}}}
	boot := store.Observation{EventID: "ev-boot", Kind: "bootstrap", Time: t0, Payload: []byte{}, Device: d, Online: true}
	if err := s.ApplyObservations(ctx, []store.Observation{old}); err != nil {
		t.Fatal(err)
	}
	if err := s.ApplyObservations(ctx, []store.Observation{inform, boot}); err != nil {
		t.Fatal(err)
	}
	if err := s.ForgetDeviceState(ctx, map[string]time.Time{dev: t0}); err != nil {
		t.Fatal(err)
	}
	got := cachedPaths(t, s, dev, "")
	if got["Device.DeviceInfo.SoftwareVersion"] != "1.2.3" || len(got) != 1 {
		t.Fatalf("after the bootstrap the cache holds %v, want only the bootstrap Inform's value", got)
	}
	// A Get answered before the factory reset, applied late: refused.
	late := []store.Parameter{{DeviceID: dev, Path: "Device.X.Old", Value: "stale", UpdatedAt: t0.Add(-time.Millisecond)}}
	if err := s.UpsertParameters(ctx, late); err != nil {
		t.Fatal(err)
	}
	if got := cachedPaths(t, s, dev, "Device.X."); len(got) != 0 {
		t.Fatalf("a value read before the bootstrap came back: %v", got)
	}
	// Read after it: stored.
	late[0].UpdatedAt = t0.Add(time.Millisecond)
	if err := s.UpsertParameters(ctx, late); err != nil {
		t.Fatal(err)
	}
	if got := cachedPaths(t, s, dev, "Device.X."); got["Device.X.Old"] != "stale" {
		t.Fatalf("a value read after the bootstrap was refused: %v", got)
	}
}

// TestDeletedSubtreeStaysDeleted (issue 12 item 2): a value observed
// before a deletion of its subtree never comes back, whenever it is
// written; one observed after it (the instance created anew) does, and
// other subtrees are untouched.
func TestDeletedSubtreeStaysDeleted(t *testing.T) {
	s, _ := storetest.Open(t)
	ctx := context.Background()
	dev := "00D09E-DEL-SN1"
	t0 := time.Now().UTC().Truncate(time.Microsecond)
	if err := s.ApplyObservations(ctx, []store.Observation{{EventID: "e1", Kind: "inform", Time: t0,
		Payload: []byte{}, Device: devicemodel.Device{ID: dev, Protocol: devicemodel.ProtocolCWMP}, Online: true}}); err != nil {
		t.Fatal(err)
	}
	read := []store.Parameter{
		{DeviceID: dev, Path: "Device.NAT.PortMapping.2.Alias", Value: "a", UpdatedAt: t0.Add(time.Second)},
		{DeviceID: dev, Path: "Device.NAT.PortMapping.2.Enable", Value: "true", UpdatedAt: t0.Add(time.Second)},
		{DeviceID: dev, Path: "Device.NAT.PortMapping.20.Alias", Value: "b", UpdatedAt: t0.Add(time.Second)},
	}
	if err := s.UpsertParameters(ctx, read); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteParameterSubtreesAt(ctx, dev, []string{"Device.NAT.PortMapping.2."}, t0.Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	// The same Get result written again, late (the second writer).
	if err := s.UpsertParameters(ctx, read); err != nil {
		t.Fatal(err)
	}
	got := cachedPaths(t, s, dev, "Device.NAT.PortMapping.")
	if len(got) != 1 || got["Device.NAT.PortMapping.20.Alias"] != "b" {
		t.Fatalf("after delete and a late write: %v, want only PortMapping.20", got)
	}
	again := []store.Parameter{{DeviceID: dev, Path: "Device.NAT.PortMapping.2.Alias", Value: "new", UpdatedAt: t0.Add(3 * time.Second)}}
	if err := s.UpsertParameters(ctx, again); err != nil {
		t.Fatal(err)
	}
	if got := cachedPaths(t, s, dev, "Device.NAT.PortMapping.2."); got["Device.NAT.PortMapping.2.Alias"] != "new" {
		t.Fatalf("instance created after the delete not cached: %v", got)
	}
	if n, err := s.PruneParameterTombstones(ctx, t0.Add(time.Hour)); err != nil || n != 1 {
		t.Fatalf("pruned %d tombstones, %v; want 1", n, err)
	}
}
