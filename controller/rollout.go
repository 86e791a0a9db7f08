package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/duet-dm/duet/controller/policy"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// RolloutStrategy is how an enabled policy reaches its devices (issue 6
// §4): in batches, a bounded number at a time, with a pause between
// batches, only inside a maintenance window, stopping itself when too
// many devices fail.
//
//	{"batch_size": 50, "max_in_flight": 20, "pause": "10m",
//	 "maintenance_window": {"cron": "0 2 * * *", "duration": "3h", "timezone": "Europe/Paris"},
//	 "failure_threshold": 0.1, "min_finished": 20}
type RolloutStrategy struct {
	// BatchSize devices per batch, or BatchPercent of the devices that
	// need work; one of the two. Default: 10 %.
	BatchSize    int     `json:"batch_size,omitempty"`
	BatchPercent float64 `json:"batch_percent,omitempty"`
	// MaxInFlight bounds the devices with work under way at once (0: the
	// batch size).
	MaxInFlight int `json:"max_in_flight,omitempty"`
	// Pause between the end of a batch and the start of the next (a Go
	// duration, "90s", "10m").
	Pause string `json:"pause,omitempty"`
	// MaintenanceWindow: batches start only inside it.
	MaintenanceWindow *MaintenanceWindow `json:"maintenance_window,omitempty"`
	// FailureThreshold: the rollout stops itself when the failed share of
	// finished admitted devices exceeds it (0 < t ≤ 1). Default 0.1.
	FailureThreshold *float64 `json:"failure_threshold,omitempty"`
	// MinFinished: the failure rate is judged once this many admitted
	// devices finished (default 10, or fewer when the first batch is
	// smaller), so one early failure does not stop a large rollout.
	MinFinished int `json:"min_finished,omitempty"`

	pause    time.Duration
	window   cron.Schedule
	windowOn time.Duration
	loc      *time.Location
}

// MaintenanceWindow opens at each time of a cron schedule (five fields:
// minute hour day-of-month month day-of-week) in a time zone and stays
// open for a duration.
type MaintenanceWindow struct {
	Cron     string `json:"cron"`
	Duration string `json:"duration"`
	Timezone string `json:"timezone,omitempty"`
}

// Defaults of a strategy.
const (
	defaultBatchPercent     = 10
	defaultFailureThreshold = 0.1
	defaultMinFinished      = 10
	// maxBatchSize bounds one batch (a batch is admitted in one
	// statement and reconciled in pages).
	maxBatchSize = 100_000
)

// ParseRolloutStrategy decodes and checks a strategy (an empty body gives
// the defaults). Errors are CodeInvalidArgument naming the field.
func ParseRolloutStrategy(raw json.RawMessage) (*RolloutStrategy, error) {
	s := &RolloutStrategy{}
	if len(bytes.TrimSpace(raw)) > 0 && string(bytes.TrimSpace(raw)) != "null" {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(s); err != nil {
			return nil, invalid("rollout: %v", err)
		}
	}
	switch {
	case s.BatchSize < 0 || s.BatchSize > maxBatchSize:
		return nil, invalid("rollout.batch_size must be between 1 and %d", maxBatchSize)
	case s.BatchPercent < 0 || s.BatchPercent > 100 || math.IsNaN(s.BatchPercent):
		return nil, invalid("rollout.batch_percent must be between 0 and 100")
	case s.BatchSize > 0 && s.BatchPercent > 0:
		return nil, invalid("rollout: give batch_size or batch_percent, not both")
	case s.BatchSize == 0 && s.BatchPercent == 0:
		s.BatchPercent = defaultBatchPercent
	}
	if s.MaxInFlight < 0 || s.MaxInFlight > maxBatchSize {
		return nil, invalid("rollout.max_in_flight must be between 0 and %d", maxBatchSize)
	}
	if s.Pause != "" {
		d, err := time.ParseDuration(s.Pause)
		if err != nil || d < 0 || d > 30*24*time.Hour {
			return nil, invalid("rollout.pause %q is not a duration between 0 and 720h (e.g. \"10m\")", s.Pause)
		}
		s.pause = d
	}
	if s.FailureThreshold == nil {
		t := defaultFailureThreshold
		s.FailureThreshold = &t
	}
	if t := *s.FailureThreshold; t <= 0 || t > 1 || math.IsNaN(t) {
		return nil, invalid("rollout.failure_threshold must be in (0, 1]; 1 never stops")
	}
	if s.MinFinished < 0 {
		return nil, invalid("rollout.min_finished must not be negative")
	}
	if s.MinFinished == 0 {
		s.MinFinished = defaultMinFinished
	}
	if w := s.MaintenanceWindow; w != nil {
		loc := time.UTC
		if w.Timezone != "" {
			l, err := time.LoadLocation(w.Timezone)
			if err != nil {
				return nil, invalid("rollout.maintenance_window.timezone %q is not a known time zone (IANA name, e.g. \"Europe/Paris\")", w.Timezone)
			}
			loc = l
		}
		if strings.Contains(w.Cron, "TZ=") {
			return nil, invalid("rollout.maintenance_window.cron: give the time zone in timezone, not in the expression")
		}
		sched, err := cron.ParseStandard(w.Cron)
		if err != nil {
			return nil, invalid("rollout.maintenance_window.cron %q: %v (five fields: minute hour day-of-month month day-of-week)", w.Cron, err)
		}
		d, err := time.ParseDuration(w.Duration)
		if err != nil || d <= 0 || d > 7*24*time.Hour {
			return nil, invalid("rollout.maintenance_window.duration %q is not a duration between 1s and 168h", w.Duration)
		}
		s.window, s.windowOn, s.loc = sched, d, loc
	}
	return s, nil
}

// BatchFor is the size of the next batch when total devices are members
// with a status.
func (s *RolloutStrategy) BatchFor(total int) int {
	if s.BatchSize > 0 {
		return s.BatchSize
	}
	return max(1, int(math.Ceil(float64(total)*s.BatchPercent/100)))
}

// InWindow reports whether batches may start at t: always without a
// window; otherwise when a window opening lies in (t-duration, t].
func (s *RolloutStrategy) InWindow(t time.Time) bool {
	if s.window == nil {
		return true
	}
	local := t.In(s.loc)
	// cron's Next works in the location of the time it is given, so the
	// schedule is read in the window's time zone (DST included).
	return !s.window.Next(local.Add(-s.windowOn)).After(local)
}

// NextWindow is when the next window opens after t (zero without a
// window), for the API.
func (s *RolloutStrategy) NextWindow(t time.Time) time.Time {
	if s.window == nil {
		return time.Time{}
	}
	return s.window.Next(t.In(s.loc))
}

// PauseDuration is the pause between batches.
func (s *RolloutStrategy) PauseDuration() time.Duration { return s.pause }

// advance moves one running rollout forward (called every tick): stop
// it when failures pass the threshold, top up the current batch as
// in-flight room frees, mark a batch finished, and after the pause and
// inside the maintenance window admit the next; complete it when no
// device waits.
func (r *Reconciler) advance(ctx context.Context, p *activePolicy) error {
	ro := p.Rollout
	if p.broken != "" || ro.State != store.RolloutRunning || r.judged[p.ID] != p.Revision {
		// Nothing to do, or the statuses of this revision are not all
		// computed yet (the full pass that follows a change).
		return nil
	}
	s := p.strategy
	c, err := r.o.Store.CountRollout(ctx, p.ID, ro.Batch)
	if err != nil {
		return err
	}
	if rate, finished := c.AdmittedFailureRate(); finished > 0 && (finished >= s.MinFinished || c.AdmittedOpen == 0) {
		if rate > *s.FailureThreshold {
			reason := fmt.Sprintf("failure rate %.0f%% (%d of %d finished admitted devices failed) is above the threshold of %.0f%%",
				100*rate, c.Failed-c.FailedBeforeAdmission, finished, 100**s.FailureThreshold)
			out, err := r.o.Store.SetRolloutState(ctx, "", p.ID, []string{store.RolloutRunning}, store.RolloutStopped, reason)
			if devicemodel.ErrorCode(err) == devicemodel.CodeConflict {
				return nil // paused or aborted meanwhile
			}
			if err != nil {
				return err
			}
			r.log.Warn("rollout stopped itself", "policy", p.ID, "reason", reason)
			r.publish(ctx, p, out, "stopped", c)
			return nil
		}
	}
	total := 0
	for _, n := range c.ByStatus {
		total += n
	}
	room := math.MaxInt
	if s.MaxInFlight > 0 {
		room = s.MaxInFlight - c.AdmittedOpen
	}
	now := time.Now()
	if ro.Batch > 0 && ro.BatchDoneAt == nil && c.CurrentBatch < ro.BatchSize && c.Waiting > 0 {
		if room > 0 {
			ids, err := r.o.Store.AdmitDevices(ctx, p.ID, ro.Batch, min(ro.BatchSize-c.CurrentBatch, room), ro.BatchSize)
			if err != nil {
				return err
			}
			r.DevicesChanged(ids)
		}
		return nil
	}
	if ro.Batch > 0 && c.CurrentBatchOpen > 0 {
		return nil // the batch is under way
	}
	if ro.Batch > 0 && ro.BatchDoneAt == nil {
		if err := r.o.Store.RolloutBatchDone(ctx, p.ID, ro.Batch, now); err != nil {
			return err
		}
		ro.BatchDoneAt = &now
		r.publish(ctx, p, ro, "batch_finished", c)
		return nil
	}
	if c.Waiting == 0 {
		if c.AdmittedOpen > 0 {
			return nil
		}
		out, err := r.o.Store.SetRolloutState(ctx, "", p.ID, []string{store.RolloutRunning}, store.RolloutCompleted, "")
		if devicemodel.ErrorCode(err) == devicemodel.CodeConflict {
			return nil
		}
		if err != nil {
			return err
		}
		r.log.Info("rollout completed", "policy", p.ID, "revision", p.Revision, "devices", total)
		r.publish(ctx, p, out, "completed", c)
		return nil
	}
	if ro.BatchDoneAt != nil && now.Sub(*ro.BatchDoneAt) < s.PauseDuration() {
		return nil
	}
	if !s.InWindow(now) {
		return nil
	}
	size := s.BatchFor(total)
	n := min(size, room)
	if n <= 0 {
		return nil
	}
	ids, err := r.o.Store.AdmitDevices(ctx, p.ID, ro.Batch+1, n, size)
	if err != nil || len(ids) == 0 {
		return err
	}
	ro.Batch, ro.BatchSize, ro.BatchDoneAt = ro.Batch+1, size, nil
	c.Admitted += len(ids)
	c.Waiting -= len(ids)
	r.log.Info("rollout batch started", "policy", p.ID, "batch", ro.Batch, "devices", len(ids))
	r.publish(ctx, p, ro, "batch_started", c)
	r.DevicesChanged(ids)
	return nil
}

// publish sends a rollout progress event; a bus failure is logged, not
// fatal (the API has the same progress).
func (r *Reconciler) publish(ctx context.Context, p *activePolicy, ro store.Rollout, change string, c store.RolloutCounts) {
	metricRolloutChanges.WithLabelValues(change).Inc()
	if p.Kind == policy.KindFirmware {
		c.ByVersion = r.versions(ctx, p.ID)
	}
	PublishRollout(ctx, r.o.Bus, r.log, p.ID, p.Revision, ro, change, c)
}

// versions counts a firmware campaign's devices by version; a failure is
// logged (the event goes without them).
func (r *Reconciler) versions(ctx context.Context, policyID string) map[string]int {
	v, err := r.o.Store.CountVersions(ctx, policyID)
	if err != nil {
		r.log.Warn("counting a campaign's versions failed", "policy", policyID, "err", err)
	}
	return v
}

// PublishRollout sends a rollout progress event on the bus (nil bus: none).
func PublishRollout(ctx context.Context, b *bus.Bus, log *slog.Logger, policyID string, revision int, ro store.Rollout, change string, c store.RolloutCounts) {
	if b == nil {
		return
	}
	by := map[string]int32{}
	for k, v := range c.ByStatus {
		by[k] = int32(v)
	}
	var byVersion map[string]int32
	if len(c.ByVersion) > 0 {
		byVersion = map[string]int32{}
		for k, v := range c.ByVersion {
			byVersion[k] = int32(v)
		}
	}
	ev := &duetv1.PolicyEvent{PolicyId: policyID, Revision: int32(revision), Kind: &duetv1.PolicyEvent_Rollout{Rollout: &duetv1.RolloutProgress{
		State: ro.State, Change: change, Reason: ro.Reason, Batch: int32(ro.Batch),
		Admitted: int32(c.Admitted), Finished: int32(c.Finished), Failed: int32(c.Failed), Waiting: int32(c.Waiting),
		InFlight: int32(c.InFlight), ByStatus: by, ByVersion: byVersion,
	}}}
	if err := b.PublishPolicyEvent(ctx, ev); err != nil {
		log.Warn("publishing rollout progress failed", "policy", policyID, "change", change, "err", err)
	}
}
