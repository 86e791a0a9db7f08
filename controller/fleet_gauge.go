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

var metricDevices = promauto.NewGaugeVec(prometheus.GaugeOpts{
	Name: "duet_devices",
	Help: "Devices in the registry by protocol (cwmp, usp) and state (online, offline, rebooting: as the API's device state); known = the sum. Recounted every 30 s by one controller replica (the others report nothing, so sum() over replicas is right).",
}, []string{"protocol", "state"})

var metricTasksOpen = promauto.NewGaugeVec(prometheus.GaugeOpts{
	Name: "duet_tasks_open",
	Help: "The task queue's depth: tasks queued (waiting for their device), dispatched (waiting for the device's answer) and awaiting (accepted by the device, waiting for its completion: a transfer, an async command, a reboot). Recounted with duet_devices by one replica.",
}, []string{"state"})

// DeviceGaugeEvery is how often duet_devices is recounted.
const DeviceGaugeEvery = 30 * time.Second

// DeviceGauge keeps duet_devices and duet_tasks_open current. One controller replica counts,
// the holder of the "device-gauge" lease; a replica that loses or lacks
// it reports nothing, so the replicas never double the fleet.
type DeviceGauge struct {
	st     *store.Store
	every  time.Duration
	log    *slog.Logger
	lease  *store.Lease
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

// StartDeviceGauge counts at once, then every interval (DeviceGaugeEvery
// when 0).
func StartDeviceGauge(st *store.Store, every time.Duration, log *slog.Logger) *DeviceGauge {
	if log == nil {
		log = slog.Default()
	}
	if every <= 0 {
		every = DeviceGaugeEvery
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &DeviceGauge{st: st, every: every, log: log.With("component", "device-gauge"), cancel: cancel, done: make(chan struct{})}
	go g.loop(ctx)
	return g
}

func (g *DeviceGauge) loop(ctx context.Context) {
	defer close(g.done)
	t := time.NewTicker(g.every)
	defer t.Stop()
	defer func() {
		if g.lease != nil {
			rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			g.lease.Release(rctx)
			cancel()
			metricDevices.Reset()
			metricTasksOpen.Reset()
		}
	}()
	for {
		if err := g.count(ctx); err != nil && ctx.Err() == nil {
			g.log.Warn("counting devices failed; retrying on the next tick", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (g *DeviceGauge) count(ctx context.Context) error {
	if g.lease != nil && !g.lease.Alive(ctx) {
		g.lease.Release(ctx)
		g.lease = nil
		metricDevices.Reset() // the next holder reports them
		metricTasksOpen.Reset()
	}
	if g.lease == nil {
		l, ok, err := g.st.TryLease(ctx, "device-gauge")
		if err != nil || !ok {
			return err
		}
		g.lease = l
	}
	counts, err := g.st.CountDevicesByState(ctx)
	if err != nil {
		return err
	}
	// Both states of both protocols always exist, at 0 when empty, so a
	// dashboard shows 0 rather than no data.
	next := map[[2]string]float64{}
	for _, p := range []string{"cwmp", "usp"} {
		next[[2]string{p, "online"}], next[[2]string{p, "offline"}], next[[2]string{p, "rebooting"}] = 0, 0, 0
	}
	for _, c := range counts {
		state := "offline"
		switch {
		case c.Rebooting:
			state = "rebooting"
		case c.Online:
			state = "online"
		}
		next[[2]string{c.Protocol, state}] += float64(c.Devices)
	}
	for k, v := range next {
		metricDevices.WithLabelValues(k[0], k[1]).Set(v)
	}
	queued, dispatched, awaiting, err := g.st.CountOpenTasks(ctx)
	if err != nil {
		return err
	}
	metricTasksOpen.WithLabelValues("queued").Set(float64(queued))
	metricTasksOpen.WithLabelValues("dispatched").Set(float64(dispatched))
	metricTasksOpen.WithLabelValues("awaiting").Set(float64(awaiting))
	return nil
}

// Stop stops counting and gives the lease up. Safe to call twice.
func (g *DeviceGauge) Stop() {
	g.once.Do(func() {
		g.cancel()
		<-g.done
	})
}
