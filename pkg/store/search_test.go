package store_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// seedSearch stores six devices with distinct facts and a few cached
// parameters.
func seedSearch(t *testing.T, s *store.Store) {
	t.Helper()
	ctx := context.Background()
	base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	var batch []store.Observation
	facts := []struct{ id, serial, maker, model, sw string }{
		{"00D09E-HG-A1", "SNA1", "Huawei", "HG8245H", "V3R017"},
		{"00D09E-HG-A2", "SNA2", "huawei", "HG8546M", "V5R019"},
		{"00259E-ZX-B1", "ZXB1", "ZTE", "F660", "V6.0"},
		{"00259E-ZX-B2", "zxb2", "ZTE", "F670L", "V7.1"},
		{"os::0011AA-C1", "C1", "Acme", "Gateway 9", "1.0"},
		{"os::0011AA-C2", "C2", "Acme", "Gateway:10", "2.0"},
	}
	for i, f := range facts {
		at := base.Add(time.Duration(len(facts)-i) * time.Minute) // last_seen opposite of id order
		batch = append(batch, obs(f.id, at, "inform", true, func(d *devicemodel.Device) {
			d.SerialNumber, d.Manufacturer, d.ModelName, d.SoftwareVersion = f.serial, f.maker, f.model, f.sw
		}))
	}
	if err := s.ApplyObservations(ctx, batch); err != nil {
		t.Fatal(err)
	}
	var ps []store.Parameter
	for i, f := range facts {
		ps = append(ps,
			store.Parameter{DeviceID: f.id, Path: "Device.DeviceInfo.ModelName", Value: f.model, UpdatedAt: base},
			store.Parameter{DeviceID: f.id, Path: "Device.ManagementServer.PeriodicInformInterval", Value: fmt.Sprint(60 * (i + 1) * (i + 1)), UpdatedAt: base},
		)
	}
	// Not numbers: must never match (nor break) a numeric comparison.
	ps = append(ps,
		store.Parameter{DeviceID: "os::0011AA-C1", Path: "Device.X.Value", Value: "abc", UpdatedAt: base},
		store.Parameter{DeviceID: "os::0011AA-C2", Path: "Device.X.Value", Value: "1e99999", UpdatedAt: base},
		store.Parameter{DeviceID: "00D09E-HG-A1", Path: "Device.X.Value", Value: " 12.5 ", UpdatedAt: base},
		store.Parameter{DeviceID: "00D09E-HG-A2", Path: "Device.X.Value", Value: "NaN", UpdatedAt: base},
	)
	if err := s.UpsertParameters(ctx, ps); err != nil {
		t.Fatal(err)
	}
}

func findIDs(t *testing.T, s *store.Store, f store.DeviceFilter) []string {
	t.Helper()
	devs, _, err := s.FindDevices(context.Background(), f)
	if err != nil {
		t.Fatalf("%+v: %v", f, err)
	}
	var out []string
	for _, d := range devs {
		out = append(out, d.ID)
	}
	return out
}

func conds(t *testing.T, ss ...string) []store.ParamCondition {
	t.Helper()
	var out []store.ParamCondition
	for _, s := range ss {
		c, err := store.ParseParamCondition(s)
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		out = append(out, c)
	}
	return out
}

// searchModes runs test twice: with the parameter cache alone, and with
// paths configured as search paths (device_parameter_search, 0100). The
// first of paths is configured before test seeds (its values are copied
// by the cache's write path), the others after (by the backfill). The
// answers must be the same.
func searchModes(t *testing.T, paths []string, test func(t *testing.T, s *store.Store, seeded func())) {
	t.Run("cache", func(t *testing.T) {
		s, _ := storetest.Open(t)
		test(t, s, func() {})
	})
	t.Run("indexed", func(t *testing.T) {
		s, _ := storetest.Open(t)
		ctx := context.Background()
		if err := s.SetSearchPaths(ctx, paths[:1]); err != nil {
			t.Fatal(err)
		}
		test(t, s, func() {
			if err := s.SetSearchPaths(ctx, paths); err != nil {
				t.Fatal(err)
			}
			if err := s.BackfillSearchPaths(ctx); err != nil {
				t.Fatal(err)
			}
			got, err := s.SearchPaths(ctx)
			if err != nil || len(got) != len(paths) {
				t.Fatalf("search paths %v, %v; want %d", got, err, len(paths))
			}
			for _, p := range got {
				if !p.Ready {
					t.Fatalf("%s not ready after the backfill", p.Path)
				}
			}
		})
	})
}

func TestFindDevicesFreeTextAndParams(t *testing.T) {
	searchModes(t, []string{"Device.DeviceInfo.ModelName", "Device.ManagementServer.PeriodicInformInterval", "Device.X.Value", "Device.Nothing"},
		testFindDevicesFreeTextAndParams)
}

func testFindDevicesFreeTextAndParams(t *testing.T, s *store.Store, seeded func()) {
	seedSearch(t, s)
	seeded()
	for _, c := range []struct {
		f    store.DeviceFilter
		want string
	}{
		{store.DeviceFilter{Query: "huawei"}, "00D09E-HG-A1,00D09E-HG-A2"},
		{store.DeviceFilter{Query: "HG85"}, "00D09E-HG-A2"},             // model name, case folded
		{store.DeviceFilter{Query: "ZXB"}, "00259E-ZX-B1,00259E-ZX-B2"}, // serial, either case
		{store.DeviceFilter{Query: "v7.1"}, "00259E-ZX-B2"},             // software version
		{store.DeviceFilter{Query: "os::"}, "os::0011AA-C1,os::0011AA-C2"},
		{store.DeviceFilter{Query: "100%"}, ""},        // % is literal
		{store.DeviceFilter{Query: "C1" + "Acme"}, ""}, // never across two fields
		{store.DeviceFilter{Query: "acme", Params: conds(t, "Device.DeviceInfo.ModelName:eq:Gateway:10")}, "os::0011AA-C2"},
		{store.DeviceFilter{Params: conds(t, "Device.DeviceInfo.ModelName:prefix:HG")}, "00D09E-HG-A1,00D09E-HG-A2"},
		{store.DeviceFilter{Params: conds(t, "Device.DeviceInfo.ModelName:ne:F660")}, "00259E-ZX-B2,00D09E-HG-A1,00D09E-HG-A2,os::0011AA-C1,os::0011AA-C2"},
		// 60, 240, 540, 960, 1500, 2160 in seed order.
		{store.DeviceFilter{Params: conds(t, "Device.ManagementServer.PeriodicInformInterval:gt:540")}, "00259E-ZX-B2,os::0011AA-C1,os::0011AA-C2"},
		{store.DeviceFilter{Params: conds(t, "Device.ManagementServer.PeriodicInformInterval:ge:540", "Device.ManagementServer.PeriodicInformInterval:lt:1500")}, "00259E-ZX-B1,00259E-ZX-B2"},
		{store.DeviceFilter{Params: conds(t, "Device.ManagementServer.PeriodicInformInterval:le:1e2")}, "00D09E-HG-A1"},
		// "abc", "1e99999", "NaN": never numbers; " 12.5 " is.
		{store.DeviceFilter{Params: conds(t, "Device.X.Value:gt:0")}, "00D09E-HG-A1"},
		{store.DeviceFilter{Params: conds(t, "Device.X.Value:lt:1000000")}, "00D09E-HG-A1"},
		// No cached value: no match, even for ne.
		{store.DeviceFilter{Params: conds(t, "Device.Nothing:ne:x")}, ""},
	} {
		if got := strings.Join(findIDs(t, s, c.f), ","); got != c.want {
			t.Errorf("%+v: %s, want %s", c.f, got, c.want)
		}
	}
	var n int64
	if findIDs(t, s, store.DeviceFilter{Query: "a", Params: conds(t, "Device.ManagementServer.PeriodicInformInterval:gt:100"), Count: &n, Limit: 1}); n != 3 {
		// "a" is in every ID of the A and C devices (and Huawei, Acme).
		t.Fatalf("count %d, want 3", n)
	}
}

func TestParseParamConditionRejects(t *testing.T) {
	for in, want := range map[string]string{
		"Device.X":                  "want <path>:<op>:<value>",
		"Device.X:eq":               "no value",
		"Device.X:like:a":           `operator "like" is unknown`,
		"Device.X:gt:ten":           "not a number",
		"Device.X:gt:NaN":           "not a number",
		"Device..X:eq:1":            "position 7",
		"Device.X.:eq:1":            "object path",
		"Device.X.{i}.Name:eq:1":    "position",
		"Device.X:gt:1e999999":      "not a number",
		"Device.X:prefix:":          "",
		"Device.X:eq:a:b:c":         "",
		"Device.X:ne:":              "",
		"Device.X.1.Name:ge:-2.5e3": "",
	} {
		_, err := store.ParseParamCondition(in)
		switch {
		case want == "" && err != nil:
			t.Errorf("%s: %v", in, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("%s: %v, want an error containing %q", in, err, want)
		}
	}
	c, _ := store.ParseParamCondition("Device.X:eq:a:b:c")
	if c.Path != "Device.X" || c.Op != store.ParamEq || c.Value != "a:b:c" {
		t.Fatalf("split: %+v", c)
	}
	if err := store.CheckQuery("a\x1fb"); err == nil {
		t.Fatal("a control character in q was accepted")
	}
}

// TestFindDevicesSortedPaging pages through every sort, both directions,
// one device per page, and wants the same order as sorting in Go.
func TestFindDevicesSortedPaging(t *testing.T) {
	s, _ := storetest.Open(t)
	seedSearch(t, s)
	ctx := context.Background()
	// Two devices share a manufacturer and a product class ("" for all):
	// the id tie-break must keep paging exact.
	for _, field := range store.SortFields {
		for _, desc := range []bool{false, true} {
			o := store.DeviceSort{Field: field, Desc: desc}
			var got []string
			f := store.DeviceFilter{Sort: o, Limit: 1}
			for {
				devs, next, err := s.FindDevices(ctx, f)
				if err != nil {
					t.Fatalf("%s: %v", o, err)
				}
				for _, d := range devs {
					got = append(got, d.ID)
				}
				if next == "" {
					break
				}
				if f.After, f.AfterKey, err = store.DecodeDeviceCursor(o, next); err != nil {
					t.Fatalf("%s: cursor: %v", o, err)
				}
				if len(got) > 10 {
					t.Fatalf("%s: paging does not end: %v", o, got)
				}
			}
			// Compare with PostgreSQL's own ordering of the keys (its
			// collation may differ from Go's bytes), ties by id.
			var pgOrder []string
			rows, err := s.Pool().Query(ctx, "SELECT id FROM devices ORDER BY "+map[bool]string{false: field + ", id", true: field + " DESC, id DESC"}[desc])
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				var id string
				_ = rows.Scan(&id)
				pgOrder = append(pgOrder, id)
			}
			rows.Close()
			if strings.Join(got, ",") != strings.Join(pgOrder, ",") {
				t.Errorf("sort %s paged: %v, want %v", o, got, pgOrder)
			}
		}
	}
	// A cursor of one sort is refused under another.
	_, next, _ := s.FindDevices(ctx, store.DeviceFilter{Sort: store.DeviceSort{Field: "last_seen"}, Limit: 1})
	if _, _, err := store.DecodeDeviceCursor(store.DeviceSort{Field: "serial_number"}, next); err == nil {
		t.Fatal("a last_seen cursor decoded under sort serial_number")
	}
	if _, err := store.ParseDeviceSort("colour"); err == nil {
		t.Fatal("unknown sort accepted")
	}
	// last_seen descending is in fact id ascending for this seed.
	if got := findIDs(t, s, store.DeviceFilter{Sort: store.DeviceSort{Field: "last_seen", Desc: false}}); got[0] != "os::0011AA-C2" {
		t.Fatalf("last_seen ascending starts with %s", got[0])
	}
}

func TestFreeTextSearchUsesTheTrigramIndex(t *testing.T) {
	s, _ := storetest.Open(t)
	seedSearch(t, s)
	ctx := context.Background()
	var ext int
	if err := s.Pool().QueryRow(ctx, "SELECT count(*) FROM pg_extension WHERE extname = 'pg_trgm'").Scan(&ext); err != nil || ext != 1 {
		t.Fatalf("pg_trgm is not installed (%d, %v): migration 0006 could not create it", ext, err)
	}
	// With sequential scans off the planner takes the index whenever the
	// query's expression is the indexed one.
	tx, err := s.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "SET LOCAL enable_seqscan = off"); err != nil {
		t.Fatal(err)
	}
	var plan []byte
	if err := tx.QueryRow(ctx, "EXPLAIN (FORMAT JSON) SELECT id FROM devices WHERE "+store.SearchCondition("$1"), "huawei").Scan(&plan); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(plan), "devices_search_trgm_idx") {
		t.Fatalf("free-text search does not use devices_search_trgm_idx: %s", plan)
	}
}

func TestDeviceTagsAddRemoveAudit(t *testing.T) {
	s, _ := storetest.Open(t)
	ctx := context.Background()
	if err := s.ApplyObservations(ctx, []store.Observation{obs("tag-dev", time.Now(), "inform", true, nil)}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ { // the second add changes nothing
		tags, err := s.AddDeviceTag(ctx, "alice", "tag-dev", "site:paris/3")
		if err != nil || !slices.Equal(tags, []string{"site:paris/3"}) {
			t.Fatalf("add %d: %v %v", i, tags, err)
		}
	}
	if tags, err := s.AddDeviceTag(ctx, "alice", "tag-dev", "lab"); err != nil || !slices.Equal(tags, []string{"lab", "site:paris/3"}) {
		t.Fatalf("add lab: %v %v", tags, err)
	}
	for i := 0; i < 2; i++ {
		if tags, err := s.RemoveDeviceTag(ctx, "bob", "tag-dev", "lab"); err != nil || !slices.Equal(tags, []string{"site:paris/3"}) {
			t.Fatalf("remove %d: %v %v", i, tags, err)
		}
	}
	for _, bad := range []string{"", "has space", "ünï", strings.Repeat("x", 129), "a*b"} {
		if _, err := s.AddDeviceTag(ctx, "alice", "tag-dev", bad); devicemodel.ErrorCode(err) != devicemodel.CodeInvalidArgument {
			t.Errorf("tag %q: %v", bad, err)
		}
	}
	if _, err := s.AddDeviceTag(ctx, "alice", "no-such-device", "lab"); devicemodel.ErrorCode(err) != devicemodel.CodeNotFound {
		t.Fatalf("unknown device: %v", err)
	}
	entries, _, err := s.FindAudit(ctx, store.AuditFilter{ObjectType: store.AuditDeviceTags, ObjectID: "tag-dev"})
	if err != nil {
		t.Fatal(err)
	}
	// Three changes: add, add, remove; the repeats are not changes.
	if len(entries) != 3 || entries[0].Actor != "bob" || string(entries[0].After) != `{"tags": ["site:paris/3"]}` {
		var b strings.Builder
		for _, e := range entries {
			fmt.Fprintf(&b, "%s %s %s -> %s\n", e.Actor, e.Action, e.Before, e.After)
		}
		t.Fatalf("audit:\n%s", b.String())
	}
	if got := findIDs(t, s, store.DeviceFilter{Tag: "site:paris/3"}); !slices.Equal(got, []string{"tag-dev"}) {
		t.Fatalf("tag filter: %v", got)
	}
}

// TestParamConditionsOnLongValues (issue 17): the value index holds a
// value's first 200 characters, so eq and prefix must still compare the
// whole value, also when the first 200 characters are shared and when
// they are multi-byte.
func TestParamConditionsOnLongValues(t *testing.T) {
	searchModes(t, []string{"Device.X.Long"}, testParamConditionsOnLongValues)
}

func testParamConditionsOnLongValues(t *testing.T, s *store.Store, seeded func()) {
	seedSearch(t, s)
	seeded()
	ctx := context.Background()
	base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	head := strings.Repeat("é", 200)  // 400 bytes
	long := strings.Repeat("x", 3000) // past a btree entry's limit
	ps := []store.Parameter{
		{DeviceID: "00D09E-HG-A1", Path: "Device.X.Long", Value: head + "A-tail", UpdatedAt: base},
		{DeviceID: "00D09E-HG-A2", Path: "Device.X.Long", Value: head + "B-tail", UpdatedAt: base},
		{DeviceID: "00259E-ZX-B1", Path: "Device.X.Long", Value: head, UpdatedAt: base},
		{DeviceID: "00259E-ZX-B2", Path: "Device.X.Long", Value: long, UpdatedAt: base},
		{DeviceID: "os::0011AA-C1", Path: "Device.X.Long", Value: "50%_off", UpdatedAt: base},
	}
	if err := s.UpsertParameters(ctx, ps); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		cond, want string
	}{
		{"Device.X.Long:eq:" + head + "A-tail", "00D09E-HG-A1"},
		{"Device.X.Long:eq:" + head, "00259E-ZX-B1"},
		{"Device.X.Long:prefix:" + head + "B", "00D09E-HG-A2"},
		{"Device.X.Long:prefix:" + head, "00259E-ZX-B1,00D09E-HG-A1,00D09E-HG-A2"},
		{"Device.X.Long:eq:" + long, "00259E-ZX-B2"},
		{"Device.X.Long:prefix:" + long[:200], "00259E-ZX-B2"},
		// LIKE's wildcards are literal.
		{"Device.X.Long:prefix:50%", "os::0011AA-C1"},
		{"Device.X.Long:prefix:50_", ""},
		// One character short of the indexed prefix: decided by it alone.
		{"Device.X.Long:eq:" + strings.Repeat("é", 199), ""},
		{"Device.X.Long:prefix:" + strings.Repeat("é", 199), "00259E-ZX-B1,00D09E-HG-A1,00D09E-HG-A2"},
		{"Device.X.Long:ne:" + head, "00259E-ZX-B2,00D09E-HG-A1,00D09E-HG-A2,os::0011AA-C1"},
		{"Device.X.Long:ne:" + head + "A-tail", "00259E-ZX-B1,00259E-ZX-B2,00D09E-HG-A2,os::0011AA-C1"},
		{"Device.X.Long:ne:50%_off", "00259E-ZX-B1,00259E-ZX-B2,00D09E-HG-A1,00D09E-HG-A2"},
	} {
		if got := strings.Join(findIDs(t, s, store.DeviceFilter{Params: conds(t, c.cond)}), ","); got != c.want {
			t.Errorf("%.40s…: %s, want %s", c.cond, got, c.want)
		}
	}
}

// TestSearchPathsFollowTheCache (issue 17): an indexed path's copy
// (device_parameter_search) answers as the cache does through every
// change of the cache: a newer value, an older one arriving late (which
// the cache refuses), a deleted subtree, a forgotten device; and a path
// taken out of the setting loses its partition and is searched in the
// cache again.
func TestSearchPathsFollowTheCache(t *testing.T) {
	s, _ := storetest.Open(t)
	seedSearch(t, s)
	ctx := context.Background()
	const path = "Device.IP.Interface.1.IPv4Address.1.IPAddress"
	if err := s.SetSearchPaths(ctx, []string{path}); err != nil {
		t.Fatal(err)
	}
	if err := s.BackfillSearchPaths(ctx); err != nil {
		t.Fatal(err)
	}
	base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	set := func(dev, value string, at time.Time) {
		t.Helper()
		if err := s.UpsertParameters(ctx, []store.Parameter{{DeviceID: dev, Path: path, Value: value, UpdatedAt: at}}); err != nil {
			t.Fatal(err)
		}
	}
	find := func(op, value string) string {
		t.Helper()
		return strings.Join(findIDs(t, s, store.DeviceFilter{Params: conds(t, path+":"+op+":"+value)}), ",")
	}
	set("00D09E-HG-A1", "10.0.0.1", base)
	set("00D09E-HG-A2", "10.0.0.1", base)
	if got := find("eq", "10.0.0.1"); got != "00D09E-HG-A1,00D09E-HG-A2" {
		t.Fatalf("eq 10.0.0.1: %s", got)
	}
	set("00D09E-HG-A1", "10.0.0.2", base.Add(time.Minute))
	set("00D09E-HG-A2", "10.0.0.9", base.Add(-time.Minute)) // older than the cached value: refused
	for _, c := range []struct{ op, value, want string }{
		{"eq", "10.0.0.1", "00D09E-HG-A2"},
		{"eq", "10.0.0.2", "00D09E-HG-A1"},
		{"eq", "10.0.0.9", ""},
		{"prefix", "10.0.0.", "00D09E-HG-A1,00D09E-HG-A2"},
	} {
		if got := find(c.op, c.value); got != c.want {
			t.Errorf("%s %s: %s, want %s", c.op, c.value, got, c.want)
		}
	}
	// The interface is deleted on A1, A2 forgets everything in a factory
	// reset: neither has a value any more, and both count as unknown.
	if err := s.DeleteParameterSubtreesAt(ctx, "00D09E-HG-A1", []string{"Device.IP.Interface.1."}, base.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := s.ForgetDeviceState(ctx, map[string]time.Time{"00D09E-HG-A2": base.Add(2 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if got := find("prefix", "10."); got != "" {
		t.Errorf("after the deletes, prefix 10.: %s", got)
	}
	unknown, err := s.CountDevicesWithoutParams(ctx, store.DeviceFilter{Params: conds(t, path+":eq:x")})
	if err != nil || unknown[path] != 6 {
		t.Errorf("unknown %v, %v; want 6", unknown, err)
	}
	var copies int
	if err := s.Pool().QueryRow(ctx, "SELECT count(*) FROM device_parameter_search").Scan(&copies); err != nil || copies != 0 {
		t.Errorf("%d copies left after the deletes, %v", copies, err)
	}

	// Out of the setting: the partition goes, the cache answers.
	set("00259E-ZX-B1", "192.168.1.1", base.Add(3*time.Minute))
	if err := s.SetSearchPaths(ctx, nil); err != nil {
		t.Fatal(err)
	}
	var partitions int
	if err := s.Pool().QueryRow(ctx, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'device_parameter_search'::regclass").Scan(&partitions); err != nil || partitions != 0 {
		t.Errorf("%d partitions left, %v", partitions, err)
	}
	if got := find("eq", "192.168.1.1"); got != "00259E-ZX-B1" {
		t.Errorf("from the cache: %s", got)
	}
	if err := s.SetSearchPaths(ctx, []string{"Device.IP."}); err == nil {
		t.Error("an object path was accepted as a search path")
	}
}
