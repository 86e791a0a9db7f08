// Package controller owns Duet's state: it consumes device events from the
// bus into the registry, answers the adapters' questions, and serves the
// northbound REST API.
package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"google.golang.org/protobuf/proto"

	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

var (
	metricEventsApplied = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_controller_events_applied_total",
		Help: "Device events applied to the registry, by kind.",
	}, []string{"kind"})
	metricEventsInvalid = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_controller_events_invalid_total",
		Help: "Events terminated without being applied, by reason (undecodable, invalid).",
	}, []string{"reason"})
	metricApplyErrors = promauto.NewCounter(prometheus.CounterOpts{
		Name: "duet_controller_apply_errors_total",
		Help: "Batches that failed to commit and were handed back for redelivery.",
	})
	metricEventsDeadLettered = promauto.NewCounter(prometheus.CounterOpts{
		Name: "duet_controller_events_dead_lettered_total",
		Help: "Events that failed alone on every one of their deliveries and were moved to DUET_DEADLETTER (docs/bus.md).",
	})
	metricBatchSize = promauto.NewHistogram(prometheus.HistogramOpts{
		Name:    "duet_controller_batch_events",
		Help:    "Events per committed registry batch.",
		Buckets: prometheus.ExponentialBuckets(1, 2, 12),
	})
	metricEventsPending = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "duet_controller_events_pending",
		Help: "Device events in the stream that the controllers' consumer has not been handed yet, as of this replica's last fetch (0 when a fetch found none): the registry's backlog (issue 17).",
	})
	metricEventLagSeconds = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "duet_controller_event_lag_seconds",
		Help: "Age of the oldest event of the batch this replica applied last, from its arrival in the stream (0 when a fetch found none): how far the registry is behind.",
	})
	metricApplySeconds = promauto.NewHistogram(prometheus.HistogramOpts{
		Name:    "duet_controller_apply_duration_seconds",
		Help:    "Time to commit one registry batch.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
	})
)

// RegistryOptions configure the event consumer.
type RegistryOptions struct {
	Bus   *bus.Bus
	Store *store.Store
	// Durable is the JetStream consumer name; controller replicas share it.
	// Default "duet-controller"; `duet serve` names it after the
	// installation (InstallationDurable).
	Durable string
	// AdoptLegacy, when set, is the consumer of older releases whose
	// position a new Durable starts from (AdoptConsumer); it is deleted once
	// the new one exists.
	AdoptLegacy string
	// StartTime, when set, is where a new consumer without a legacy one to
	// adopt begins: a new installation reads the events published since it
	// was made, not the whole stream another installation on the same NATS
	// left (docs/bus.md, "Consumers and installations"). Zero: everything.
	StartTime time.Time
	// InactiveThreshold: JetStream deletes the consumer when no controller
	// asked for events for this long (0 never). `duet serve` passes the
	// event retention: past it, nothing the consumer held back is left.
	InactiveThreshold time.Duration
	// BatchSize is the most events committed in one transaction. Default 500.
	BatchSize int
	// MaxWait is how long a fetch waits to fill a batch. Default 100 ms.
	MaxWait time.Duration
	// AckWait is how long an event fetched by a controller that died stays
	// invisible before JetStream redelivers it. Default 10 s. A batch that
	// commits slower than this is delivered twice, which is harmless
	// (applying is idempotent).
	AckWait time.Duration
	// MaxDeliveries is how often an event that fails on its own (not with
	// its batch, and with the database answering) is tried before it is
	// moved to the dead-letter stream. Default 5.
	MaxDeliveries int
	// Tasks, when set, gets the command results the events carry (before
	// the batch is acknowledged, so none is lost) and the devices that
	// were seen (their waiting tasks are delivered).
	Tasks *TaskQueue
	// Reconciler, when set, is told of the devices that were seen, so
	// policies are checked against what they reported.
	Reconciler *Reconciler
	// History says which kinds get a device_events row (ByKind 0: none);
	// the zero value stores every event.
	History HistoryOptions
	Logger  *slog.Logger
}

// Registry consumes device events into the device registry.
type Registry struct {
	o    RegistryOptions
	log  *slog.Logger
	cons jetstream.Consumer

	backlog atomic.Uint64 // noteBacklog

	stopOnce sync.Once
	cancel   context.CancelFunc
	done     chan struct{}
}

// NewRegistry creates (or attaches to) the durable consumer.
func NewRegistry(ctx context.Context, o RegistryOptions) (*Registry, error) {
	if o.Bus == nil || o.Store == nil {
		return nil, errors.New("controller: registry needs a bus and a store")
	}
	if o.Durable == "" {
		o.Durable = "duet-controller"
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 500
	}
	if o.MaxWait <= 0 {
		o.MaxWait = 100 * time.Millisecond
	}
	if o.AckWait <= 0 {
		o.AckWait = 10 * time.Second
	}
	if o.MaxDeliveries <= 0 {
		o.MaxDeliveries = 5
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	start, err := startPosition(ctx, o.Bus.JetStream(), o, o.Logger)
	if err != nil {
		return nil, err
	}
	cons, err := o.Bus.JetStream().CreateOrUpdateConsumer(ctx, bus.EventStream, jetstream.ConsumerConfig{
		Durable:           o.Durable,
		DeliverPolicy:     start.policy,
		OptStartSeq:       start.seq,
		OptStartTime:      start.time,
		InactiveThreshold: o.InactiveThreshold,
		Description:       "Duet controller: device events into the registry",
		FilterSubject:     bus.EventPrefix + ".>",
		AckPolicy:         jetstream.AckExplicitPolicy,
		// Acks come after the database commit.
		AckWait:       o.AckWait,
		MaxAckPending: 4 * o.BatchSize,
	})
	if err != nil {
		return nil, fmt.Errorf("controller: create consumer: %w", err)
	}
	if err := start.adopted(ctx); err != nil {
		return nil, err
	}
	return &Registry{o: o, log: o.Logger.With("component", "registry"), cons: cons, done: make(chan struct{})}, nil
}

// Start runs the consume loop until Stop.
func (r *Registry) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() {
		defer close(r.done)
		r.run(ctx)
	}()
}

// Stop finishes the batch in progress and stops. Safe to call twice.
func (r *Registry) Stop() {
	r.stopOnce.Do(func() {
		if r.cancel == nil {
			close(r.done)
			return
		}
		r.cancel()
		<-r.done
	})
}

func (r *Registry) run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		batch, err := r.cons.Fetch(r.o.BatchSize, jetstream.FetchMaxWait(r.o.MaxWait))
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.log.Warn("fetch events", "err", err)
			sleepCtx(ctx, backoff)
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		var msgs []jetstream.Msg
		for m := range batch.Messages() {
			msgs = append(msgs, m)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && ctx.Err() == nil {
			r.log.Debug("fetch ended", "err", err)
		}
		if len(msgs) == 0 {
			r.noteBacklog(0, time.Time{})
			continue
		}
		if meta, err := msgs[len(msgs)-1].Metadata(); err == nil {
			oldest := meta.Timestamp
			if m0, err := msgs[0].Metadata(); err == nil {
				oldest = m0.Timestamp
			}
			r.noteBacklog(meta.NumPending, oldest)
		}
		if err := r.apply(ctx, msgs); err != nil {
			metricApplyErrors.Inc()
			if r.isolate(ctx, msgs, err, backoff) {
				backoff = 100 * time.Millisecond
				continue
			}
			r.log.Error("registry batch failed; events will be redelivered", "events", len(msgs), "err", err)
			for _, m := range msgs {
				_ = m.NakWithDelay(backoff)
			}
			sleepCtx(ctx, backoff)
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
	}
}

// noteBacklog records the consumer's backlog after a fetch: pending
// events not yet handed to any replica, and the stream arrival time of
// the oldest event fetched (zero: none).
func (r *Registry) noteBacklog(pending uint64, oldest time.Time) {
	metricEventsPending.Set(float64(pending))
	lag := 0.0
	if !oldest.IsZero() {
		lag = max(time.Since(oldest).Seconds(), 0)
	}
	metricEventLagSeconds.Set(lag)
	r.backlog.Store(pending)
}

// Backlog is the consumer's backlog as of this replica's last fetch: the
// events not yet handed to any replica.
func (r *Registry) Backlog() uint64 { return r.backlog.Load() }

// isolate handles a failed batch whose failure is not the database's (it
// answers a ping): one event's data may be what fails, so the events are
// applied one by one and the rest of the fleet goes on (issue 15 §1). An
// event that fails alone is handed back for redelivery, and once it has
// been delivered MaxDeliveries times it is moved to the dead-letter stream
// with its subject and the error, and acknowledged, so it never holds the
// ack floor. It reports false when the database is down: then nothing is
// the events' fault and the whole batch waits.
func (r *Registry) isolate(ctx context.Context, msgs []jetstream.Msg, batchErr error, backoff time.Duration) bool {
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	err := r.o.Store.Ping(pctx)
	cancel()
	if err != nil {
		return false
	}
	if len(msgs) > 1 {
		r.log.Warn("registry batch failed; applying its events one by one", "events", len(msgs), "err", batchErr)
	}
	for _, m := range msgs {
		err := batchErr
		if len(msgs) > 1 {
			if err = r.apply(ctx, []jetstream.Msg{m}); err == nil {
				continue
			}
		}
		r.failedAlone(ctx, m, err, backoff)
	}
	return true
}

// isDataError: the error is about the event's content (a domain
// validation error), not the database's state.
func isDataError(err error) bool {
	var de *devicemodel.Error
	return errors.As(err, &de)
}

// failedAlone redelivers or dead-letters one event that failed on its own.
func (r *Registry) failedAlone(ctx context.Context, m jetstream.Msg, err error, backoff time.Duration) {
	var delivered, seq uint64
	if meta, merr := m.Metadata(); merr == nil {
		delivered, seq = meta.NumDelivered, meta.Sequence.Stream
	}
	// Only what PostgreSQL refused for its data (or what cannot be
	// decoded, terminated in apply) is the event's fault; a lost
	// connection or a deadlock is retried however often it happens.
	if delivered < uint64(r.o.MaxDeliveries) || (store.IsTransient(err) && !isDataError(err)) {
		// Later each time: each return fails its batch, which is then
		// applied one event at a time.
		delay := max(backoff, min(100*time.Millisecond<<min(delivered, 10), 30*time.Second))
		r.log.Warn("event failed on its own; it will be redelivered", "subject", m.Subject(), "deliveries", delivered, "in", delay, "err", err)
		_ = m.NakWithDelay(delay)
		return
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if derr := r.o.Bus.PublishDeadLetter(dctx, m.Subject(), m.Data(), seq, delivered, err.Error()); derr != nil {
		// Not stored anywhere: keep it in the event stream and try again.
		r.log.Error("cannot dead-letter an event; it will be redelivered", "subject", m.Subject(), "err", derr)
		_ = m.NakWithDelay(backoff)
		return
	}
	metricEventsDeadLettered.Inc()
	r.log.Error("event moved to the dead-letter stream: it failed on each of its deliveries", "subject", m.Subject(),
		"stream", bus.DeadLetterStream, "deliveries", delivered, "err", err)
	_ = m.Term()
}

// apply decodes a batch, terminates what cannot be applied, commits the
// rest in one transaction, and only then acknowledges.
func (r *Registry) apply(ctx context.Context, msgs []jetstream.Msg) error {
	obs := make([]store.Observation, 0, len(msgs))
	good := make([]jetstream.Msg, 0, len(msgs))
	kinds := make([]string, 0, len(msgs))
	var results []*duetv1.CommandResult
	var completions []Completion
	type listingEvent struct {
		device string
		ev     *duetv1.Event
		at     time.Time
	}
	var listingEvents []listingEvent
	var seen []string
	seenSet := map[string]bool{}
	boots := map[string]time.Time{}
	taskResults := map[int]string{} // index in obs -> command ID
	for _, m := range msgs {
		o, ev, err := decodeObservation(m)
		if err != nil {
			reason := "invalid"
			var d *decodeError
			if errors.As(err, &d) {
				reason = "undecodable"
			}
			metricEventsInvalid.WithLabelValues(reason).Inc()
			r.log.Warn("dropping event that cannot be applied", "subject", m.Subject(), "reason", reason, "err", err)
			// Term: never redelivered, never blocks the events behind it.
			_ = m.Term()
			continue
		}
		o.Params = learnedParams(ev, o.Device.ID, o.Time)
		// A device's routine reports are counted on it; whether each also
		// gets a history row is the History setting's (issue 12 item 5).
		o.CountsAsInform = o.Kind == "inform" || (o.Kind == "periodic" && o.Device.Protocol == devicemodel.ProtocolUSP)
		o.SkipHistory = !r.o.History.keeps(o.Kind)
		obs = append(obs, o)
		good = append(good, m)
		kinds = append(kinds, o.Kind)
		if cr := ev.GetCommandResult(); cr != nil {
			if cr.DeviceId == "" {
				cr.DeviceId = o.Device.ID
			}
			results = append(results, cr)
			if r.o.Tasks != nil && cr.GetCommandId() != "" && len(o.Params) > 0 {
				taskResults[len(obs)-1] = cr.GetCommandId()
			}
		}
		if c, ok := completionOf(o.Device.ID, o.Time, ev); ok {
			completions = append(completions, c)
		}
		if ev.GetObjectCreated() != nil || ev.GetObjectDeleted() != nil {
			listingEvents = append(listingEvents, listingEvent{o.Device.ID, ev, o.Time})
		}
		if isBootstrap(ev) {
			// The device was factory reset: what Duet knew of it before
			// this event no longer holds (issue 6 §3: it is provisioned
			// again).
			if at, ok := boots[o.Device.ID]; !ok || o.Time.After(at) {
				boots[o.Device.ID] = o.Time
			}
		}
		if o.Online && !o.Passive && !seenSet[o.Device.ID] {
			seenSet[o.Device.ID] = true
			seen = append(seen, o.Device.ID)
		}
	}
	if len(obs) == 0 {
		return nil
	}
	var ended []string
	start := time.Now()
	// Commit even if ctx is being cancelled: finishing the batch in hand is
	// part of a clean stop.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := r.leaveTaskResultsToTasks(cctx, obs, taskResults); err != nil {
		return err
	}
	if err := r.o.Store.ApplyObservations(cctx, obs); err != nil {
		return err
	}
	if r.o.Tasks != nil {
		if err := r.o.Tasks.Results(cctx, results); err != nil {
			return fmt.Errorf("task results: %w", err)
		}
		// After the results: a task's first reply and its completion can
		// come in one batch. Before the ack, so none is lost.
		var err error
		if ended, err = r.o.Tasks.Complete(cctx, completions); err != nil {
			return fmt.Errorf("task completions: %w", err)
		}
	}
	// After the instances' keys are cached with the batch; before the
	// ack, so a crash applies them again (harmlessly).
	for _, le := range listingEvents {
		if err := r.eventListings(cctx, le.device, le.ev, le.at); err != nil {
			return fmt.Errorf("table listings: %w", err)
		}
	}
	// Before the ack: a crash here redelivers the batch, and forgetting
	// again is harmless.
	if err := r.o.Store.ForgetDeviceState(cctx, boots); err != nil {
		return fmt.Errorf("bootstraps: %w", err)
	}
	metricApplySeconds.Observe(time.Since(start).Seconds())
	metricBatchSize.Observe(float64(len(obs)))
	for i, m := range good {
		if err := m.Ack(); err != nil {
			r.log.Warn("ack failed; the event will be redelivered and applied again harmlessly", "subject", m.Subject(), "err", err)
		}
		metricEventsApplied.WithLabelValues(kinds[i]).Inc()
		if obs[i].SkipHistory {
			metricHistorySkipped.WithLabelValues(kinds[i]).Inc()
		}
	}
	if r.o.Tasks != nil {
		r.o.Tasks.DevicesSeen(cctx, seen)
		// A device back from a reboot gets the tasks that waited for it.
		r.o.Tasks.DeliverQueued(cctx, ended)
	}
	if r.o.Reconciler != nil {
		r.o.Reconciler.DevicesChanged(seen)
	}
	return nil
}

// leaveTaskResultsToTasks drops the values of command_result events whose
// command is a task: the task queue caches them when it settles the task
// (from this event or from the CWMP session, whichever comes first), once,
// stamped with the task's dispatch time. Writing them here as well was a
// second writer that could land after a later Delete had removed the
// rows and bring them back for good (issue 12 item 2). Results of
// commands that are not tasks are still cached from their event.
func (r *Registry) leaveTaskResultsToTasks(ctx context.Context, obs []store.Observation, taskResults map[int]string) error {
	if len(taskResults) == 0 {
		return nil
	}
	ids := make([]string, 0, len(taskResults))
	for _, id := range taskResults {
		ids = append(ids, id)
	}
	tasks, err := r.o.Store.FindTaskIDs(ctx, ids)
	if err != nil {
		return err
	}
	for i, id := range taskResults {
		if tasks[id] {
			obs[i].Params = nil
		}
	}
	return nil
}

// isBootstrap reports a device that lost its configuration: CWMP
// "0 BOOTSTRAP" (TR-069), or a USP Boot! whose Cause is a factory reset
// (TR-181 Device.LocalAgent events: LocalFactoryReset, RemoteFactoryReset).
func isBootstrap(ev *duetv1.Event) bool {
	if ev.GetBootstrap() != nil {
		return true
	}
	return strings.HasSuffix(ev.GetBoot().GetCause(), "FactoryReset")
}

type decodeError struct{ err error }

func (e *decodeError) Error() string { return "undecodable payload: " + e.err.Error() }

func decodeObservation(m jetstream.Msg) (store.Observation, *duetv1.Event, error) {
	ev := &duetv1.Event{}
	if err := proto.Unmarshal(m.Data(), ev); err != nil {
		return store.Observation{}, nil, &decodeError{err}
	}
	o, err := observationOf(m, ev)
	return o, ev, err
}

func observationOf(m jetstream.Msg, ev *duetv1.Event) (store.Observation, error) {
	p, id, kind, err := bus.ParseEventSubject(m.Subject())
	if err != nil {
		return store.Observation{}, err
	}
	if ev.GetDevice().GetId() != id {
		return store.Observation{}, fmt.Errorf("payload device %q does not match subject device %q", ev.GetDevice().GetId(), id)
	}
	if pp, err := bus.ProtocolOf(ev.GetDevice().GetProtocol()); err != nil || pp != p {
		return store.Observation{}, fmt.Errorf("payload protocol %v does not match subject protocol %s", ev.GetDevice().GetProtocol(), p)
	}
	if k := bus.EventKind(ev); k != kind {
		return store.Observation{}, fmt.Errorf("payload kind %q does not match subject kind %q", k, kind)
	}
	if ev.Id == "" {
		return store.Observation{}, errors.New("event has no id")
	}
	if err := devicemodel.ValidateDeviceID(id); err != nil {
		return store.Observation{}, err
	}
	meta, err := m.Metadata()
	if err != nil {
		return store.Observation{}, err
	}
	at := meta.Timestamp
	if ev.Time != nil && ev.Time.IsValid() {
		at = ev.Time.AsTime()
	}
	d := ev.Device
	if b := ev.GetBoot(); b != nil && d.GetSoftwareVersion() == "" {
		// A USP Boot! reports the version the agent came back on in its
		// ParameterMap (TR-181 Device.Boot!, Controller.{i}.BootParameter):
		// after a firmware activation it is the registry's first news.
		var pm map[string]string
		if json.Unmarshal([]byte(b.GetArgs()["ParameterMap"]), &pm) == nil {
			for k, v := range pm {
				if strings.HasSuffix(k, ".DeviceInfo.SoftwareVersion") && v != "" {
					d = proto.Clone(d).(*duetv1.DeviceIdentity)
					d.SoftwareVersion = v
				}
			}
		}
	}
	r := ev.GetReachability()
	return store.Observation{
		EventID:   ev.Id,
		Kind:      kind,
		Time:      at.UTC(),
		StreamSeq: meta.Sequence.Stream,
		Payload:   m.Data(),
		// Every event but "offline" means the device just talked to us.
		Online:  kind != "offline",
		Passive: kind == "connection_request",
		Device: devicemodel.Device{
			ID: id, Protocol: p,
			Manufacturer: d.Manufacturer, OUI: d.Oui, ProductClass: d.ProductClass, SerialNumber: d.SerialNumber,
			ModelName: d.ModelName, SoftwareVersion: d.SoftwareVersion, HardwareVersion: d.HardwareVersion,
			ProvisioningCode: d.ProvisioningCode, DataModel: d.DataModel,
			Transport: r.GetTransport(), Address: r.GetAddress(), ConnectionRequestURL: r.GetConnectionRequestUrl(),
		},
	}, nil
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
