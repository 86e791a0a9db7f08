package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/sim/cpe"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// BenchmarkCWMPSessionCPU (issue 17) measures what one steady-state
// periodic Inform session costs the server: the CPU time of the duet
// process (every component, embedded NATS included) and of the
// PostgreSQL backends serving its database, over a window of
// DUET_BENCH_WINDOW (default 20 s), divided by the sessions completed in
// it. The CPEs (pkg/sim/cpe, a new TCP connection per session, Inform +
// empty POST, no RPCs) run in this process; their CPU is not counted.
//
//   - rate=200: 200 CPEs informing every second, a moderate load;
//   - saturation: 2,500 CPEs every second, more than the machine serves.
//
// After the window the CPEs stop and the registry drains: the CPU of the
// drain is added to the window's (total-ms/session), and what was behind
// at the window's end is reported (lag-events, drain-s), and how fast it
// grew in the window (lag-growth/s: above 0, the registry falls behind).
// CPU time, not
// wall time, so other load on the machine matters less; PostgreSQL's
// shared background processes (WAL writer, checkpointer, autovacuum) are
// not counted. DUET_BENCH_PPROF=dir saves a CPU and an allocation profile
// of duet over the window. Run with -benchtime=1x.
func BenchmarkCWMPSessionCPU(b *testing.B) {
	window := 20 * time.Second
	if v := os.Getenv("DUET_BENCH_WINDOW"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatalf("DUET_BENCH_WINDOW: %v", err)
		}
		window = d
	}
	for _, c := range []struct {
		name string
		cpes int
	}{{"rate=200", 200}, {"saturation", 2500}} {
		b.Run(c.name, func(b *testing.B) {
			for range b.N {
				cwmpSessionCPU(b, c.name, c.cpes, time.Second, window)
			}
		})
	}
}

func cwmpSessionCPU(b *testing.B, name string, n int, interval, window time.Duration) {
	b.StopTimer()
	dbURL := storetest.NewDatabase(b)
	env := baseEnv(b, dbURL)
	env["DUET_CWMP_MAX_SESSIONS"] = "10000"
	// The fleet informs every second from one address: the inform rate
	// limits (docs/guide-cwmp.md) would shed most of it.
	env["DUET_CWMP_INFORM_RATE_DEVICE"] = "0"
	env["DUET_CWMP_INFORM_RATE_SOURCE"] = "0"
	pprofDir := os.Getenv("DUET_BENCH_PPROF")
	if pprofDir != "" {
		env["DUET_PPROF_ADDR"] = "127.0.0.1:" + strconv.Itoa(freePort(b))
	}
	d := startDuet(b, env, "serve")
	d.waitReady(60 * time.Second)
	acs := "http://" + env["DUET_CWMP_ADDR"] + "/"
	f, err := cpe.NewFleet(cpe.FleetOptions{N: n, SerialPrefix: "CPU", Template: cpe.Options{ACSURL: acs,
		DataModelPath: cwmpModels[0].path, OUI: "00D09E", ProductClass: "CPU", PeriodicInterval: interval,
		RetryMinWait: time.Second, Bootstrapped: true}})
	if err != nil {
		b.Fatal(err)
	}
	if err := f.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	defer f.Stop()
	// Warm up: every CPE past its first contact (1 BOOT, the first
	// reads), then a few steady seconds.
	bustest.CheckFor(b, 5*time.Minute, 100*time.Millisecond, func() error {
		for _, c := range f.CPEs() {
			if c.Stats().Sessions < 2 {
				return fmt.Errorf("%s: %d sessions", c.DeviceID(), c.Stats().Sessions)
			}
		}
		return nil
	})
	// Not drained: at saturation the registry may never catch up, which
	// is what lag-growth/s reports.
	time.Sleep(3 * time.Second)

	pg := storetest.NewBackendCPU(b, dbURL)
	lag0 := d.consumerPending()
	duet0, pg0, s0 := procCPU(b, d.cmd.Process.Pid), pg.Used(), f.Stats()
	t0 := time.Now()
	var profiles chan error
	if pprofDir != "" {
		profiles = make(chan error, 1)
		go func() { profiles <- saveProfiles(env["DUET_PPROF_ADDR"], pprofDir, name, window) }()
	}
	b.StartTimer()
	time.Sleep(window)
	b.StopTimer()
	duet1, pg1, s1 := procCPU(b, d.cmd.Process.Pid), pg.Used(), f.Stats()
	elapsed := time.Since(t0)
	lag := d.consumerPending()
	f.Stop()
	t1 := time.Now()
	d.eventsDrained(10 * time.Minute)
	drain := time.Since(t1)
	duet2, pg2 := procCPU(b, d.cmd.Process.Pid), pg.Used()
	if profiles != nil {
		if err := <-profiles; err != nil {
			b.Error(err)
		}
	}
	sessions := float64(s1.Sessions - s0.Sessions)
	if sessions == 0 {
		b.Fatal("no session completed in the window")
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) / sessions }
	b.ReportMetric(sessions/elapsed.Seconds(), "sessions/s")
	b.ReportMetric(float64(s1.FailedSessions-s0.FailedSessions), "failed")
	b.ReportMetric(ms(duet1-duet0), "duet-ms/session")
	b.ReportMetric(ms(pg1-pg0), "pg-ms/session")
	b.ReportMetric(ms(duet1-duet0+pg1-pg0), "server-ms/session")
	b.ReportMetric(ms(duet2-duet0+pg2-pg0), "total-ms/session")
	b.ReportMetric(float64(lag), "lag-events")
	b.ReportMetric((float64(lag)-float64(lag0))/elapsed.Seconds(), "lag-growth/s")
	b.ReportMetric(drain.Seconds(), "drain-s")
	b.Logf("%s: %.0f sessions in %s; load average %s", name, sessions, elapsed.Round(time.Millisecond), loadAverage())
}

// procCPU is the user + system CPU time a process has used so far.
func procCPU(tb testing.TB, pid int) time.Duration {
	tb.Helper()
	d, ok := storetest.ProcCPU(pid)
	if !ok {
		tb.Fatalf("cannot read the CPU time of process %d", pid)
	}
	return d
}

// consumerPending is how many events the registry has not applied yet.
func (d *duet) consumerPending() uint64 {
	d.t.Helper()
	nc, err := natsConnect(d.Env)
	if err != nil {
		d.t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		d.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := controllerConsumer(ctx, js)
	if err != nil {
		d.t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		d.t.Fatal(err)
	}
	return info.NumPending + uint64(info.NumAckPending)
}

func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(data))[:3], " ")
}

// saveProfiles takes a CPU profile over window and then the allocation
// profile of duet's pprof listener, into dir/<name>.{cpu,allocs}.pprof.
func saveProfiles(addr, dir, name string, window time.Duration) error {
	name = strings.NewReplacer("=", "", "/", "_").Replace(name)
	for _, p := range []struct{ path, file string }{
		{"/debug/pprof/profile?seconds=" + strconv.Itoa(int(window.Seconds())), name + ".cpu.pprof"},
		{"/debug/pprof/allocs", name + ".allocs.pprof"},
	} {
		res, err := http.Get("http://" + addr + p.path)
		if err != nil {
			return err
		}
		out, err := os.Create(filepath.Join(dir, p.file))
		if err != nil {
			res.Body.Close()
			return err
		}
		_, err = out.ReadFrom(res.Body)
		res.Body.Close()
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return nil
}
