package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/store/storetest"
)

// BenchmarkDuetSimCWMP (issues 16 and 17) runs the fleet simulator, the
// real duet-sim binary, with DUET_BENCH_CPES CWMP CPEs (default 10000;
// several comma-separated, e.g. "10000,100000") against `duet serve`
// (embedded NATS, real PostgreSQL), each informing every
// DUET_BENCH_INTERVAL (default 60 s, a rate this machine holds; 10 s
// offers more than it serves: the figures at saturation). Once every CPE
// has had its first session (bootstrap) it measures, over
// DUET_BENCH_WINDOW (default 60 s): the
// sessions Duet completed per second, the CPU time of duet and of the
// PostgreSQL backends serving its database per session (read from /proc
// as BenchmarkCWMPSessionCPU does), the controller's consumer lag, and the
// simulator's resident memory per CPE. Run with -benchtime=1x; the
// simulator's progress lines go to the test log with -v.
//
//	DUET_BENCH_CPES=100000 DUET_BENCH_INTERVAL=300s DUET_BENCH_WARMUP=25m go test -run '^$' -bench DuetSimCWMP -benchtime 1x -timeout 2h ./e2e
func BenchmarkDuetSimCWMP(b *testing.B) {
	counts := os.Getenv("DUET_BENCH_CPES")
	if counts == "" {
		counts = "10000"
	}
	interval, window := benchDuration(b, "DUET_BENCH_INTERVAL", time.Minute), benchDuration(b, "DUET_BENCH_WINDOW", time.Minute)
	sim := filepath.Join(b.TempDir(), "duet-sim")
	if out, err := exec.Command("go", "build", "-o", sim, "../cmd/duet-sim").CombinedOutput(); err != nil {
		b.Fatalf("build duet-sim: %v\n%s", err, out)
	}
	for _, s := range strings.Split(counts, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			b.Fatalf("DUET_BENCH_CPES: %q is not a count", s)
		}
		b.Run(fmt.Sprintf("cpes=%d", n), func(b *testing.B) {
			for range b.N {
				duetSimCWMP(b, sim, n, interval, window)
			}
		})
	}
}

func benchDuration(b *testing.B, name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		b.Fatalf("%s: %v", name, err)
	}
	return d
}

func duetSimCWMP(b *testing.B, sim string, n int, interval, window time.Duration) {
	b.StopTimer()
	dbURL := storetest.NewDatabase(b)
	env := baseEnv(b, dbURL)
	env["DUET_CWMP_MAX_SESSIONS"] = "10000"
	env["DUET_CWMP_INFORM_RATE_DEVICE"] = "0" // one source address informing at saturation
	env["DUET_CWMP_INFORM_RATE_SOURCE"] = "0"
	env["DUET_LOG_LEVEL"] = "warn"
	d := startDuet(b, env, "serve")
	d.waitReady(60 * time.Second)

	cmd := exec.Command(sim, "--cwmp", strconv.Itoa(n), "--acs", "http://"+env["DUET_CWMP_ADDR"]+"/",
		"--connreq=false", "--periodic", interval.String(), "--report", "10s", "--datamodels", "../testdata/datamodel",
		"--prefix", fmt.Sprintf("B%d", time.Now().UnixNano()%1e6))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	}()
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			b.Log("duet-sim: " + sc.Text())
		}
	}()
	// Every CPE past its bootstrap session (in the registry), then the
	// window: periodic informs. A saturated server may never get there:
	// after DUET_BENCH_WARMUP (default 10 min) the window starts anyway,
	// and the log says how far the registry got.
	warm := time.Now().Add(benchDuration(b, "DUET_BENCH_WARMUP", 10*time.Minute))
	for k := 0.0; k < float64(n) && time.Now().Before(warm); time.Sleep(5 * time.Second) {
		k = metricSum(d, `duet_devices{protocol="cwmp",`)
	}
	known := metricSum(d, `duet_devices{protocol="cwmp",`)
	pg := storetest.NewBackendCPU(b, dbURL)
	duet0, pg0, s0, lag0 := procCPU(b, d.cmd.Process.Pid), pg.Used(), cwmpSessions(d), d.consumerPending()
	t0 := time.Now()
	b.StartTimer()
	time.Sleep(window)
	b.StopTimer()
	duet1, pg1, s1, lag1 := procCPU(b, d.cmd.Process.Pid), pg.Used(), cwmpSessions(d), d.consumerPending()
	elapsed := time.Since(t0)
	sessions := s1 - s0
	if sessions <= 0 {
		b.Fatal("no session completed in the window")
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) / sessions }
	rss := procRSSKB(b, cmd.Process.Pid)
	b.ReportMetric(sessions/elapsed.Seconds(), "sessions/s")
	b.ReportMetric(ms(duet1-duet0), "duet-ms/session")
	b.ReportMetric(ms(pg1-pg0), "pg-ms/session")
	b.ReportMetric(ms(duet1-duet0+pg1-pg0), "server-ms/session")
	b.ReportMetric(float64(lag1), "lag-events")
	b.ReportMetric((float64(lag1)-float64(lag0))/elapsed.Seconds(), "lag-growth/s")
	b.ReportMetric(float64(rss)/float64(n), "sim-KB/CPE")
	b.ReportMetric(float64(procRSSKB(b, d.cmd.Process.Pid))/1024, "duet-MB")
	b.ReportMetric(known, "registry-cpes")
	b.Logf("%d CPEs (%.0f in the registry at the window's start): %.0f sessions in %s; load average %s", n, known, sessions, elapsed.Round(time.Millisecond), loadAverage())
}

// cwmpSessions is the CWMP sessions duet has ended, however they ended.
func cwmpSessions(d *duet) float64 { return metricSum(d, "duet_cwmp_sessions_total{") }

// metricSum adds up the samples of duet's metrics whose line starts with
// prefix (a metric name and the start of its labels).
func metricSum(d *duet, prefix string) float64 {
	d.t.Helper()
	_, body := d.get("/metrics")
	var sum float64
	for _, line := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			if _, v, ok := strings.Cut(rest, "} "); ok {
				f, _ := strconv.ParseFloat(v, 64)
				sum += f
			}
		}
	}
	return sum
}

// procRSSKB is a process's resident memory (VmRSS of /proc/<pid>/status).
func procRSSKB(tb testing.TB, pid int) int64 {
	tb.Helper()
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				tb.Fatalf("VmRSS %q", v)
			}
			return n
		}
	}
	tb.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}
