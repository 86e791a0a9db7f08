package controller

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/duet-dm/duet/pkg/store"
)

var metricHistoryPruned = promauto.NewCounter(prometheus.CounterOpts{
	Name: "duet_controller_history_events_pruned_total",
	Help: "Device history events deleted for being older than the retention.",
})

// HistoryPruner deletes device history older than its retention,
// periodically (every tenth of the retention, at most hourly).
type HistoryPruner struct {
	st        *store.Store
	retention time.Duration
	every     time.Duration
	log       *slog.Logger
	cancel    context.CancelFunc
	done      chan struct{}
	once      sync.Once
}

// StartHistoryPruner starts pruning now and then periodically.
func StartHistoryPruner(st *store.Store, retention time.Duration, log *slog.Logger) *HistoryPruner {
	if log == nil {
		log = slog.Default()
	}
	every := min(max(retention/10, time.Second), time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	p := &HistoryPruner{st: st, retention: retention, every: every, log: log.With("component", "history"), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			n, err := st.DeleteEventsBefore(ctx, time.Now().Add(-retention), 10000)
			if err != nil && ctx.Err() == nil {
				p.log.Warn("pruning device history failed", "err", err)
			}
			if n > 0 {
				metricHistoryPruned.Add(float64(n))
				p.log.Info("pruned device history", "events", n, "retention", retention)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return p
}

// Stop stops pruning. Safe to call twice.
func (p *HistoryPruner) Stop() {
	p.once.Do(func() {
		p.cancel()
		<-p.done
	})
}
