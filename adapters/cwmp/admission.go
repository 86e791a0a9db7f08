package cwmp

import (
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// Admission of CWMP sessions (issue 15 §6): which source networks may
// connect at all, how often a device identity and a source address may
// start sessions, and how many sessions one identity may hold open. Each
// refusal is a 503 with Retry-After for new sessions only, which a CPE
// answers with its normal retry (TR-069 §3.4, docs/cwmp-interop.md #31).

// Rate is a token bucket: PerMinute informs on average, Burst at once.
// A zero PerMinute turns the limit off.
type Rate struct {
	PerMinute float64
	Burst     int
}

// sourceAllowed reports whether remote (host:port) is inside one of the
// allowed networks; no networks means every source is allowed.
func sourceAllowed(allowed []netip.Prefix, remote string) bool {
	if len(allowed) == 0 {
		return true
	}
	ip, err := netip.ParseAddr(sourceHost(remote))
	if err != nil {
		return false
	}
	ip = ip.Unmap()
	for _, p := range allowed {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// refuseSource answers a request from outside AllowSources: 403 and the
// connection closed, counted and logged within the log budget.
func (a *ACS) refuseSource(w http.ResponseWriter, r *http.Request) {
	metricSourceRefused.Inc()
	a.refusals.Warn("CWMP connection from a source outside DUET_CWMP_ALLOW_SOURCES refused", "remote", r.RemoteAddr)
	w.Header().Set("Connection", "close")
	http.Error(w, "source not allowed", http.StatusForbidden)
}

// shed answers 503 with Retry-After for a new session (TR-069 §3.4).
func shed(w http.ResponseWriter, reason string, retryAfter time.Duration, msg string) {
	metricShed.WithLabelValues(reason).Inc()
	secs := int(math.Ceil(retryAfter.Seconds()))
	if secs < 1 {
		secs = 1
	}
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	http.Error(w, msg, http.StatusServiceUnavailable)
}

// buckets is a bounded set of token buckets keyed by device identity or
// source address. When full, buckets that refilled completely (the same
// as absent) are dropped; if none did, an arbitrary one is, which at worst
// gives that key a fresh burst.
type buckets struct {
	rate  Rate
	max   int
	mu    sync.Mutex
	m     map[string]*bucket
	perNs float64 // tokens per nanosecond
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newBuckets(r Rate, max int) *buckets {
	return &buckets{rate: r, max: max, m: make(map[string]*bucket), perNs: r.PerMinute / float64(time.Minute)}
}

// take spends one token of key's bucket. When none is left it returns
// false and how long until one is.
func (b *buckets) take(key string, now time.Time) (bool, time.Duration) {
	if b.rate.PerMinute <= 0 {
		return true, 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	k, ok := b.m[key]
	if !ok {
		if len(b.m) >= b.max {
			b.purgeLocked(now)
			for x := range b.m {
				if len(b.m) < b.max {
					break
				}
				delete(b.m, x)
			}
		}
		k = &bucket{tokens: float64(b.rate.Burst), last: now}
		b.m[key] = k
	}
	k.tokens = math.Min(float64(b.rate.Burst), k.tokens+float64(now.Sub(k.last))*b.perNs)
	k.last = now
	if k.tokens >= 1 {
		k.tokens--
		return true, 0
	}
	return false, time.Duration((1 - k.tokens) / b.perNs)
}

func (b *buckets) purge(now time.Time) {
	if b.rate.PerMinute <= 0 {
		return
	}
	b.mu.Lock()
	b.purgeLocked(now)
	b.mu.Unlock()
}

func (b *buckets) purgeLocked(now time.Time) {
	for x, k := range b.m {
		if k.tokens+float64(now.Sub(k.last))*b.perNs >= float64(b.rate.Burst) {
			delete(b.m, x)
		}
	}
}

// sourceHost is the address part of remote (host:port), the key of the
// per-source rate.
func sourceHost(remote string) string {
	if host, _, err := net.SplitHostPort(remote); err == nil {
		return host
	}
	return remote
}
