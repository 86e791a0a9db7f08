package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/store"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// CWMP presence (issue 11 §3). A USP agent's presence follows its MTP
// connection; a CPE has none between sessions. It is online while it keeps
// its inform schedule: TR-069 §3.2.1 has it open a session every
// ManagementServer.PeriodicInformInterval (when PeriodicInformEnable), so
// one that missed several is gone. The sweeper publishes an offline event
// (reason inform_overdue) for each, which the registry applies like any
// other: history, SSE and integrators see it; the next Inform brings the
// device back online. A connection request that failed for good is evidence
// too: a CPE that also missed its last scheduled inform goes offline then.

var metricCWMPOffline = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "duet_controller_cwmp_offline_total",
	Help: "CWMP devices taken offline by the presence sweeper, by reason (inform_overdue, connection_request_failed).",
}, []string{"reason"})

// Offline reasons the controller gives CPEs.
const (
	OfflineInformOverdue = "inform_overdue"
	OfflineConnReqFailed = "connection_request_failed"
	// A sweep publishes pages of presencePage, at most presenceMaxPages
	// (100k CPEs); the rest wait for the next sweep.
	presencePage     = 1000
	presenceMaxPages = 100
)

// PresenceOptions configure NewPresenceSweeper.
type PresenceOptions struct {
	Store *store.Store
	Bus   *bus.Bus
	// Tolerance: a CPE is overdue after its PeriodicInformInterval times
	// this, plus Grace. Default 2.5 (two missed informs and a half); at
	// least 1.
	Tolerance float64
	// Grace is added to every deadline (network, retry back-off, a slow
	// session). Default 1 min.
	Grace time.Duration
	// UnknownAfter is the deadline of a CPE whose interval Duet has not
	// learned. Default 24 h (many CPEs inform daily).
	UnknownAfter time.Duration
	// Interval between sweeps. Default 15 s.
	Interval time.Duration
	Logger   *slog.Logger
}

// PresenceSweeper takes CPEs that stopped informing offline. Replicas share
// the work through the lease "cwmp-presence": one sweeps at a time.
type PresenceSweeper struct {
	o     PresenceOptions
	log   *slog.Logger
	lease *store.Lease

	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	stopOnce sync.Once
}

// NewPresenceSweeper checks the options; Start runs it.
func NewPresenceSweeper(o PresenceOptions) (*PresenceSweeper, error) {
	if o.Store == nil || o.Bus == nil {
		return nil, errors.New("controller: presence sweeper needs a store and a bus")
	}
	if o.Tolerance == 0 {
		o.Tolerance = 2.5
	}
	if o.Tolerance < 1 {
		return nil, fmt.Errorf("controller: presence tolerance %v: must be at least 1 (one missed inform)", o.Tolerance)
	}
	if o.Grace == 0 {
		o.Grace = time.Minute
	}
	if o.UnknownAfter == 0 {
		o.UnknownAfter = 24 * time.Hour
	}
	if o.Interval == 0 {
		o.Interval = 15 * time.Second
	}
	if o.Grace < 0 || o.UnknownAfter < 0 || o.Interval < 0 {
		return nil, errors.New("controller: presence grace, unknown-interval deadline and sweep interval must be positive")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &PresenceSweeper{o: o, log: o.Logger.With("component", "presence"), ctx: ctx, cancel: cancel}, nil
}

func (p *PresenceSweeper) rule() store.PresenceRule {
	return store.PresenceRule{Tolerance: p.o.Tolerance, Grace: p.o.Grace, Unknown: p.o.UnknownAfter}
}

// Start runs the sweeps until Stop.
func (p *PresenceSweeper) Start() {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(p.o.Interval)
		defer t.Stop()
		for {
			if p.holdLease() {
				if n, err := p.Sweep(p.ctx, time.Now()); err != nil && p.ctx.Err() == nil {
					p.log.Warn("presence sweep failed", "err", err)
				} else if n > 0 {
					p.log.Info("cpes taken offline: no inform within their schedule", "count", n)
				}
			}
			select {
			case <-p.ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// holdLease takes (or checks) the sweeper lease; only its holder sweeps.
func (p *PresenceSweeper) holdLease() bool {
	if p.lease != nil && p.lease.Alive(p.ctx) {
		return true
	}
	if p.lease != nil {
		p.lease.Release(p.ctx)
		p.lease = nil
	}
	l, ok, err := p.o.Store.TryLease(p.ctx, "cwmp-presence")
	if err != nil || !ok {
		if err != nil && p.ctx.Err() == nil {
			p.log.Warn("taking the presence lease failed", "err", err)
		}
		return false
	}
	p.lease = l
	return true
}

// Stop stops sweeping and gives the lease up. Safe to call twice.
func (p *PresenceSweeper) Stop() {
	p.stopOnce.Do(func() {
		p.cancel()
		p.wg.Wait()
		if p.lease != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			p.lease.Release(ctx)
			cancel()
			p.lease = nil
		}
	})
}

// Sweep publishes an offline event for every online CPE overdue at now
// and returns how many. The event's time is the deadline the CPE missed,
// so an Inform that came after it (and is still on its way to the
// registry) wins, and its ID is derived from the deadline, so a second
// sweep before the registry applied the first publishes nothing new (the
// stream and the history de-duplicate on it).
func (p *PresenceSweeper) Sweep(ctx context.Context, now time.Time) (int, error) {
	n := 0
	var after *store.OverdueCursor
	for range presenceMaxPages {
		ds, err := p.o.Store.FindOverdueCWMP(ctx, now, p.rule(), after, presencePage)
		if err != nil || len(ds) == 0 {
			return n, err
		}
		evs := make([]*duetv1.Event, 0, len(ds))
		for _, d := range ds {
			evs = append(evs, offlineEvent(d.ID, d.Deadline, OfflineInformOverdue))
			p.log.Debug("cpe overdue", "device", d.ID, "last_seen", d.LastSeen, "interval", d.Interval, "deadline", d.Deadline)
		}
		if err := p.o.Bus.PublishEvents(ctx, evs...); err != nil {
			return n, err
		}
		metricCWMPOffline.WithLabelValues(OfflineInformOverdue).Add(float64(len(evs)))
		n += len(evs)
		if len(ds) < presencePage {
			return n, nil
		}
		last := ds[len(ds)-1]
		after = &store.OverdueCursor{LastSeen: last.LastSeen, ID: last.ID}
	}
	return n, nil
}

// ConnectionRequestFailed is told of a connection request that failed for
// good: a CPE that is online but also missed its last scheduled inform
// (PeriodicInformInterval plus the grace, without the tolerance) is taken
// offline now. One with an unknown interval is left to the sweeps.
func (p *PresenceSweeper) ConnectionRequestFailed(ctx context.Context, deviceID string, cause error) {
	sch, ok, err := p.o.Store.FindInformSchedule(ctx, deviceID)
	if err != nil || !ok || !sch.Online || sch.Interval == 0 {
		return
	}
	now := time.Now()
	if now.Sub(sch.LastSeen) <= sch.Interval+p.o.Grace {
		return // on schedule: the request failed, but the CPE informs
	}
	reason := OfflineConnReqFailed + ": " + connReqFailure(cause)
	if err := p.o.Bus.PublishEvents(ctx, offlineEvent(deviceID, now, reason)); err != nil {
		p.log.Warn("publishing offline failed", "device", deviceID, "err", err)
		return
	}
	metricCWMPOffline.WithLabelValues(OfflineConnReqFailed).Inc()
	p.log.Info("cpe offline: connection request failed and its last inform is overdue", "device", deviceID,
		"last_seen", sch.LastSeen, "interval", sch.Interval, "err", cause)
}

func offlineEvent(id string, at time.Time, reason string) *duetv1.Event {
	return &duetv1.Event{
		Id:     "presence-" + strconv.FormatInt(at.UnixNano(), 36) + "-" + id,
		Time:   timestamppb.New(at),
		Source: "controller",
		Device: &duetv1.DeviceIdentity{Id: id, Protocol: duetv1.Protocol_PROTOCOL_CWMP},
		Kind:   &duetv1.Event_Offline{Offline: &duetv1.Offline{Reason: reason}},
	}
}
