package main

import (
	"log/slog"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// latencies is a histogram of CWMP session durations with buckets a
// factor 2^(1/4) apart from 0.1 ms, for percentiles within about 19 %:
// 100k CPEs cannot each keep their samples.
type latencies struct {
	mu sync.Mutex
	h  histogram
}

// histogram is the counts of latencies at one moment.
type histogram struct {
	buckets [96]uint64
	n       uint64
}

const latencyBase = 100 * time.Microsecond

func (l *latencies) add(d time.Duration) {
	i := 0
	if d > latencyBase {
		i = min(int(4*math.Log2(float64(d)/float64(latencyBase)))+1, len(l.h.buckets)-1)
	}
	l.mu.Lock()
	l.h.buckets[i]++
	l.h.n++
	l.mu.Unlock()
}

// snapshot returns a copy to compute percentiles of an interval from.
func (l *latencies) snapshot() histogram {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.h
}

// since is what was added after an earlier snapshot.
func (l histogram) since(earlier histogram) histogram {
	for i := range l.buckets {
		l.buckets[i] -= earlier.buckets[i]
	}
	l.n -= earlier.n
	return l
}

// percentile returns the upper bound of the bucket holding the p-th
// percentile (0 < p <= 100), in milliseconds; 0 with no samples.
func (l histogram) percentile(p float64) float64 {
	if l.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(p / 100 * float64(l.n)))
	var seen uint64
	for i, c := range l.buckets {
		seen += c
		if seen >= rank {
			upper := float64(latencyBase) * math.Pow(2, float64(i)/4)
			return math.Round(upper/1e4) / 100 // ms, two decimals
		}
	}
	return 0
}

// cwmpCounters are the CPE fleet's totals, updated by SessionObserver.
type cwmpCounters struct {
	up       atomic.Int64 // CPEs with at least one successful session
	sessions atomic.Uint64
	errors   atomic.Uint64
	lat      latencies
}

// summary is the final JSON line, for benchmarks.
type summary struct {
	Seconds          float64  `json:"seconds"`
	CWMPCPEs         int      `json:"cwmp_cpes"`
	CWMPUp           int64    `json:"cwmp_up"`
	Sessions         uint64   `json:"cwmp_sessions"`
	SessionsPerSec   float64  `json:"cwmp_sessions_per_s"`
	SessionErrors    uint64   `json:"cwmp_session_errors"`
	Informs          uint64   `json:"cwmp_informs"`
	RPCs             uint64   `json:"cwmp_rpcs"`
	LatencyP50ms     float64  `json:"cwmp_session_p50_ms"`
	LatencyP95ms     float64  `json:"cwmp_session_p95_ms"`
	LatencyP99ms     float64  `json:"cwmp_session_p99_ms"`
	USPAgents        int      `json:"usp_agents"`
	USPConnected     int      `json:"usp_connected"`
	USPConnectPerS   *float64 `json:"usp_connect_per_s,omitempty"`
	USPConnectErrors uint64   `json:"usp_connect_errors"`
	USPBoots         int      `json:"usp_boots"`
	RSSMB            int64    `json:"sim_rss_mb"`
	KBPerDevice      float64  `json:"sim_kb_per_device,omitempty"`
	LoadAverage1Min  *float64 `json:"load_average_1m,omitempty"`
}

// errorCounter counts the failed agent connections (they are retried)
// and keeps the last one for the progress line; the first is logged.
type errorCounter struct {
	log  *slog.Logger
	n    atomic.Uint64
	mu   sync.Mutex
	text string
}

func (e *errorCounter) record(err error) {
	if e.n.Add(1) == 1 {
		e.log.Warn("USP agent connection failed; retrying", "err", err)
	}
	e.mu.Lock()
	e.text = err.Error()
	e.mu.Unlock()
}

// last is ", last: <error>" after a failure, else "".
func (e *errorCounter) last() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.text == "" {
		return ""
	}
	return " (last: " + e.text + ")"
}

// readyRate is the agents connected per second over the fleets that
// finished connecting: agents over the time the last one took.
type readyRate struct {
	mu      sync.Mutex
	n       int
	elapsed time.Duration
}

func (r *readyRate) add(n int, elapsed time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n += n
	r.elapsed = max(r.elapsed, elapsed)
}

func (r *readyRate) rate() *float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == 0 {
		return nil
	}
	v := math.Round(float64(r.n)/r.elapsed.Seconds()*10) / 10
	return &v
}

// rssKB is the process's resident memory (VmRSS), 0 where /proc is missing.
func rssKB() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}
