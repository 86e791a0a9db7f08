package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// BenchmarkReconcile100k measures one policy change over 100k seeded
// devices, each with 21 cached parameters: the full pass that judges
// every device against the changed policy and writes the outcome.
//
//   - apply: the rollout is complete (not gated), so every device gets a
//     Set task: 100k statuses, tasks and links written, the previous
//     revision's queued tasks replaced;
//   - staged: the rollout is running, so every device becomes pending
//     (statuses only, no tasks until a batch admits it);
//   - sweep: nothing changed: every device is judged compliant again.
//
// Run: go test -run '^$' -bench Reconcile100k -benchtime 3x ./controller/
func BenchmarkReconcile100k(b *testing.B) {
	st, _ := storetest.Open(b)
	ctx := context.Background()
	const n = 100_000
	for _, q := range []string{
		`INSERT INTO devices (id, protocol, manufacturer, oui, product_class, serial_number, software_version,
			first_seen, last_seen, online, online_changed_at, facts_updated_at)
		SELECT format('00D09E-HG8245-SN%s', lpad(i::text, 6, '0')), CASE WHEN i % 10 = 0 THEN 'usp' ELSE 'cwmp' END,
			'Huawei', '00D09E', 'HG8245', format('SN%s', lpad(i::text, 6, '0')), 'V3R017', now(), now(), true, now(), now()
		FROM generate_series(1, ` + fmt.Sprint(n) + `) AS i`,
		`INSERT INTO device_parameters (device_id, path, value, type, updated_at)
		SELECT d.id, p.path, CASE WHEN p.path LIKE '%Interval' THEN '3600' ELSE 'v' END,
			CASE WHEN p.path LIKE '%Interval' THEN 'unsignedInt' ELSE 'string' END, now()
		FROM devices d, (SELECT 'Device.ManagementServer.PeriodicInformInterval' AS path UNION ALL
			SELECT format('Device.X_Test.P%s', i) FROM generate_series(1, 20) AS i) AS p`,
		`ANALYZE devices, device_parameters`,
	} {
		if _, err := st.Pool().Exec(ctx, q); err != nil {
			b.Fatal(err)
		}
	}
	g, err := st.CreateGroup(ctx, "bench", store.Group{Name: "all", Filter: `oui == "00D09E"`})
	if err != nil {
		b.Fatal(err)
	}
	spec := func(v int) json.RawMessage {
		return json.RawMessage(fmt.Sprintf(`{"parameters":[{"path":"Device.ManagementServer.PeriodicInformInterval","value":"%d"}]}`, v))
	}
	p, err := st.CreatePolicy(ctx, "bench", store.Policy{GroupID: g.ID, Name: "inform", Kind: "parameters", Spec: spec(300)})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := st.EnablePolicy(ctx, "bench", p.ID, json.RawMessage(`{"batch_percent":10}`), 0); err != nil {
		b.Fatal(err)
	}
	r := NewReconciler(ReconcilerOptions{Store: st, PageSize: 1000})
	value := 300
	change := func(b *testing.B, state string) {
		b.Helper()
		value++
		p.Spec = spec(value)
		if _, err := st.UpdatePolicy(ctx, "bench", p); err != nil {
			b.Fatal(err)
		}
		if _, err := st.Pool().Exec(ctx, "UPDATE rollouts SET state = $2 WHERE policy_id = $1", p.ID, state); err != nil {
			b.Fatal(err)
		}
	}
	pass := func(b *testing.B) {
		b.Helper()
		policies, _, err := r.loadPolicies(ctx)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if err := r.fullPass(ctx, policies); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(n)/time.Since(start).Seconds(), "devices/s")
	}
	count := func(b *testing.B, status string) int {
		var c int
		if err := st.Pool().QueryRow(ctx, "SELECT count(*) FROM policy_status WHERE policy_id = $1 AND status = $2", p.ID, status).Scan(&c); err != nil {
			b.Fatal(err)
		}
		return c
	}
	b.Run("apply", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			change(b, store.RolloutCompleted)
			b.StartTimer()
			pass(b)
		}
		b.StopTimer()
		if c := count(b, store.StatusApplying); c != n {
			b.Fatalf("%d devices applying, want %d", c, n)
		}
	})
	b.Run("staged", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			change(b, store.RolloutRunning)
			// The apply run's tasks are out of the way: cancelled, as a
			// restarted rollout leaves the not-yet-admitted.
			if _, err := st.Pool().Exec(ctx, "UPDATE tasks SET state = 'cancelled' WHERE state = 'queued'"); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			pass(b)
		}
		b.StopTimer()
		if c := count(b, store.StatusPending); c != n {
			b.Fatalf("%d devices pending, want %d", c, n)
		}
	})
	b.Run("sweep", func(b *testing.B) {
		b.StopTimer()
		// Every device took the value.
		if _, err := st.Pool().Exec(ctx, "UPDATE device_parameters SET value = $1 WHERE path = 'Device.ManagementServer.PeriodicInformInterval'",
			fmt.Sprint(value)); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		for i := 0; i < b.N; i++ {
			pass(b)
		}
		b.StopTimer()
		if c := count(b, store.StatusCompliant); c != n {
			b.Fatalf("%d devices compliant, want %d", c, n)
		}
	})
	// The leader's recount for duet_policy_devices (every 30 s).
	b.Run("status-counts", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			c, err := st.PolicyStatusCounts(ctx)
			if err != nil || c[p.ID][store.StatusCompliant] != n {
				b.Fatalf("counts %v: %v", c, err)
			}
		}
	})
}
