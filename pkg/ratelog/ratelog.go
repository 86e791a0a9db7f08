// Package ratelog is a log/slog wrapper for lines a peer can cause at will:
// refused input, bad records, failed logins. Each message gets a small
// budget (a burst, refilled at a steady rate); lines past it are counted,
// not written, and the next line written says how many were suppressed. So
// 20,000 garbage records write a few dozen lines, not megabytes (issue 15
// §8), while one bad device's first refusal is still logged with its
// reason.
package ratelog

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Logger rate-limits lines per message text. The zero value is not usable;
// use New. Safe for concurrent use.
type Logger struct {
	log   *slog.Logger
	burst float64
	rate  float64 // lines per second
	now   func() time.Time

	buckets map[string]*bucket
}

type bucket struct {
	tokens     float64
	last       time.Time
	suppressed int
}

// maxMessages bounds the per-message table; messages are constants in
// code, so it is only a guard against a caller that formats its message.
const maxMessages = 1024

// New wraps log: each message may be written burst times at once and then
// perSecond times a second. New(log, 0, 0) uses 10 and 1.
func New(log *slog.Logger, burst int, perSecond float64) *Logger {
	if log == nil {
		log = slog.Default()
	}
	if burst <= 0 {
		burst = 10
	}
	if perSecond <= 0 {
		perSecond = 1
	}
	return &Logger{log: log, burst: float64(burst), rate: perSecond, now: time.Now, buckets: map[string]*bucket{}}
}

// With returns a Logger sharing this one's budgets with attributes added.
func (l *Logger) With(args ...any) *Logger {
	// Budgets are shared: the copy points at the same (globalMu-guarded) map.
	return &Logger{log: l.log.With(args...), burst: l.burst, rate: l.rate, now: l.now, buckets: l.buckets}
}

// Warn logs at warn level within the budget of msg.
func (l *Logger) Warn(msg string, args ...any) {
	l.Log(context.Background(), slog.LevelWarn, msg, args...)
}

// Info logs at info level within the budget of msg.
func (l *Logger) Info(msg string, args ...any) {
	l.Log(context.Background(), slog.LevelInfo, msg, args...)
}

// Debug logs at debug level within the budget of msg.
func (l *Logger) Debug(msg string, args ...any) {
	l.Log(context.Background(), slog.LevelDebug, msg, args...)
}

// Log writes the line if msg's budget allows, adding "suppressed" (lines
// dropped since the last one written) when some were.
func (l *Logger) Log(ctx context.Context, level slog.Level, msg string, args ...any) {
	if !l.log.Enabled(ctx, level) {
		return
	}
	ok, suppressed := l.allow(msg)
	if !ok {
		return
	}
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	l.log.Log(ctx, level, msg, args...)
}

func (l *Logger) allow(msg string) (bool, int) {
	globalMu.Lock()
	defer globalMu.Unlock()
	now := l.now()
	b := l.buckets[msg]
	if b == nil {
		if len(l.buckets) >= maxMessages {
			for k := range l.buckets {
				delete(l.buckets, k)
				break
			}
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[msg] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens < 1 {
		b.suppressed++
		return false, 0
	}
	b.tokens--
	s := b.suppressed
	b.suppressed = 0
	return true, s
}

// globalMu guards every Logger's buckets; refusal paths are cold enough
// that one lock is no contention, and it lets With share the map safely.
var globalMu sync.Mutex
