package store_test

import (
	"context"
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
	if _, err := s.Pool().Exec(ctx, "ANALYZE devices"); err != nil {
		b.Fatal(err)
	}
	on := true
	filters := []store.DeviceFilter{
		{Protocol: devicemodel.ProtocolCWMP, Online: &on},
		{Manufacturer: "Maker7", SoftwareVersion: "1.7.0"},
		{ProductClass: "Class13", Online: &on},
		{LastSeenAfter: time.Now().Add(-30 * time.Minute)},
		{Protocol: devicemodel.ProtocolUSP, After: "dev-050000"},
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		f := filters[i%len(filters)]
		f.Limit = 100
		start := time.Now()
		devs, _, err := s.FindDevices(ctx, f)
		lat = append(lat, time.Since(start))
		if err != nil || len(devs) == 0 {
			b.Fatalf("filter %d: %d devices, %v", i%len(filters), len(devs), err)
		}
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*95/100].Microseconds()), "p95-µs")
}
