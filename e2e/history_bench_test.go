package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/sim/cpe"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// historyBytes is what device history occupies: every PostgreSQL table
// whose name starts with device_event (table, indexes and TOAST,
// pg_total_relation_size) and every JetStream stream (bytes stored).
func historyBytes(tb testing.TB, dbURL string, env map[string]string) (pg, js int64) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, `SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind = 'r' AND n.nspname = current_schema() AND c.relname LIKE 'device\_event%'`).Scan(&pg); err != nil {
		tb.Fatal(err)
	}
	nc, err := natsConnect(env)
	if err != nil {
		tb.Fatal(err)
	}
	defer nc.Close()
	jsc, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	for name := range jsc.StreamNames(ctx).Name() {
		s, err := jsc.Stream(ctx, name)
		if err != nil {
			tb.Fatal(err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			tb.Fatal(err)
		}
		js += int64(info.State.Bytes)
	}
	return pg, js
}

// BenchmarkHistoryBytesPerDeviceDay (issue 12 item 5) measures what a day
// of a CPE on a 300 s periodic inform interval costs in device history at
// the default settings: 288 periodic sessions per simulated CPE (run back
// to back, the interval shortened), then the growth of the device_event*
// tables (pg_total_relation_size) and of the JetStream streams, per
// device. Run it with -benchtime=1x: one iteration is one simulated day.
func BenchmarkHistoryBytesPerDeviceDay(b *testing.B) {
	const devices, sessionsPerDay = 10, 288 // 86400 s / 300 s
	dbURL := storetest.NewDatabase(b)
	env := baseEnv(b, dbURL)
	d := startDuet(b, env, "serve")
	d.waitReady(60 * time.Second)
	acs := "http://" + env["DUET_CWMP_ADDR"] + "/"
	var pgPerDay, jsPerDay float64
	for i := range b.N {
		var cpes []*cpe.CPE
		for n := range devices {
			c, err := cpe.New(cpe.Options{ACSURL: acs, DataModelPath: cwmpModels[0].path, OUI: "00D09E", ProductClass: "HIST",
				Serial: fmt.Sprintf("H%d-%d", i, n), PeriodicInterval: time.Hour, RetryMinWait: 200 * time.Millisecond, Bootstrapped: true})
			if err != nil {
				b.Fatal(err)
			}
			if err := c.Start(context.Background()); err != nil {
				b.Fatal(err)
			}
			cpes = append(cpes, c)
		}
		bustest.CheckFor(b, 60*time.Second, 50*time.Millisecond, func() error {
			for _, c := range cpes {
				if c.Stats().Sessions < 1 {
					return fmt.Errorf("%s has not informed", c.DeviceID())
				}
			}
			return nil
		})
		d.eventsDrained(60 * time.Second)
		pg0, js0 := historyBytes(b, dbURL, env)
		for _, c := range cpes {
			_ = c.Close()
		}
		// The same identities again, informing every 20 ms with
		// "2 PERIODIC" as they would every 300 s.
		cpes = cpes[:0]
		for n := range devices {
			c, err := cpe.New(cpe.Options{ACSURL: acs, DataModelPath: cwmpModels[0].path, OUI: "00D09E", ProductClass: "HIST",
				Serial: fmt.Sprintf("H%d-%d", i, n), PeriodicInterval: 20 * time.Millisecond, RetryMinWait: 200 * time.Millisecond,
				Bootstrapped: true})
			if err != nil {
				b.Fatal(err)
			}
			cpes = append(cpes, c)
		}
		b.StartTimer()
		for _, c := range cpes {
			if err := c.Start(context.Background()); err != nil {
				b.Fatal(err)
			}
		}
		// The first session of each is its "1 BOOT"; count the periodic
		// ones after it.
		bustest.CheckFor(b, 10*time.Minute, 100*time.Millisecond, func() error {
			for _, c := range cpes {
				if s := c.Stats().Sessions; s < sessionsPerDay+1 {
					return fmt.Errorf("%s: %d sessions", c.DeviceID(), s)
				}
			}
			return nil
		})
		var sessions uint64
		for _, c := range cpes {
			_ = c.Close()
			sessions += c.Stats().Sessions
		}
		d.eventsDrained(60 * time.Second)
		b.StopTimer()
		pg1, js1 := historyBytes(b, dbURL, env)
		// Scale to exactly one day: a few CPEs ran a session or two
		// more before they were stopped.
		scale := float64(devices*(sessionsPerDay+1)) / float64(sessions)
		pgPerDay += float64(pg1-pg0) * scale / devices
		jsPerDay += float64(js1-js0) * scale / devices
	}
	b.ReportMetric(pgPerDay/float64(b.N), "pg-B/device/day")
	b.ReportMetric(jsPerDay/float64(b.N), "js-B/device/day")
	b.ReportMetric((pgPerDay+jsPerDay)/float64(b.N), "history-B/device/day")
}
