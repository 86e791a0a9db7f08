package store_test

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// BenchmarkDeviceSearch100k reports the latency of filtered device searches
// (one page of 100, as GET /api/v1/devices serves them) over 100k seeded
// devices: p50 and p95 per filter mix. The seed is one INSERT ... SELECT
// generate_series, not 100k round trips.
func BenchmarkDeviceSearch100k(b *testing.B) {
	s := seed100k(b, false)
	on := true
	benchSearch(b, s, []store.DeviceFilter{
		{Protocol: devicemodel.ProtocolCWMP, Online: &on},
		{Manufacturer: "Maker7", SoftwareVersion: "1.7.0"},
		{ProductClass: "Class13", Online: &on},
		{LastSeenAfter: time.Now().Add(-30 * time.Minute)},
		{Protocol: devicemodel.ProtocolUSP, After: "dev-050000"},
	})
}

// BenchmarkDeviceSearchParams100k: parameter-value conditions over 100k
// devices with 4 cached parameters each (400k rows), alone and behind an
// indexed filter, with three of the paths configured as search paths
// (device_parameter_search, 0100) and backfilled from the cache.
// Model<n> is 1% of the fleet, interval > 3000 about 17%, Status Up 10%.
// BenchmarkDeviceSearchParamsUnindexed100k runs the same filters with no
// search path, as conditions on any other path run.
func BenchmarkDeviceSearchParams100k(b *testing.B) {
	benchSearchParams(b, []string{"Device.DeviceInfo.ModelName",
		"Device.ManagementServer.PeriodicInformInterval", "Device.X.Status"})
}

func BenchmarkDeviceSearchParamsUnindexed100k(b *testing.B) { benchSearchParams(b, nil) }

func benchSearchParams(b *testing.B, searchPaths []string) {
	s := seed100k(b, true)
	ctx := context.Background()
	if err := s.SetSearchPaths(ctx, searchPaths); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	if err := s.BackfillSearchPaths(ctx); err != nil {
		b.Fatal(err)
	}
	b.Logf("backfilled %d search paths in %s", len(searchPaths), time.Since(start).Round(time.Millisecond))
	if _, err := s.Pool().Exec(ctx, "VACUUM ANALYZE device_parameter_search"); err != nil {
		b.Fatal(err)
	}
	cond := func(c string) store.ParamCondition {
		pc, err := store.ParseParamCondition(c)
		if err != nil {
			b.Fatal(err)
		}
		return pc
	}
	benchSearch(b, s, []store.DeviceFilter{
		{Params: []store.ParamCondition{cond("Device.DeviceInfo.ModelName:eq:Model7")}},
		{Params: []store.ParamCondition{cond("Device.ManagementServer.PeriodicInformInterval:gt:3000")}},
		{Params: []store.ParamCondition{cond("Device.DeviceInfo.ModelName:prefix:Model4"), cond("Device.ManagementServer.PeriodicInformInterval:le:600")}},
		{Manufacturer: "Maker7", Params: []store.ParamCondition{cond("Device.ManagementServer.PeriodicInformInterval:ge:1800")}},
		{Params: []store.ParamCondition{cond("Device.X.Status:eq:Up")}, Sort: store.DeviceSort{Field: "last_seen", Desc: true}},
	})
}

// BenchmarkDeviceSearchText100k: free-text q over 100k devices (the
// trigram GIN index of 0006_search.sql): a rare serial, a frequent
// manufacturer, an ID prefix, and a count.
func BenchmarkDeviceSearchText100k(b *testing.B) {
	s := seed100k(b, false)
	var n int64
	benchSearch(b, s, []store.DeviceFilter{
		{Query: "sn4242"},
		{Query: "maker17"},
		{Query: "dev-0999"},
		{Query: "class13", Count: &n},
		{Query: "1.7.0", Sort: store.DeviceSort{Field: "serial_number"}},
	})
}

// benchSearch runs the filters in turn, one page of 100 each, and reports
// the p50 and p95 latency of all, and the p95 of each filter (f<i>-p95-µs,
// i its index in filters).
func benchSearch(b *testing.B, s *store.Store, filters []store.DeviceFilter) {
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	per := make([][]time.Duration, len(filters))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		f := filters[i%len(filters)]
		f.Limit = 100
		start := time.Now()
		devs, _, err := s.FindDevices(ctx, f)
		d := time.Since(start)
		lat, per[i%len(filters)] = append(lat, d), append(per[i%len(filters)], d)
		if err != nil || len(devs) == 0 {
			b.Fatalf("filter %d: %d devices, %v", i%len(filters), len(devs), err)
		}
	}
	b.StopTimer()
	p := func(l []time.Duration, q int) float64 {
		sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
		return float64(l[len(l)*q/100].Microseconds())
	}
	b.ReportMetric(p(lat, 50), "p50-µs")
	b.ReportMetric(p(lat, 95), "p95-µs")
	for i, l := range per {
		if len(l) > 0 {
			b.ReportMetric(p(l, 95), fmt.Sprintf("f%d-p95-µs", i))
		}
	}
}

// seed100k stores 100k devices in one INSERT ... SELECT, and with params
// four cached parameters per device.
func seed100k(b *testing.B, params bool) *store.Store {
	b.Helper()
	s, _ := storetest.Open(b)
	ctx := context.Background()
	_, err := s.Pool().Exec(ctx, `
		INSERT INTO devices (id, protocol, manufacturer, oui, product_class, serial_number, software_version,
			first_seen, last_seen, online, online_changed_at, facts_updated_at)
		SELECT 'dev-' || lpad(i::text, 6, '0'),
			CASE WHEN i % 3 = 0 THEN 'usp' ELSE 'cwmp' END,
			'Maker' || (i % 20), '00D09E', 'Class' || (i % 50), 'SN' || i, '1.' || (i % 10) || '.0',
			now() - (i % 1440) * interval '1 minute', now() - (i % 1440) * interval '1 minute',
			i % 4 <> 0, now(), now()
		FROM generate_series(1, 100000) AS i`)
	if err != nil {
		b.Fatal(err)
	}
	if params {
		_, err = s.Pool().Exec(ctx, `
			INSERT INTO device_parameters (device_id, path, value, type, writable, updated_at)
			SELECT 'dev-' || lpad(i::text, 6, '0'), p.path,
				CASE p.path
					WHEN 'Device.DeviceInfo.ModelName' THEN 'Model' || (i % 100)
					WHEN 'Device.ManagementServer.PeriodicInformInterval' THEN (i % 3600)::text
					WHEN 'Device.X.Status' THEN CASE WHEN i % 10 = 0 THEN 'Up' ELSE 'Down' END
					ELSE 'v' || i
				END, '', 0, now()
			FROM generate_series(1, 100000) AS i,
				unnest(ARRAY['Device.DeviceInfo.ModelName', 'Device.ManagementServer.PeriodicInformInterval',
					'Device.X.Status', 'Device.DeviceInfo.SerialNumber']) AS p(path)`)
		if err != nil {
			b.Fatal(err)
		}
	}
	// VACUUM as autovacuum would have: index-only scans need the
	// visibility map.
	if _, err := s.Pool().Exec(ctx, "VACUUM ANALYZE devices"); err != nil {
		b.Fatal(err)
	}
	if _, err := s.Pool().Exec(ctx, "VACUUM ANALYZE device_parameters"); err != nil {
		b.Fatal(err)
	}
	return s
}
