package console

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// BenchmarkConsolePages measures the server time of the console's
// busiest pages (issue 13 item 5: under 300 ms each) on a registry of
// DUET_CONSOLE_BENCH_DEVICES devices (default 100000) with
// DUET_CONSOLE_BENCH_PARAMS cached parameters each (default 500), seeded
// in the database with INSERT … SELECT generate_series. It is a
// benchmark, so `make test` never runs it:
//
//	go test -run '^$' -bench ConsolePages -benchtime 20x -timeout 2h ./controller/console
//
// Each sub-benchmark reports ns/op (the mean) and p95-ms.
func BenchmarkConsolePages(b *testing.B) {
	devices, params := envInt(b, "DUET_CONSOLE_BENCH_DEVICES", 100000), envInt(b, "DUET_CONSOLE_BENCH_PARAMS", 500)
	st, _ := storetest.Open(b)
	ctx := context.Background()
	start := time.Now()
	seedConsoleBench(b, st, devices, params)
	b.Logf("seeded %d devices × %d parameters in %s", devices, params, time.Since(start).Round(time.Second))

	c, err := New(Options{Store: st})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	// The overview's figures and charts are shared for LiveInterval; this
	// console computes them on every request.
	cold, err := New(Options{Store: st, LiveInterval: time.Nanosecond})
	if err != nil {
		b.Fatal(err)
	}
	defer cold.Close()
	u, err := st.CreateUser(ctx, "bench", "bench", store.RoleOperator, "bench password long")
	if err != nil {
		b.Fatal(err)
	}
	secret, _, err := st.CreateSession(ctx, u, "bench")
	if err != nil {
		b.Fatal(err)
	}
	mid := fmt.Sprintf("dev-%06d", devices/2)
	for _, p := range []struct {
		name, path string
		c          *Console
	}{
		{"overview-computed", "/", cold},
		{"overview", "/", c},
		{"device-list", "/devices", c},
		{"device-list-online-cwmp", "/devices?protocol=cwmp&online=true", c},
		{"device-list-param-condition", "/devices?param=Device.X_Bench.P3:eq:v-" + strconv.Itoa(devices/2) + "-3", c},
		{"device-list-param-condition-unindexed", "/devices?param=Device.X_Bench.P4:eq:v-" + strconv.Itoa(devices/2) + "-4", c},
		{"device-list-text", "/devices?q=SN0" + strconv.Itoa(devices/4), c},
		// The count each list loads after itself (deviceCount).
		{"device-count", "/devices/count", c},
		{"device-count-param-condition", "/devices/count?param=Device.X_Bench.P3:eq:v-" + strconv.Itoa(devices/2) + "-3", c},
		{"device-count-param-condition-unindexed", "/devices/count?param=Device.X_Bench.P4:eq:v-" + strconv.Itoa(devices/2) + "-4", c},
		{"device-page", "/devices/" + mid, c},
		// The operations pages (tasks.go, charts.go) over two tasks a
		// device, a fifth of them failed.
		{"task-list", "/tasks", c},
		{"task-list-failed", "/tasks?state=failed", c},
		{"task-list-operation", "/tasks?operation=get", c},
		{"batch-list", "/batches", c},
		{"overview-charts-computed", "/overview/charts.json", cold},
		{"overview-charts", "/overview/charts.json", c},
	} {
		b.Run(p.name, func(b *testing.B) {
			var lat []time.Duration
			for b.Loop() {
				req := httptest.NewRequest(http.MethodGet, p.path, nil)
				req.AddCookie(&http.Cookie{Name: sessionCookie, Value: secret})
				rec := httptest.NewRecorder()
				t0 := time.Now()
				p.c.ServeHTTP(rec, req)
				lat = append(lat, time.Since(t0))
				if rec.Code != http.StatusOK {
					b.Fatalf("GET %s: %d\n%s", p.path, rec.Code, rec.Body.String())
				}
			}
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(lat[len(lat)*95/100].Microseconds())/1000, "p95-ms")
		})
	}
}

func envInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// seedConsoleBench fills the registry and the parameter cache: a device
// by device layout, as real first Gets write it, without the primary
// key while loading (rebuilt afterwards, then ANALYZE).
func seedConsoleBench(b *testing.B, st *store.Store, devices, params int) {
	ctx := context.Background()
	exec := func(sql string, args ...any) {
		if _, err := st.Pool().Exec(ctx, sql, args...); err != nil {
			b.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`INSERT INTO devices (id, protocol, manufacturer, oui, product_class, serial_number, model_name, software_version,
			hardware_version, first_seen, last_seen, online, online_changed_at, transport, facts_updated_at)
		SELECT 'dev-' || lpad(i::text, 6, '0'), CASE WHEN i % 3 = 0 THEN 'usp' ELSE 'cwmp' END, 'Bench Co', '00D09E',
			'PC' || (i % 7), 'SN' || lpad(i::text, 6, '0'), 'Model ' || (i % 11), '1.' || (i % 13) || '.0', '1.0',
			now() - interval '30 days', now() - (i % 1440) * interval '1 minute', i % 10 <> 0, now(),
			CASE WHEN i % 3 = 0 THEN 'mqtt' ELSE 'cwmp' END, now()
		FROM generate_series(1, $1::int) AS i`, devices)
	exec(`ALTER TABLE device_parameters DROP CONSTRAINT device_parameters_pkey`)
	const insert = `INSERT INTO device_parameters (device_id, path, value, type, writable, updated_at)
		SELECT 'dev-' || lpad(i::text, 6, '0'), 'Device.X_Bench.P' || n, 'v-' || i || '-' || n, 'string',
			CASE WHEN n % 3 = 0 THEN 2 ELSE 1 END, now() - (i % 1440) * interval '1 minute'
		FROM generate_series($1::int, $2::int) AS i, generate_series(1, $3::int) AS n
		ORDER BY i, n`
	const chunk = 2000
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for h := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for lo := 1 + h*devices/2; lo <= (h+1)*devices/2 && errs[h] == nil; lo += chunk {
				hi := min(lo+chunk-1, (h+1)*devices/2)
				_, errs[h] = st.Pool().Exec(ctx, insert, lo, hi, params)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	exec(`ALTER TABLE device_parameters ADD PRIMARY KEY (device_id, path)`)
	exec(`INSERT INTO tasks (id, device_id, operation, request, command, non_idempotent, state, created_at, finished_at, error_code, error_message)
		SELECT 'task-' || i || '-' || n, 'dev-' || lpad(i::text, 6, '0'), CASE WHEN n = 1 THEN 'get' ELSE 'reboot' END, '{}', ''::bytea, n = 2,
			CASE WHEN i % 5 = 0 THEN 'failed' ELSE 'succeeded' END, now() - (i % 1440) * interval '1 minute',
			now() - (i % 1440) * interval '1 minute', CASE WHEN i % 5 = 0 THEN 'timeout' ELSE '' END, ''
		FROM generate_series(1, $1::int) AS i, generate_series(1, 2) AS n`, devices)
	exec(`VACUUM ANALYZE`)
	// The path the param-condition pages filter on is a search path
	// (DUET_SEARCH_PATHS); the "-unindexed" pages filter on another.
	if err := st.SetSearchPaths(ctx, []string{"Device.X_Bench.P3"}); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	if err := st.BackfillSearchPaths(ctx); err != nil {
		b.Fatal(err)
	}
	b.Logf("search path Device.X_Bench.P3 indexed in %s", time.Since(start).Round(time.Millisecond))
	exec(`VACUUM ANALYZE device_parameter_search`)
}
