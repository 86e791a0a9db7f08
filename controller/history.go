package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/duet-dm/duet/pkg/store"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

var (
	metricHistoryPruned = promauto.NewCounter(prometheus.CounterOpts{
		Name: "duet_controller_history_events_pruned_total",
		Help: "Device history events deleted for being older than the retention.",
	})
	metricHistorySkipped = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_controller_history_events_skipped_total",
		Help: "Device events applied without a history row, their kind being kept for no time (DUET_EVENT_HISTORY_KINDS), by kind.",
	}, []string{"kind"})
)

// DefaultHistoryKinds is the default per-kind retention of device history
// (issue 12 item 5): Informs and periodic notifications, 288 a day for a
// CPE on a 300 s interval, are counted on the device (informs_total,
// last_inform_at) instead of stored; presence events are kept a week; every
// other kind — boots, bootstraps, value changes, transfers, faults, task
// outcomes — for the general retention.
const DefaultHistoryKinds = "inform=0,periodic=0,online=168h,offline=168h,connection_request=168h"

// ParseHistoryKinds reads a per-kind retention list, "kind=duration,…"
// (a Go duration; 0 keeps no row of that kind), or "none" (no kind has a
// retention of its own). An unknown kind, a
// malformed or negative duration, or a kind given twice is an error that
// names it.
func ParseHistoryKinds(s string) (map[string]time.Duration, error) {
	out := map[string]time.Duration{}
	if strings.TrimSpace(s) == "none" {
		return out, nil
	}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		kind, v, ok := strings.Cut(item, "=")
		kind = strings.TrimSpace(kind)
		if !ok {
			return nil, fmt.Errorf("%q: want kind=duration", item)
		}
		if !eventKinds[kind] {
			return nil, fmt.Errorf("%q is not an event kind; one of %s", kind, EventKindNames())
		}
		if _, dup := out[kind]; dup {
			return nil, fmt.Errorf("%q is given twice", kind)
		}
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil || d < 0 {
			return nil, fmt.Errorf("%s=%s: want a duration such as 168h, or 0", kind, v)
		}
		out[kind] = d
	}
	return out, nil
}

// DefaultLatestOnlyKinds are the kinds of which the event stream keeps
// only each device's newest by default (bus.Options.LatestOnlyKinds).
const DefaultLatestOnlyKinds = "inform,periodic"

// ParseEventKinds reads a comma list of event kinds, or "none"; an
// unknown kind is an error that names it.
func ParseEventKinds(s string) ([]string, error) {
	var out []string
	if strings.TrimSpace(s) == "none" {
		return nil, nil
	}
	for _, k := range strings.Split(s, ",") {
		k = strings.TrimSpace(k)
		if k == "" {
			continue
		}
		if !eventKinds[k] {
			return nil, fmt.Errorf("%q is not an event kind; one of %s", k, EventKindNames())
		}
		if !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	return out, nil
}

// HistoryOptions say what device history keeps and for how long.
type HistoryOptions struct {
	// Retention of every kind not in ByKind.
	Retention time.Duration
	// ByKind overrides Retention per event kind; 0 stores no row of
	// that kind at all.
	ByKind map[string]time.Duration
	// TombstoneRetention is how long the parameter cache remembers a
	// deleted subtree (store.PruneParameterTombstones): as long as an
	// event can wait in the stream (DUET_EVENT_RETENTION). Default 168 h.
	TombstoneRetention time.Duration
}

// keeps reports whether events of kind get a history row.
func (o HistoryOptions) keeps(kind string) bool {
	d, ok := o.ByKind[kind]
	return !ok || d > 0
}

// HistoryPruner deletes device history older than its retention,
// periodically (every tenth of the shortest retention, at most hourly).
type HistoryPruner struct {
	st     *store.Store
	o      HistoryOptions
	log    *slog.Logger
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

// StartHistoryPruner starts pruning now and then periodically, one
// retention for every kind.
func StartHistoryPruner(st *store.Store, retention time.Duration, log *slog.Logger) *HistoryPruner {
	return StartHistoryPrunerWith(st, HistoryOptions{Retention: retention}, log)
}

// StartHistoryPrunerWith starts pruning with per-kind retentions.
func StartHistoryPrunerWith(st *store.Store, o HistoryOptions, log *slog.Logger) *HistoryPruner {
	if log == nil {
		log = slog.Default()
	}
	if o.TombstoneRetention <= 0 {
		o.TombstoneRetention = 168 * time.Hour
	}
	shortest := o.Retention
	var kinds []string
	for k, d := range o.ByKind {
		kinds = append(kinds, k)
		if d > 0 {
			shortest = min(shortest, d)
		}
	}
	slices.Sort(kinds)
	every := min(max(shortest/10, time.Second), time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	p := &HistoryPruner{st: st, o: o, log: log.With("component", "history"), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			p.prune(ctx, kinds)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return p
}

func (p *HistoryPruner) prune(ctx context.Context, kinds []string) {
	now := time.Now()
	n, err := p.st.DeleteEventsBeforeExcept(ctx, now.Add(-p.o.Retention), kinds, 10000)
	for _, k := range kinds {
		// A kind kept for no time has no new rows, but may have old
		// ones from before it was configured so: they go now.
		m, kerr := p.st.DeleteEventsOfKindBefore(ctx, k, now.Add(-p.o.ByKind[k]), 10000)
		n += m
		err = errors.Join(err, kerr)
	}
	if err != nil && ctx.Err() == nil {
		p.log.Warn("pruning device history failed", "err", err)
	}
	if n > 0 {
		metricHistoryPruned.Add(float64(n))
		p.log.Info("pruned device history", "events", n, "retention", p.o.Retention)
	}
	if _, err := p.st.PruneParameterTombstones(ctx, now.Add(-p.o.TombstoneRetention)); err != nil && ctx.Err() == nil {
		p.log.Warn("pruning parameter cache tombstones failed", "err", err)
	}
}

// Stop stops pruning. Safe to call twice.
func (p *HistoryPruner) Stop() {
	p.once.Do(func() {
		p.cancel()
		<-p.done
	})
}

// eventKinds are the snake_case names of Event.kind, the last token of an
// event subject.
var eventKinds = func() map[string]bool {
	out := map[string]bool{}
	fs := (&duetv1.Event{}).ProtoReflect().Descriptor().Oneofs().ByName("kind").Fields()
	for i := 0; i < fs.Len(); i++ {
		out[string(fs.Get(i).Name())] = true
	}
	return out
}()

// IsEventKind reports whether k names a kind of device event.
func IsEventKind(k string) bool { return eventKinds[k] }

// EventKindNames lists the event kinds, sorted and comma separated, for
// error messages.
func EventKindNames() string {
	var n []string
	for k := range eventKinds {
		n = append(n, k)
	}
	sort.Strings(n)
	return strings.Join(n, ", ")
}
