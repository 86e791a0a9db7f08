package cwmp

import (
	"context"
	"net"
	"sync"
	"time"
)

// connInfo is the per-TCP-connection state, attached to every request's
// context by tagConn (http.Server.ConnContext). Sessions are keyed by it
// first and by the cookie second (docs/cwmp-interop.md #9, #10).
type connInfo struct {
	remote string

	mu         sync.Mutex
	sess       *session
	authDevice string // device the connection authenticated as; "" = not yet
	authKind   string // with which credentials (kindShared, kindDevice, kindPending)
	authFails  int
}

type connKey struct{}

func tagConn(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, &connInfo{remote: c.RemoteAddr().String()})
}

func connFrom(ctx context.Context, remote string) *connInfo {
	if ci, ok := ctx.Value(connKey{}).(*connInfo); ok {
		return ci
	}
	// Handler() mounted on a server we do not own: no connection identity,
	// so every request stands alone and sessions rely on the cookie.
	return &connInfo{remote: remote}
}

func (c *connInfo) session() *session {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sess != nil && c.sess.isEnded() {
		c.sess = nil
	}
	return c.sess
}

func (c *connInfo) setSession(s *session) {
	c.mu.Lock()
	c.sess = s
	c.mu.Unlock()
}

// sessionTable holds the open sessions, at most max of them (the bound is
// the load-shedding limit: past it new sessions get 503, docs/cwmp-interop.md #31).
type sessionTable struct {
	mu     sync.Mutex
	max    int
	maxDev int // open sessions per device identity
	m      map[string]*session
	perDev map[string]int
}

func newSessionTable(max, maxDev int) *sessionTable {
	return &sessionTable{max: max, maxDev: maxDev, m: make(map[string]*session), perDev: make(map[string]int)}
}

func (t *sessionTable) full() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m) >= t.max
}

// add inserts s unless the table is full ("sessions") or s's device
// already holds its share of it ("device_sessions"); it returns the
// reason of a refusal, or "".
func (t *sessionTable) add(s *session) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.m) >= t.max {
		return "sessions"
	}
	if t.perDev[s.deviceID] >= t.maxDev {
		return "device_sessions"
	}
	t.m[s.id] = s
	t.perDev[s.deviceID]++
	metricSessionsActive.Inc()
	return ""
}

func (t *sessionTable) get(id string) *session {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.m[id]
}

func (t *sessionTable) remove(s *session) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m[s.id] != s {
		return false
	}
	delete(t.m, s.id)
	if t.perDev[s.deviceID]--; t.perDev[s.deviceID] <= 0 {
		delete(t.perDev, s.deviceID)
	}
	metricSessionsActive.Dec()
	return true
}

func (t *sessionTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

func (t *sessionTable) all() []*session {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*session, 0, len(t.m))
	for _, s := range t.m {
		out = append(out, s)
	}
	return out
}

// idle returns sessions whose last POST is older than cutoff and that are
// not in the middle of an exchange (an exchange is bounded by its own
// timeouts).
func (t *sessionTable) idle(cutoff time.Time) []*session {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []*session
	c := cutoff.UnixNano()
	for _, s := range t.m {
		if !s.busy.Load() && s.lastSeen.Load() < c {
			out = append(out, s)
		}
	}
	return out
}

// informClock remembers each device's last accepted Inform for
// MinInformInterval. It holds at most max devices; entries older than the
// interval are useless and purged, and when still full the check is
// skipped for new devices rather than growing (fail open: the session
// limit still protects us).
type informClock struct {
	interval time.Duration
	max      int
	mu       sync.Mutex
	last     map[string]time.Time
}

func newInformClock(interval time.Duration, max int) *informClock {
	return &informClock{interval: interval, max: max, last: make(map[string]time.Time)}
}

// allow reports whether device may inform now, and records it if so.
func (c *informClock) allow(device string, now time.Time) bool {
	if c.interval <= 0 {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if t, ok := c.last[device]; ok && now.Sub(t) < c.interval {
		return false
	}
	if len(c.last) >= c.max {
		c.purgeLocked(now)
		if len(c.last) >= c.max {
			return true
		}
	}
	c.last[device] = now
	return true
}

func (c *informClock) purge(now time.Time) {
	if c.interval <= 0 {
		return
	}
	c.mu.Lock()
	c.purgeLocked(now)
	c.mu.Unlock()
}

func (c *informClock) purgeLocked(now time.Time) {
	for d, t := range c.last {
		if now.Sub(t) >= c.interval {
			delete(c.last, d)
		}
	}
}

// forgetAuth makes the connection authenticate again: each session starts
// with its own authentication, since a device's credentials may have
// changed since the last (an enrolment, an operator's change).
func (c *connInfo) forgetAuth() {
	c.mu.Lock()
	c.authDevice, c.authKind = "", ""
	c.mu.Unlock()
}
