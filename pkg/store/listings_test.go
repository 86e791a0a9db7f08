package store_test

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// TestTableListingsFollowTheDevice: a complete listing is recorded, never
// replaced by an older one, extended by created instances (incomplete when
// the cache cannot show the instance), dropped under deleted instances and
// by a bootstrap; a full listing drops what the cache held under it from
// before the read; a created instance makes policies forget they read the
// table (issue 12 §3).
func TestTableListingsFollowTheDevice(t *testing.T) {
	s, _ := storetest.Open(t)
	ctx := context.Background()
	const dev, nat, pm = "cpe-1", "Device.NAT.", "Device.NAT.PortMapping."
	t0 := time.Now().Add(-time.Hour).UTC().Truncate(time.Microsecond)
	at := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }
	if err := s.ApplyObservations(ctx, []store.Observation{{EventID: "e1", Kind: "inform", Time: t0, Payload: []byte{}, Online: true,
		Device: devicemodel.Device{ID: dev, Protocol: devicemodel.ProtocolCWMP, Manufacturer: "ACME"}}}); err != nil {
		t.Fatal(err)
	}
	levels := func(l map[string]store.TableListing) map[string]int {
		if l == nil {
			return nil
		}
		out := map[string]int{}
		for p, v := range l {
			out[p] = v.Level
		}
		return out
	}
	listings := func() map[string]int {
		t.Helper()
		got, err := s.FindTableListings(ctx, []string{dev}, []string{pm})
		if err != nil {
			t.Fatal(err)
		}
		return levels(got[dev])
	}
	expect := func(step string, want map[string]int) {
		t.Helper()
		if got := listings(); !maps.Equal(got, want) {
			t.Fatalf("%s: listings %v, want %v", step, got, want)
		}
	}
	// Nothing listed: an instance created says nothing.
	if err := s.NoteInstancesCreated(ctx, dev, []store.CreatedInstance{{Path: pm + "1.", Cached: true}}, at(1)); err != nil {
		t.Fatal(err)
	}
	expect("never listed", nil)

	// A stale row under the table, cached before the read, and one the
	// read returned.
	if err := s.UpsertParameters(ctx, []store.Parameter{
		{DeviceID: dev, Path: pm + "7.Alias", Value: "gone", UpdatedAt: at(1)},
		{DeviceID: dev, Path: pm + "1.Alias", Value: "cpe-1", UpdatedAt: at(2)},
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordTableListings(ctx, dev, []string{nat}, store.ListingFull, at(2)); err != nil {
		t.Fatal(err)
	}
	expect("a Get of Device.NAT.", map[string]int{nat: store.ListingFull})
	if got, _ := s.FindTableListings(ctx, []string{dev}, []string{pm}); !got[dev][nat].ListedAt.Equal(at(2)) {
		t.Fatalf("listed at %v, want %v", got[dev][nat].ListedAt, at(2))
	}
	ps, _, err := s.FindParameters(ctx, store.ParameterFilter{DeviceID: dev, Prefix: pm})
	if err != nil || len(ps) != 1 || ps[0].Path != pm+"1.Alias" {
		t.Fatalf("cache under the listed path: %+v %v", ps, err)
	}
	if err := s.RecordTableListings(ctx, dev, []string{nat}, store.ListingInstances, at(1)); err != nil {
		t.Fatal(err)
	}
	expect("an older listing", map[string]int{nat: store.ListingFull})

	// A policy that read the table.
	g, err := s.CreateGroup(ctx, "t", store.Group{Name: "all", Filter: "true"})
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.CreatePolicy(ctx, "t", store.Policy{GroupID: g.ID, Name: "p", Kind: "parameters",
		Spec: json.RawMessage(`{"parameters":[{"path":"Device.X","value":"1"}]}`)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ApplyReconciliation(ctx, store.Reconciliation{DeviceIDs: []string{dev},
		Keep:     []store.PolicyDevice{{PolicyID: p.ID, DeviceID: dev}},
		Statuses: []store.PolicyStatus{{PolicyID: p.ID, DeviceID: dev, Status: store.StatusCompliant, Revision: 1, Refreshed: []string{pm, "params@1"}}}}); err != nil {
		t.Fatal(err)
	}

	// Created before the listing: already in it.
	if err := s.NoteInstancesCreated(ctx, dev, []store.CreatedInstance{{Path: pm + "1.", Cached: true}}, at(1)); err != nil {
		t.Fatal(err)
	}
	expect("created before the read", map[string]int{nat: store.ListingFull})
	// Created after, with its keys cached: the instances are still all
	// known, not every value.
	if err := s.NoteInstancesCreated(ctx, dev, []store.CreatedInstance{{Path: pm + "2.", Cached: true}}, at(3)); err != nil {
		t.Fatal(err)
	}
	expect("created after", map[string]int{nat: store.ListingFull, pm: store.ListingInstances})
	st, err := s.DeviceStatuses(ctx, []string{dev})
	if err != nil {
		t.Fatal(err)
	}
	if r := st[p.ID][dev].Refreshed; len(r) != 1 || r[0] != "params@1" {
		t.Fatalf("the policy still counts the table as read: %v", r)
	}
	// Created with nothing the cache can show: incomplete.
	if err := s.NoteInstancesCreated(ctx, dev, []store.CreatedInstance{{Path: pm + "3.", Cached: false}}, at(4)); err != nil {
		t.Fatal(err)
	}
	expect("created unseen", map[string]int{nat: store.ListingFull, pm: store.ListingNone})

	// Read again: the newer listing covers the table's row.
	if err := s.RecordTableListings(ctx, dev, []string{pm}, store.ListingFull, at(5)); err != nil {
		t.Fatal(err)
	}
	expect("the table read", map[string]int{nat: store.ListingFull, pm: store.ListingFull})
	if err := s.RecordTableListings(ctx, dev, []string{nat}, store.ListingFull, at(6)); err != nil {
		t.Fatal(err)
	}
	expect("the parent read", map[string]int{nat: store.ListingFull})

	// Deleting Device.NAT.PortMapping.1. drops listings under it only.
	if err := s.RecordTableListings(ctx, dev, []string{pm + "1.Sub."}, store.ListingFull, at(7)); err != nil {
		t.Fatal(err)
	}
	if err := s.DropTableListings(ctx, dev, []string{pm + "1."}); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.FindTableListings(ctx, []string{dev}, []string{pm + "1.Sub."}); !maps.Equal(levels(got[dev]), map[string]int{nat: store.ListingFull}) {
		t.Fatalf("after the delete: %v", got)
	}

	// A bootstrap forgets listings taken before it, not after.
	if err := s.ForgetDeviceState(ctx, map[string]time.Time{dev: at(8)}); err != nil {
		t.Fatal(err)
	}
	expect("bootstrapped", nil)
	if err := s.RecordTableListings(ctx, dev, []string{pm}, store.ListingFull, at(9)); err != nil {
		t.Fatal(err)
	}
	if err := s.ForgetDeviceState(ctx, map[string]time.Time{dev: at(8)}); err != nil {
		t.Fatal(err)
	}
	expect("listed after the bootstrap", map[string]int{pm: store.ListingFull})

	// A read of the table that the device refused unlists it, even under
	// a listed ancestor.
	if err := s.RecordTableListings(ctx, dev, []string{nat}, store.ListingFull, at(10)); err != nil {
		t.Fatal(err)
	}
	if err := s.UnlistTables(ctx, dev, []string{pm}, at(11)); err != nil {
		t.Fatal(err)
	}
	expect("unlisted", map[string]int{nat: store.ListingFull, pm: store.ListingNone})

	// A GetInstances lists the table when the cache shows every instance
	// it returned: not with one never read (a CWMP answer has no keys),
	// then yes, and the rows of instances it did not return go.
	if err := s.UpsertParameters(ctx, []store.Parameter{
		{DeviceID: dev, Path: pm + "4.Alias", Value: "a", UpdatedAt: at(12)},
		{DeviceID: dev, Path: pm + "5.Alias", Value: "gone", UpdatedAt: at(12)},
		{DeviceID: dev, Path: pm + "Extra", Value: "x", UpdatedAt: at(12)},
	}); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.RecordInstanceListing(ctx, dev, pm, []string{pm + "4.", pm + "6."}, at(13)); err != nil || ok {
		t.Fatalf("listed with an instance the cache cannot show: %v %v", ok, err)
	}
	if ok, err := s.RecordInstanceListing(ctx, dev, pm, []string{pm + "4."}, at(13)); err != nil || !ok {
		t.Fatalf("not listed: %v %v", ok, err)
	}
	expect("instances listed", map[string]int{nat: store.ListingFull, pm: store.ListingInstances})
	var paths []string
	ps, _, _ = s.FindParameters(ctx, store.ParameterFilter{DeviceID: dev, Prefix: pm})
	for _, p := range ps {
		paths = append(paths, p.Path)
	}
	if !slices.Equal(paths, []string{pm + "4.Alias", pm + "Extra"}) {
		t.Fatalf("cache after the instance listing: %v", paths)
	}

	if err := s.RecordTableListings(ctx, dev, []string{pm}, 0, at(14)); err == nil {
		t.Fatal("level 0 recorded as a complete listing")
	}
}
