package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"google.golang.org/protobuf/proto"

	"github.com/duet-dm/duet/controller/files"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

var (
	metricTasksCreated = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_tasks_created_total",
		Help: "Tasks created, by operation.",
	}, []string{"operation"})
	metricTasksDispatched = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_tasks_dispatched_total",
		Help: "Task dispatches, by protocol.",
	}, []string{"protocol"})
	metricTasksFinished = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_tasks_finished_total",
		Help: "Tasks that reached a final state, by state (succeeded, failed, expired, cancelled).",
	}, []string{"state"})
	metricTasksRequeued = promauto.NewCounter(prometheus.CounterOpts{
		Name: "duet_tasks_requeued_total",
		Help: "Dispatched tasks put back in the queue because their command was never delivered.",
	})
	metricTaskKicksDropped = promauto.NewCounter(prometheus.CounterOpts{
		Name: "duet_tasks_kicks_dropped_total",
		Help: "USP dispatch wake-ups dropped because the bounded wake-up queue was full (the periodic sweep picks the device up).",
	})
	metricConnReqs = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_tasks_connection_requests_total",
		Help: "Connection requests sent to wake CWMP devices for their tasks, by outcome (sent, failed, skipped, resent: accepted before, but no session came).",
	}, []string{"outcome"})
)

// TaskQueueOptions configure NewTaskQueue.
type TaskQueueOptions struct {
	Store *store.Store
	Bus   *bus.Bus
	// Workers is how many USP devices get commands at once. Default 64.
	Workers int
	// MaxPendingWakeups bounds the queue of USP devices waiting for a
	// worker; past it wake-ups are dropped (metric) and the periodic
	// sweep finds the device. Default 10000.
	MaxPendingWakeups int
	// CommandTimeout bounds the wait for a USP device's answer. Default 60 s.
	CommandTimeout time.Duration
	// SweepInterval is how often queued tasks are expired and online USP
	// devices with queued tasks are re-examined. Default 5 s.
	SweepInterval time.Duration
	// ConnReqResendAfter: a connection request the CPE accepted without
	// opening a session within this time is sent again, at most
	// connReqResends times (a CPE still closing its previous session may
	// accept one and drop it). Default 30 s.
	ConnReqResendAfter time.Duration
	// MaxAttempts is how often an idempotent task whose outcome was lost
	// is re-sent before it fails. Default 3.
	MaxAttempts int
	// MaxConnectionRequests bounds concurrent connection requests; past it
	// devices wait in line for a slot (at most MaxPendingWakeups of them;
	// past that a task waits for the device's next inform). Default 32.
	MaxConnectionRequests int
	// RebootTimeout bounds the wait for a rebooted or factory-reset device
	// to come back (Boot!, 1 BOOT) before its task fails with timeout.
	// Default 10 min.
	RebootTimeout time.Duration
	// TransferTimeout bounds the wait for the TransferComplete of a
	// transfer the device accepted with Status 1. Default 1 h.
	TransferTimeout time.Duration
	// OperationTimeout bounds the wait for the OperationComplete of an
	// asynchronous command (and CWMP diagnostics). Default 1 h.
	OperationTimeout time.Duration
	// CredentialKey opens the stored connection-request passwords; without
	// it connection requests go out without credentials.
	CredentialKey *store.CredentialKey
	// FileURLs signs the file listener's URLs that file operations
	// (firmware_upgrade, backup_config, restore_config) hand devices;
	// without it those operations are refused.
	FileURLs *files.URLs
	Logger   *slog.Logger
}

// TaskQueue dispatches tasks: to online USP devices at once through the
// bus, to CWMP devices in the session that follows a connection request
// (through the AdapterDesk's SessionWork). Its state is in PostgreSQL; the
// in-memory parts (wake-ups, waiters) are only accelerators.
type TaskQueue struct {
	o   TaskQueueOptions
	log *slog.Logger

	// id names this queue as the dispatcher of the tasks it claims; it
	// holds lease "dispatcher.<id>" from Start to Stop, so other replicas
	// can tell its in-flight tasks from those of a controller that is gone.
	id    string
	lease *store.Lease

	wake chan string // USP devices to dispatch, each at most once (pending)
	mu   sync.Mutex
	// pending: in wake; running: a worker has it; again: woken while running;
	// unreachable: the last dispatch found nobody serving the device, so
	// the sweep leaves it alone until it is seen again (at most one entry
	// per USP device with queued tasks).
	pending, running, again, unreachable map[string]bool
	// waking: a connection request (with its retries) is out for the device.
	waking map[string]bool
	// rewake: devices woken again while their request was out; the
	// session that request brings may have ended before the newer tasks
	// were queued, so they get a request of their own once it is back.
	rewake  map[string]bool
	waiters map[string][]chan struct{}
	// finished is told of every task that reached a final state through
	// a device's answer (the reconciler); set before Start.
	finished func(context.Context, store.Task)
	// prepare completes a CWMP task's command at dispatch (OnDispatch).
	prepare func(context.Context, store.Task, *duetv1.Command) error
	// connReqFailed is told of connection requests that failed for good
	// (presence evidence, cwmp_presence.go); set before Start.
	connReqFailed func(context.Context, string, error)

	crSem chan struct{}
	// crLine: CWMP devices waiting for a connection-request slot, in
	// order, with their URLs in crWaiting.
	crLine    []string
	crWaiting map[string]string
	// crAccepted: CWMP devices whose last connection request was accepted
	// and whose session has not asked for work since.
	crAccepted map[string]crAccepted

	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	stopOnce sync.Once
}

// NewTaskQueue checks options; Start runs it.
func NewTaskQueue(o TaskQueueOptions) (*TaskQueue, error) {
	if o.Store == nil || o.Bus == nil {
		return nil, errors.New("controller: task queue needs a store and a bus")
	}
	if o.Workers <= 0 {
		o.Workers = 64
	}
	if o.MaxPendingWakeups <= 0 {
		o.MaxPendingWakeups = 10000
	}
	if o.CommandTimeout <= 0 {
		o.CommandTimeout = 60 * time.Second
	}
	if o.SweepInterval <= 0 {
		o.SweepInterval = 5 * time.Second
	}
	if o.ConnReqResendAfter <= 0 {
		o.ConnReqResendAfter = 30 * time.Second
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 3
	}
	if o.MaxConnectionRequests <= 0 {
		o.MaxConnectionRequests = 32
	}
	if o.RebootTimeout <= 0 {
		o.RebootTimeout = DefaultRebootTimeout
	}
	if o.TransferTimeout <= 0 {
		o.TransferTimeout = DefaultTransferTimeout
	}
	if o.OperationTimeout <= 0 {
		o.OperationTimeout = DefaultOperationTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &TaskQueue{
		o: o, log: o.Logger.With("component", "tasks"), id: bus.NewID(),
		wake:    make(chan string, o.MaxPendingWakeups),
		pending: map[string]bool{}, running: map[string]bool{}, again: map[string]bool{}, unreachable: map[string]bool{}, waking: map[string]bool{}, rewake: map[string]bool{}, crWaiting: map[string]string{}, crAccepted: map[string]crAccepted{},
		waiters: map[string][]chan struct{}{},
		crSem:   make(chan struct{}, o.MaxConnectionRequests),
		ctx:     ctx, cancel: cancel,
	}, nil
}

// Start takes this queue's dispatcher lease, recovers the tasks of
// controllers that are gone and starts the workers and the sweeper.
// Replicas may share the queue: each dispatched task records its
// dispatcher, and only a task whose dispatcher no longer holds its lease
// (it stopped, crashed or lost its database session) is settled, here and
// on every sweep; a live replica's in-flight tasks are left alone. Such an
// orphan's result may still arrive (FinishTask accepts it), but until then
// a non-idempotent one is failed as outcome_unknown and an idempotent one
// is queued again.
func (q *TaskQueue) Start(ctx context.Context) error {
	l, ok, err := q.o.Store.TryLease(ctx, "dispatcher."+q.id)
	if err != nil {
		return fmt.Errorf("controller: task queue: %w", err)
	}
	if !ok {
		// The ID is random: someone holding it means a bug, not a race.
		return fmt.Errorf("controller: task queue: dispatcher lease %s is held elsewhere", q.id)
	}
	q.lease = l
	n, err := q.settleOrphans(ctx, "the controller restarted while the task was in flight")
	if err != nil {
		q.lease.Release(ctx)
		q.lease = nil
		return err
	}
	if n > 0 {
		q.log.Warn("tasks in flight at the last stop", "count", n)
	}
	for i := 0; i < q.o.Workers; i++ {
		q.wg.Add(1)
		go func() {
			defer q.wg.Done()
			q.work()
		}()
	}
	q.wg.Add(1)
	go func() {
		defer q.wg.Done()
		q.sweepLoop()
	}()
	q.rescan(ctx, nil, true)
	return nil
}

// Stop stops the workers (a command in flight is abandoned: its task is
// recovered by the next Start, or by another replica's sweep) and then
// gives up the dispatcher lease. Safe to call twice.
func (q *TaskQueue) Stop() {
	q.stopOnce.Do(func() {
		q.cancel()
		q.wg.Wait()
		if q.lease != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			q.lease.Release(ctx)
			cancel()
			q.lease = nil
		}
	})
}

// settleOrphans settles the dispatched tasks whose dispatcher is gone as
// interrupted (why) and returns how many it settled. Each is adopted
// first, so when two replicas find the same orphan only one settles it.
func (q *TaskQueue) settleOrphans(ctx context.Context, why string) (int, error) {
	orphans, err := q.o.Store.OrphanedTasks(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, t := range orphans {
		if t.Dispatcher == q.id {
			// Ours, seen as orphaned while our lease was lost: we are
			// alive and our worker or session settles it.
			continue
		}
		ok, err := q.o.Store.AdoptTask(ctx, t, q.id)
		if err != nil {
			return n, err
		}
		if !ok {
			continue
		}
		t.Dispatcher = q.id
		q.settle(ctx, t, nil, devicemodel.Errorf(devicemodel.CodeOutcomeUnknown, "%s", why))
		n++
	}
	return n, nil
}

// keepLease checks the dispatcher lease on each sweep: when its database
// connection is gone the lock went with it (other replicas may already
// have settled this queue's in-flight tasks), so it is taken again.
func (q *TaskQueue) keepLease(ctx context.Context) {
	if q.lease != nil && q.lease.Alive(ctx) {
		return
	}
	if q.lease != nil {
		q.log.Warn("lost the dispatcher lease (database connection gone); taking it again")
		q.lease.Release(ctx)
		q.lease = nil
	}
	l, ok, err := q.o.Store.TryLease(ctx, "dispatcher."+q.id)
	if err != nil || !ok {
		if ctx.Err() == nil {
			q.log.Error("taking the dispatcher lease again failed", "ok", ok, "err", err)
		}
		return
	}
	q.lease = l
}

func (q *TaskQueue) sweepLoop() {
	t := time.NewTicker(q.o.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-q.ctx.Done():
			return
		case <-t.C:
		}
		q.keepLease(q.ctx)
		// A replica that went away left its in-flight tasks dispatched:
		// take them over.
		if n, err := q.settleOrphans(q.ctx, "the controller dispatching the task went away while it was in flight"); err != nil {
			if q.ctx.Err() == nil {
				q.log.Warn("settling orphaned tasks failed", "err", err)
			}
		} else if n > 0 {
			q.log.Warn("settled tasks left in flight by a controller that went away", "count", n)
		}
		ids, err := q.o.Store.ExpireTasks(q.ctx)
		if err != nil {
			if q.ctx.Err() == nil {
				q.log.Warn("expiring tasks failed", "err", err)
			}
			continue
		}
		for _, id := range ids {
			metricTasksFinished.WithLabelValues(string(store.TaskExpired)).Inc()
			q.notify(id)
		}
		q.failOverdue(q.ctx)
		q.markOfflineWaiting(q.ctx)
		q.rescan(q.ctx, nil, false)
		q.resendConnReqs(q.ctx)
	}
}

// rescan wakes online USP devices with queued tasks (among ids, or all).
// With wakeCWMP (start-up) it also sends connection requests to CWMP
// devices whose tasks asked for one.
func (q *TaskQueue) rescan(ctx context.Context, ids []string, wakeCWMP bool) {
	devs, err := q.o.Store.DevicesWithQueuedTasks(ctx, ids)
	if err != nil {
		if ctx.Err() == nil {
			q.log.Warn("scanning queued tasks failed", "err", err)
		}
		return
	}
	for _, d := range devs {
		switch d.Protocol {
		case devicemodel.ProtocolUSP:
			// The registry's state is committed before DevicesSeen runs,
			// so Online is what the latest event said.
			if !d.Online {
				continue
			}
			if ids != nil {
				q.reachable(d.ID)
				q.kick(d.ID)
			} else if !q.isUnreachable(d.ID) {
				q.kick(d.ID)
			}
		case devicemodel.ProtocolCWMP:
			if wakeCWMP && d.WantsConnectionRequest {
				q.wakeCWMP(d.ID, d.ConnectionRequestURL)
			} else if wakeCWMP && d.Online {
				q.waiting(ctx, d.ID, store.WaitAwaitingInform)
			}
		}
	}
}

// OnFinished registers fn to be told of every task a device's answer
// finished (succeeded or failed). Call it before Start.
func (q *TaskQueue) OnFinished(fn func(context.Context, store.Task)) { q.finished = fn }

// OnDispatch registers fn to complete a CWMP task's command as it is
// handed to a session: what must not be stored with the task (the
// passwords of a credential enrolment). An error fails the task. Call it
// before Start.
func (q *TaskQueue) OnDispatch(fn func(context.Context, store.Task, *duetv1.Command) error) {
	q.prepare = fn
}

// DeliverQueued starts delivery of the listed devices' queued tasks: at
// once to online USP devices, by a connection request to CWMP devices
// that want one. The reconciler calls it after queueing a batch.
func (q *TaskQueue) DeliverQueued(ctx context.Context, ids []string) {
	if len(ids) == 0 {
		return
	}
	q.rescan(ctx, ids, true)
}

// DevicesSeen is called by the registry after it committed events: a
// device that talked to us gets its waiting USP tasks now. CWMP devices
// get theirs in the session they are in.
func (q *TaskQueue) DevicesSeen(ctx context.Context, ids []string) {
	if len(ids) == 0 {
		return
	}
	q.rescan(ctx, ids, false)
}

func (q *TaskQueue) reachable(id string) {
	q.mu.Lock()
	delete(q.unreachable, id)
	q.mu.Unlock()
}

func (q *TaskQueue) isUnreachable(id string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.unreachable[id]
}

// kick asks a worker to dispatch the device's queued tasks.
func (q *TaskQueue) kick(id string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.running[id] {
		q.again[id] = true
		return
	}
	if q.pending[id] {
		return
	}
	select {
	case q.wake <- id:
		q.pending[id] = true
	default:
		metricTaskKicksDropped.Inc()
	}
}

func (q *TaskQueue) work() {
	for {
		var id string
		select {
		case <-q.ctx.Done():
			return
		case id = <-q.wake:
		}
		q.mu.Lock()
		delete(q.pending, id)
		if q.running[id] {
			q.again[id] = true
			q.mu.Unlock()
			continue
		}
		q.running[id] = true
		q.mu.Unlock()
		for {
			q.dispatchUSP(id)
			q.mu.Lock()
			if q.again[id] && q.ctx.Err() == nil {
				delete(q.again, id)
				q.mu.Unlock()
				continue
			}
			delete(q.again, id)
			delete(q.running, id)
			q.mu.Unlock()
			break
		}
	}
}

// dispatchUSP sends the device's queued tasks one at a time, in order,
// until none is left or the device cannot be reached.
func (q *TaskQueue) dispatchUSP(id string) {
	for q.ctx.Err() == nil {
		t, ok, err := q.o.Store.ClaimNextTask(q.ctx, id, "usp", q.id)
		if err != nil {
			if q.ctx.Err() == nil {
				q.log.Warn("claiming a task failed", "device", id, "err", err)
			}
			return
		}
		if !ok {
			return
		}
		cmd := &duetv1.Command{}
		if err := proto.Unmarshal(t.Command, cmd); err != nil {
			q.settle(q.ctx, t, nil, devicemodel.Errorf(devicemodel.CodeInternal, "stored command is undecodable: %v", err))
			continue
		}
		metricTasksDispatched.WithLabelValues(string(devicemodel.ProtocolUSP)).Inc()
		q.log.Debug("dispatching task", "task", t.ID, "device", id, "operation", t.Operation)
		rctx, cancel := context.WithTimeout(q.ctx, q.o.CommandTimeout)
		res, err := q.o.Bus.Request(rctx, devicemodel.ProtocolUSP, cmd)
		cancel()
		if q.ctx.Err() != nil {
			// Stopping: leave it dispatched; the next Start decides.
			return
		}
		// Use a context that survives a Stop racing with us: the outcome
		// is known now and must be recorded.
		sctx, scancel := context.WithTimeout(context.WithoutCancel(q.ctx), 10*time.Second)
		requeued := q.settle(sctx, t, res, err)
		if requeued {
			q.waiting(sctx, id, waitReason(err))
		}
		scancel()
		if requeued && neverSent(err) {
			q.mu.Lock()
			q.unreachable[id] = true
			q.mu.Unlock()
		}
		if requeued {
			// Not reachable now; it is dispatched again when the device
			// is next seen.
			return
		}
		if !t.MoreQueued {
			// Nothing was queued behind it: a task created since kicked
			// the device, and work() runs this again (q.again).
			return
		}
	}
}

// neverSent reports whether a bus error proves the command did not reach
// the device. The bus uses CodeUnavailable both for "nobody serves this
// device" (NATS no responders) and for "the agent went away while we
// waited"; only the former is safe to re-send a reboot after, so the
// messages are told apart here.
func neverSent(err error) bool {
	switch devicemodel.ErrorCode(err) {
	case devicemodel.CodeResourcesExceeded:
		return true
	case devicemodel.CodeUnavailable:
		m := devicemodel.ErrorMessage(err)
		return strings.Contains(m, "nobody serves") || strings.Contains(m, "is not connected") ||
			strings.Contains(m, "no return address") || strings.Contains(m, "before the command ran")
	}
	return false
}

// settle records how a dispatched task ended: a result (res) or a
// transport error (err). It returns true when the task went back to the
// queue. The rules, so a non-idempotent task never runs twice:
//   - never delivered (neverSent): back to the queue;
//   - outcome unknown (timeout, a session or agent lost mid-command,
//     a restart): a non-idempotent task fails as outcome_unknown; an
//     idempotent one is queued again, up to MaxAttempts;
//   - otherwise: succeeded, or failed with the device's fault.
func (q *TaskQueue) settle(ctx context.Context, t store.Task, res *duetv1.CommandResult, err error) (requeued bool) {
	if err == nil && res.GetError() != nil {
		e := res.GetError()
		err = &devicemodel.Error{Code: devicemodel.Code(e.GetCode()), Message: e.GetMessage(), DeviceFault: e.GetDeviceFault()}
	}
	if err == nil {
		// One rule for operations on several paths (README, task states).
		if perr := allPathsFailed(t, res); perr != nil {
			err = perr
		}
	}
	code := devicemodel.ErrorCode(err)
	unknown := code == devicemodel.CodeOutcomeUnknown || code == devicemodel.CodeTimeout ||
		(code == devicemodel.CodeUnavailable && !neverSent(err))
	switch {
	case err != nil && neverSent(err), err != nil && unknown && !t.NonIdempotent && t.Attempts < q.o.MaxAttempts:
		ok, rerr := q.o.Store.RequeueTask(ctx, t.ID, devicemodel.ErrorMessage(err), !neverSent(err))
		if rerr != nil {
			q.log.Error("requeueing a task failed", "task", t.ID, "device", t.DeviceID, "err", rerr)
			return false
		}
		if ok {
			metricTasksRequeued.Inc()
			q.log.Debug("task requeued", "task", t.ID, "device", t.DeviceID, "why", devicemodel.ErrorMessage(err))
		}
		return ok
	}
	if ps := res.GetGet().GetParams(); len(ps) > 0 {
		// Before the task turns final, so a client woken by it reads
		// the fresh values from the cache.
		if cerr := q.o.Store.UpsertParameters(ctx, cacheParams(t.DeviceID, observedAt(t), ps)); cerr != nil {
			q.log.Warn("caching a get result failed", "task", t.ID, "device", t.DeviceID, "err", cerr)
		}
	}
	o := store.TaskOutcome{State: store.TaskSucceeded}
	if res != nil {
		b, merr := proto.Marshal(res)
		if merr == nil {
			o.Result = b
		}
	}
	if err != nil {
		o.State = store.TaskFailed
		if unknown {
			code = devicemodel.CodeOutcomeUnknown
		}
		o.ErrorCode = code.String()
		o.ErrorMessage = devicemodel.ErrorMessage(err)
		var de *devicemodel.Error
		if errors.As(err, &de) {
			o.DeviceFault = int(de.DeviceFault)
		}
	}
	if err == nil {
		if p, ok := q.planAwait(t, res); ok && q.await(ctx, t, p) {
			// Accepted, not done: the device reports the outcome later
			// (completion.go).
			return false
		}
		// What the device accepted is now its state: cache it before the
		// task turns final, so whoever it wakes (a client, the
		// reconciler) reads the new values.
		q.cacheChanges(ctx, t, res)
		q.recordListings(ctx, t, res)
	}
	final, done, ferr := q.o.Store.FinishTask(ctx, t.ID, o)
	if ferr != nil {
		q.log.Error("recording a task's outcome failed", "task", t.ID, "device", t.DeviceID, "err", ferr)
		return false
	}
	if done {
		metricTasksFinished.WithLabelValues(string(o.State)).Inc()
		q.notify(t.ID)
		q.recordDiagnostic(ctx, final)
		if q.finished != nil {
			q.finished(ctx, final)
		}
	}
	return false
}

// Results applies command results that arrived as command_result events
// or in a SessionWorkRequest. A result whose command is not a task is
// ignored.
func (q *TaskQueue) Results(ctx context.Context, results []*duetv1.CommandResult) error {
	for _, r := range results {
		if r.GetCommandId() == "" {
			continue
		}
		t, err := q.o.Store.FindTaskByID(ctx, r.GetCommandId())
		if devicemodel.ErrorCode(err) == devicemodel.CodeNotFound {
			continue
		}
		if err != nil {
			return err
		}
		if t.State != store.TaskDispatched && !(t.State == store.TaskFailed && t.ErrorCode == devicemodel.CodeOutcomeUnknown.String()) {
			continue
		}
		if t.SubState != "" {
			// Already answered; it waits for its completion (a
			// redelivered result changes nothing).
			continue
		}
		if t.DeviceID != r.GetDeviceId() && r.GetDeviceId() != "" {
			q.log.Warn("command result for a task of another device ignored", "task", t.ID, "device", r.GetDeviceId())
			continue
		}
		q.settle(ctx, t, r, nil)
	}
	return nil
}

// SessionWork answers the CWMP adapter: it applies the previous round's
// results, settles tasks of this device still dispatched without a
// result (their session ended, or the adapter did not run them), and hands
// out the next queued task, one per round so per-device order and "one in
// flight" hold.
func (q *TaskQueue) SessionWork(ctx context.Context, req *duetv1.SessionWorkRequest) (*duetv1.SessionWork, error) {
	q.mu.Lock()
	delete(q.crAccepted, req.GetDeviceId()) // the session came
	q.mu.Unlock()
	if err := q.Results(ctx, req.GetResults()); err != nil {
		return nil, err
	}
	// Most sessions are a periodic Inform of a device with no task: one
	// round trip of indexed probes answers them, instead of the claim's
	// transaction below (issue 17: they were a fifth of Duet's CPU per
	// session, and four PostgreSQL round trips). The same round trip
	// finds the tasks to settle.
	open, left, err := q.o.Store.OpenTasks(ctx, req.GetDeviceId())
	if err != nil {
		return nil, err
	}
	if !open {
		return &duetv1.SessionWork{}, nil
	}
	for _, t := range left {
		q.settle(ctx, t, nil, devicemodel.Errorf(devicemodel.CodeOutcomeUnknown, "no result came back from CWMP session %s", t.Session))
	}
	t, ok, err := q.o.Store.ClaimNextTask(ctx, req.GetDeviceId(), req.GetSessionId(), q.id)
	if err != nil || !ok {
		return &duetv1.SessionWork{}, err
	}
	cmd := &duetv1.Command{}
	if err := proto.Unmarshal(t.Command, cmd); err != nil {
		q.settle(ctx, t, nil, devicemodel.Errorf(devicemodel.CodeInternal, "stored command is undecodable: %v", err))
		return &duetv1.SessionWork{}, nil
	}
	if q.prepare != nil {
		if err := q.prepare(ctx, t, cmd); err != nil {
			q.settle(ctx, t, nil, devicemodel.Errorf(devicemodel.CodeConflict, "preparing the command: %s", devicemodel.ErrorMessage(err)))
			return &duetv1.SessionWork{}, nil
		}
	}
	metricTasksDispatched.WithLabelValues(string(devicemodel.ProtocolCWMP)).Inc()
	return &duetv1.SessionWork{Commands: []*duetv1.Command{cmd}}, nil
}

// wakeCWMP sends a connection request in the background, bounded: when
// MaxConnectionRequests are already out, the task waits for the device's
// next periodic inform. A refused request is tried again a few times while
// the device still has queued tasks: a CPE answers 503 while a session is
// still closing (TR-069 §3.2.2), which is exactly when a task created right
// after the previous one's result arrives.
func (q *TaskQueue) wakeCWMP(deviceID, url string) {
	if url == "" {
		metricConnReqs.WithLabelValues("skipped").Inc()
		q.waiting(q.ctx, deviceID, store.WaitAwaitingInform)
		return
	}
	q.mu.Lock()
	if q.waking[deviceID] {
		// Not merged into the request that is out: the CPE may have
		// accepted it already and its session asked for its last work
		// before these tasks were queued. Sent again once it is back.
		q.rewake[deviceID] = true
		q.mu.Unlock()
		return
	}
	select {
	case q.crSem <- struct{}{}:
	default:
		// Every slot is busy: wait in line (a rollout wakes hundreds
		// of CPEs at once), unless the line is full too; then the tasks
		// wait for the device's next inform.
		if _, queued := q.crWaiting[deviceID]; !queued {
			if len(q.crLine) >= q.o.MaxPendingWakeups {
				q.mu.Unlock()
				metricConnReqs.WithLabelValues("skipped").Inc()
				return
			}
			q.crWaiting[deviceID] = url
			q.crLine = append(q.crLine, deviceID)
		}
		q.mu.Unlock()
		return
	}
	q.waking[deviceID] = true
	q.mu.Unlock()
	q.wg.Add(1)
	go func() {
		defer q.wg.Done()
		gaveUp := false
		defer func() {
			q.mu.Lock()
			delete(q.waking, deviceID)
			again := q.rewake[deviceID] && !gaveUp
			delete(q.rewake, deviceID)
			<-q.crSem
			var next, nextURL string
			if len(q.crLine) > 0 && q.ctx.Err() == nil {
				next = q.crLine[0]
				q.crLine = q.crLine[1:]
				nextURL = q.crWaiting[next]
				delete(q.crWaiting, next)
			}
			q.mu.Unlock()
			if next != "" {
				q.wakeCWMP(next, nextURL)
			}
			if again && q.ctx.Err() == nil {
				q.wakeIfWanted(deviceID)
			}
		}()
		backoff := 250 * time.Millisecond
		for try := 1; ; try++ {
			err := q.connectionRequest(deviceID, url)
			if err == nil {
				metricConnReqs.WithLabelValues("sent").Inc()
				q.mu.Lock()
				a := q.crAccepted[deviceID]
				q.crAccepted[deviceID] = crAccepted{at: time.Now(), sent: a.sent + 1}
				q.mu.Unlock()
				q.waiting(q.ctx, deviceID, store.WaitAwaitingSession)
				return
			}
			if try == connReqTries || devicemodel.ErrorCode(err) == devicemodel.CodeUnauthenticated {
				// A wake-up that came meanwhile would meet the same
				// failure: its tasks wait for the inform too.
				gaveUp = true
				metricConnReqs.WithLabelValues("failed").Inc()
				q.log.Info("connection request failed; the tasks wait for the next inform", "device", deviceID, "err", err)
				if strings.Contains(devicemodel.ErrorMessage(err), "nobody serves") {
					// No CWMP adapter running: Duet's trouble, not the
					// device's, so no evidence about its presence either.
					q.waiting(q.ctx, deviceID, store.WaitNoAdapter)
				} else {
					q.waiting(q.ctx, deviceID, store.WaitConnReqFailed+": "+connReqFailure(err))
					if q.connReqFailed != nil {
						q.connReqFailed(q.ctx, deviceID, err)
					}
				}
				return
			}
			sleepCtx(q.ctx, backoff)
			backoff *= 2
			devs, derr := q.o.Store.DevicesWithQueuedTasks(q.ctx, []string{deviceID})
			if q.ctx.Err() != nil || derr != nil || len(devs) == 0 {
				return
			}
		}
	}()
}

// wakeIfWanted sends a connection request to a CWMP device whose queued
// tasks still ask for one, to the URL it reported last.
func (q *TaskQueue) wakeIfWanted(deviceID string) {
	devs, err := q.o.Store.DevicesWithQueuedTasks(q.ctx, []string{deviceID})
	if err != nil {
		if q.ctx.Err() == nil {
			q.log.Warn("scanning queued tasks failed", "device", deviceID, "err", err)
		}
		return
	}
	for _, d := range devs {
		if d.ID == deviceID && d.Protocol == devicemodel.ProtocolCWMP && d.WantsConnectionRequest {
			q.wakeCWMP(d.ID, d.ConnectionRequestURL)
		}
	}
}

// crAccepted is a connection request a CPE accepted: when, and
// how many were accepted since its last session.
type crAccepted struct {
	at   time.Time
	sent int
}

// connReqResends bounds the connection requests (the first included) that
// one wake-up sends to a CPE that accepts them but opens no session; then
// the tasks wait for its next inform.
const connReqResends = 3

// resendConnReqs sends the connection request again to CPEs that accepted
// one ConnReqResendAfter ago, opened no session since, and still have
// tasks that ask for one. TR-069 §3.2.2 lets a CPE that is busy (in a
// session, or just closing one) accept a request and not act on it.
func (q *TaskQueue) resendConnReqs(ctx context.Context) {
	q.mu.Lock()
	var due []string
	for id, a := range q.crAccepted {
		if time.Since(a.at) < q.o.ConnReqResendAfter {
			continue
		}
		if a.sent >= connReqResends {
			delete(q.crAccepted, id)
			continue
		}
		due = append(due, id)
	}
	q.mu.Unlock()
	if len(due) == 0 {
		return
	}
	devs, err := q.o.Store.DevicesWithQueuedTasks(ctx, due)
	if err != nil {
		return
	}
	want := map[string]string{} // device -> its current connection-request URL
	for _, d := range devs {
		if d.Protocol == devicemodel.ProtocolCWMP && d.WantsConnectionRequest && d.ConnectionRequestURL != "" {
			want[d.ID] = d.ConnectionRequestURL
		}
	}
	for _, id := range due {
		url, wanted := want[id]
		q.mu.Lock()
		_, ok := q.crAccepted[id]
		if ok && !wanted {
			delete(q.crAccepted, id)
		}
		q.mu.Unlock()
		if ok && wanted {
			metricConnReqs.WithLabelValues("resent").Inc()
			q.wakeCWMP(id, url)
		}
	}
}

// connReqTries is how many connection requests one wake-up sends at most
// (over about 2 s).
const connReqTries = 4

func (q *TaskQueue) connectionRequest(deviceID, url string) error {
	ctx, cancel := context.WithTimeout(q.ctx, 30*time.Second)
	defer cancel()
	// The device's stored connection-request credentials (issue 5 §6),
	// decrypted only for this command; none stored, none sent.
	user, pass, _, err := q.o.Store.ConnectionRequestCredentials(ctx, q.o.CredentialKey, deviceID)
	if err != nil {
		return err
	}
	cr := &duetv1.ConnectionRequest{Url: url, Username: user, Password: pass}
	// A CPE that accepted enrolled credentials may or may not use the new
	// connection-request password yet: the new one first, then the old
	// (docs/guide-cwmp.md, "Enrolment").
	puser, ppass, pending, err := q.o.Store.PendingConnectionRequestCredentials(ctx, q.o.CredentialKey, deviceID)
	if err != nil {
		return err
	}
	if pending {
		cr = &duetv1.ConnectionRequest{Url: url, Username: puser, Password: ppass,
			Fallback: true, FallbackUsername: user, FallbackPassword: pass}
	}
	res, err := q.o.Bus.Request(ctx, devicemodel.ProtocolCWMP, &duetv1.Command{
		DeviceId: deviceID,
		Op:       &duetv1.Command_ConnectionRequest{ConnectionRequest: cr},
	})
	if err == nil && res.GetError() != nil {
		err = bus.ErrorFromProto(res.GetError())
	}
	return err
}

// notify wakes the API requests waiting on a task.
func (q *TaskQueue) notify(id string) {
	q.mu.Lock()
	ws := q.waiters[id]
	delete(q.waiters, id)
	q.mu.Unlock()
	for _, c := range ws {
		close(c)
	}
}

// Wait returns the task once it is final or when d has passed, whichever
// is first. It is woken by this process's own settling and polls the
// store meanwhile, for tasks settled by another controller.
func (q *TaskQueue) Wait(ctx context.Context, id string, d time.Duration) (store.Task, error) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	poll := time.NewTicker(250 * time.Millisecond)
	defer poll.Stop()
	for {
		ch := make(chan struct{})
		q.mu.Lock()
		q.waiters[id] = append(q.waiters[id], ch)
		q.mu.Unlock()
		t, err := q.o.Store.FindTaskByID(ctx, id)
		if err != nil || t.State.Terminal() {
			q.dropWaiter(id, ch)
			return t, err
		}
		select {
		case <-ch:
		case <-poll.C:
			q.dropWaiter(id, ch)
		case <-timer.C:
			q.dropWaiter(id, ch)
			return q.o.Store.FindTaskByID(ctx, id)
		case <-ctx.Done():
			q.dropWaiter(id, ch)
			return t, ctx.Err()
		}
	}
}

func (q *TaskQueue) dropWaiter(id string, ch chan struct{}) {
	q.mu.Lock()
	defer q.mu.Unlock()
	ws := q.waiters[id]
	for i, c := range ws {
		if c == ch {
			ws = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(q.waiters, id)
	} else {
		q.waiters[id] = ws
	}
}

// cacheChanges updates the parameter cache after a successful Set, Add or
// Delete: the values set (less any the device reported failed), the new
// instance with its parameters and keys, the deleted instances' subtrees.
func (q *TaskQueue) cacheChanges(ctx context.Context, t store.Task, res *duetv1.CommandResult) {
	var cmd duetv1.Command
	if t.Operation != "set" && t.Operation != "add" && t.Operation != "delete" {
		return
	}
	if err := proto.Unmarshal(t.Command, &cmd); err != nil {
		return
	}
	now := observedAt(t)
	var ps []*duetv1.Parameter
	var cerr error
	switch {
	case cmd.GetSet() != nil:
		failed := map[string]bool{}
		for _, e := range res.GetSet().GetErrors() {
			failed[e.GetPath()] = true
		}
		for _, p := range cmd.GetSet().GetParams() {
			if !failed[p.GetPath()] {
				ps = append(ps, p)
			}
		}
	case cmd.GetAdd() != nil:
		inst := res.GetAdd().GetInstancePath()
		if inst == "" || !strings.HasSuffix(inst, ".") {
			return
		}
		failed := map[string]bool{}
		for _, e := range res.GetAdd().GetParamErrors() {
			failed[e.GetPath()] = true
		}
		for _, p := range cmd.GetAdd().GetParams() {
			if !failed[p.GetPath()] && !failed[inst+p.GetPath()] {
				ps = append(ps, &duetv1.Parameter{Path: inst + p.GetPath(), Value: p.GetValue(), Type: p.GetType()})
			}
		}
		for k, v := range res.GetAdd().GetUniqueKeys() {
			ps = append(ps, &duetv1.Parameter{Path: inst + k, Value: v})
		}
	case cmd.GetDelete() != nil:
		paths := res.GetDelete().GetDeletedPaths()
		if len(paths) == 0 {
			paths = cmd.GetDelete().GetObjectPaths()
		}
		cerr = q.o.Store.DeleteParameterSubtreesAt(ctx, t.DeviceID, paths, now)
	}
	if len(ps) > 0 {
		cerr = q.o.Store.UpsertParameters(ctx, cacheParams(t.DeviceID, now, ps))
	}
	if cerr != nil {
		q.log.Warn("caching a task's changes failed", "task", t.ID, "device", t.DeviceID, "err", cerr)
	}
}

// observedAt is the time a task's result stamps in the parameter cache:
// when it was dispatched, on the database's clock. A device runs its
// tasks one at a time, so dispatch times order what its tasks observed
// whichever path (the task's settle, a late command_result event) writes
// it, and whenever: a Get answered before a Delete is older than the
// Delete's tombstone, a Get sent after it newer (issue 12 item 2).
func observedAt(t store.Task) time.Time {
	if t.DispatchedAt != nil {
		return *t.DispatchedAt
	}
	return time.Now()
}
