package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/duet-dm/duet/controller/policy"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

var (
	metricBulkTasks = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_bulk_tasks_total",
		Help: "Devices handled by bulk task batches, by outcome (created, skipped: the device already had the batch's task, failed).",
	}, []string{"outcome"})
	metricBulkRunning = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "duet_bulk_batches_running",
		Help: "Task batches this controller is working on.",
	})
)

// MaxBulkRate bounds a batch's rate (tasks created per second): past a
// thousand a second the task queue, not the batch, should be the limit
// an operator thinks about.
const MaxBulkRate = 1000

// BulkOptions configure NewBulkRunner.
type BulkOptions struct {
	Store *store.Store
	// Tasks creates each task (the API's own path).
	Tasks *TaskQueue
	// DefaultRate is the rate of a batch that names none, tasks per
	// second; 0 < DefaultRate <= MaxBulkRate. Default 50.
	DefaultRate float64
	// MaxRunning bounds the batches running at once; a new one past it is
	// refused with 429. Default 16.
	MaxRunning int
	// PageSize is how many devices are matched per page (and per saved
	// cursor). Default 100.
	PageSize int
	// AdoptInterval is how often the runner looks for running batches
	// whose replica is gone. Default 5 s.
	AdoptInterval time.Duration
	Logger        *slog.Logger
}

// BulkRunner creates the tasks of task batches (POST /api/v1/tasks): it
// pages through the matching devices in ID order and creates one task per
// device through TaskQueue.Create, at the batch's rate.
//
// Restart safety: each task row carries its batch ID from its INSERT
// (store.ContextWithTaskBatch), and tasks_batch_device_idx allows one task
// per batch and device. After each page the cursor (the page's last device
// ID) is saved. A restart resumes every running batch from its cursor; the
// devices of the interrupted page that already have their task are
// skipped, so each device gets exactly one task.
//
// Each batch runs in one replica at a time, its runner (Start).
type BulkRunner struct {
	o   BulkOptions
	log *slog.Logger

	mu      sync.Mutex
	running map[string]context.CancelFunc
	stopped bool

	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	stopOnce sync.Once
}

// NewBulkRunner checks options; Start resumes running batches.
func NewBulkRunner(o BulkOptions) (*BulkRunner, error) {
	if o.Store == nil || o.Tasks == nil {
		return nil, errors.New("controller: bulk runner needs a store and a task queue")
	}
	if o.DefaultRate == 0 {
		o.DefaultRate = 50
	}
	if !(o.DefaultRate > 0 && o.DefaultRate <= MaxBulkRate) {
		return nil, fmt.Errorf("controller: bulk default rate %v is not in (0, %d] tasks per second", o.DefaultRate, MaxBulkRate)
	}
	if o.MaxRunning <= 0 {
		o.MaxRunning = 16
	}
	if o.PageSize <= 0 {
		o.PageSize = 100
	}
	if o.AdoptInterval <= 0 {
		o.AdoptInterval = 5 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &BulkRunner{o: o, log: o.Logger.With("component", "bulk"), running: map[string]context.CancelFunc{}, ctx: ctx, cancel: cancel}, nil
}

// Start resumes the running batches whose controller is gone, and from
// then on looks for such batches every AdoptInterval. A batch runs in one
// replica at a time: each records its runner (this replica's dispatcher
// ID, alive while it holds its dispatcher lease), and a replica takes over
// only a batch whose runner is gone, one replica winning each
// (store.AdoptTaskBatch). Start the TaskQueue first: its lease is the
// proof of life.
func (b *BulkRunner) Start(ctx context.Context) error {
	if err := b.adopt(ctx); err != nil {
		return err
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		t := time.NewTicker(b.o.AdoptInterval)
		defer t.Stop()
		for {
			select {
			case <-b.ctx.Done():
				return
			case <-t.C:
				if err := b.adopt(b.ctx); err != nil && b.ctx.Err() == nil {
					b.log.Warn("looking for task batches to take over", "err", err)
				}
			}
		}
	}()
	return nil
}

// Runs reports whether this runner is running batch id now.
func (b *BulkRunner) Runs(id string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.running[id] != nil
}

// adopt takes over and runs the running batches whose runner is gone.
func (b *BulkRunner) adopt(ctx context.Context) error {
	jobs, err := b.o.Store.OrphanedTaskBatches(ctx, b.o.Tasks.id)
	if err != nil {
		return err
	}
	for _, j := range jobs {
		b.mu.Lock()
		mine := b.running[j.ID] != nil
		b.mu.Unlock()
		if mine {
			continue
		}
		ok, err := b.o.Store.AdoptTaskBatch(ctx, j, b.o.Tasks.id)
		if err != nil {
			return err
		}
		if !ok {
			continue // another replica took it
		}
		b.log.Info("resuming task batch", "batch", j.ID, "cursor", j.Cursor, "matched", j.Matched, "previous_runner", j.Runner)
		j.Runner = b.o.Tasks.id
		b.launch(j)
	}
	return nil
}

// Stop stops every batch where it is (each resumes at the next Start).
// Safe to call twice.
func (b *BulkRunner) Stop() {
	b.stopOnce.Do(func() {
		b.mu.Lock()
		b.stopped = true
		b.mu.Unlock()
		b.cancel()
		b.wg.Wait()
	})
}

func (b *BulkRunner) launch(j store.TaskBatch) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped || b.running[j.ID] != nil {
		return
	}
	ctx, cancel := context.WithCancel(b.ctx)
	b.running[j.ID] = cancel
	metricBulkRunning.Inc()
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		defer func() {
			b.mu.Lock()
			delete(b.running, j.ID)
			b.mu.Unlock()
			cancel()
			metricBulkRunning.Dec()
		}()
		b.run(ctx, j)
	}()
}

// BulkFilter selects the devices of a batch: the conditions of GET
// /api/v1/devices' query, or a group (and nothing else).
type BulkFilter struct {
	Protocol        string     `json:"protocol,omitempty"`
	Online          *bool      `json:"online,omitempty"`
	Manufacturer    string     `json:"manufacturer,omitempty"`
	ProductClass    string     `json:"product_class,omitempty"`
	SoftwareVersion string     `json:"software_version,omitempty"`
	LastSeenAfter   *time.Time `json:"last_seen_after,omitempty"`
	LastSeenBefore  *time.Time `json:"last_seen_before,omitempty"`
	Tag             string     `json:"tag,omitempty"`
	Q               string     `json:"q,omitempty"`
	// Param holds conditions "<path>:<op>:<value>", all of which must hold.
	Param []string `json:"param,omitempty"`
	// IDs: only these devices (at most MaxBulkIDs), with the other
	// conditions; a selection made in the console.
	IDs []string `json:"ids,omitempty"`
	// Group: the members of this group (its CEL filter), instead of the
	// conditions above.
	Group string `json:"group,omitempty"`
}

// deviceFilter checks f and converts it; errors name the field.
func (f BulkFilter) deviceFilter() (store.DeviceFilter, error) {
	var sf store.DeviceFilter
	if f.Group != "" {
		if f.Protocol != "" || f.Online != nil || f.Manufacturer != "" || f.ProductClass != "" || f.SoftwareVersion != "" ||
			f.LastSeenAfter != nil || f.LastSeenBefore != nil || f.Tag != "" || f.Q != "" || len(f.Param) > 0 || len(f.IDs) > 0 {
			return sf, invalid("filter: group selects the devices on its own; put other conditions in the group's filter")
		}
		return sf, nil
	}
	if f.Protocol != "" {
		p, err := devicemodel.ParseProtocol(f.Protocol)
		if err != nil {
			return sf, invalid("filter.protocol: must be cwmp or usp")
		}
		sf.Protocol = p
	}
	sf.Online = f.Online
	sf.Manufacturer, sf.ProductClass, sf.SoftwareVersion = f.Manufacturer, f.ProductClass, f.SoftwareVersion
	if f.LastSeenAfter != nil {
		sf.LastSeenAfter = *f.LastSeenAfter
	}
	if f.LastSeenBefore != nil {
		sf.LastSeenBefore = *f.LastSeenBefore
	}
	if f.Tag != "" {
		if err := store.CheckTag(f.Tag); err != nil {
			return sf, invalid("filter.tag: %s", devicemodel.ErrorMessage(err))
		}
		sf.Tag = f.Tag
	}
	if err := store.CheckQuery(f.Q); err != nil {
		return sf, invalid("filter.q: %s", devicemodel.ErrorMessage(err))
	}
	sf.Query = f.Q
	conds, err := parseParamConditions("filter.param", f.Param)
	if err != nil {
		return sf, err
	}
	sf.Params = conds
	if len(f.IDs) > MaxBulkIDs {
		return sf, invalid("filter.ids: %d devices; at most %d (use the other conditions for more)", len(f.IDs), MaxBulkIDs)
	}
	for i, id := range f.IDs {
		if err := devicemodel.ValidateDeviceID(id); err != nil {
			return sf, invalid("filter.ids[%d]: %s", i, devicemodel.ErrorMessage(err))
		}
	}
	sf.IDs = f.IDs
	return sf, nil
}

// MaxBulkIDs bounds the device IDs a batch filter lists.
const MaxBulkIDs = 1000

// parseParamConditions parses param conditions; an error names the field
// and index, and keeps a path error's position.
func parseParamConditions(field string, vs []string) ([]store.ParamCondition, error) {
	if len(vs) > MaxParamConditions {
		return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s: %d conditions; at most %d", field, len(vs), MaxParamConditions)
	}
	out := make([]store.ParamCondition, 0, len(vs))
	for i, v := range vs {
		c, err := store.ParseParamCondition(v)
		if err != nil {
			return nil, devicemodel.Errorf(devicemodel.ErrorCode(err), "%s[%d]: %s", field, i, devicemodel.ErrorMessage(err))
		}
		out = append(out, c)
	}
	return out, nil
}

// BulkRequest is the body of POST /api/v1/tasks.
type BulkRequest struct {
	// Filter is required; {} selects every device.
	Filter *BulkFilter `json:"filter"`
	// Task is the request each device gets, as for POST
	// /api/v1/devices/{id}/tasks (without wait).
	Task *TaskRequest `json:"task"`
	// Rate is tasks created per second; default the runner's DefaultRate.
	Rate *float64 `json:"rate,omitempty"`
}

// checkBulkTask validates the task of a batch before anything is stored:
// the checks TaskQueue.Create makes, for either protocol.
func checkBulkTask(r *TaskRequest) error {
	if r.Wait != 0 {
		return invalid("task.wait: a batch cannot wait for results; follow GET /api/v1/task-batches/{id} and the tasks")
	}
	if r.ExpiresAt != nil && !r.ExpiresAt.After(time.Now()) {
		return invalid("task.expires_at %s is in the past", r.ExpiresAt.Format(time.RFC3339))
	}
	if len(r.UniqueKey) > 200 {
		return invalid("task.unique_key is longer than 200 characters")
	}
	for _, p := range []devicemodel.Protocol{devicemodel.ProtocolCWMP, devicemodel.ProtocolUSP} {
		if _, err := buildCommand(r, devicemodel.Device{ID: "bulk-check", Protocol: p}, "bulk-check"); err != nil {
			return devicemodel.Errorf(devicemodel.ErrorCode(err), "task: %s", devicemodel.ErrorMessage(err))
		}
	}
	return nil
}

// Check validates a bulk request as Submit does, storing nothing.
func (b *BulkRunner) Check(ctx context.Context, req BulkRequest) error {
	if req.Filter == nil {
		return invalid("filter is required ({} for every device)")
	}
	if req.Task == nil {
		return invalid("task is required")
	}
	if _, err := req.Filter.deviceFilter(); err != nil {
		return err
	}
	if req.Filter.Group != "" {
		if _, err := b.o.Store.FindGroupByID(ctx, req.Filter.Group); err != nil {
			if devicemodel.ErrorCode(err) == devicemodel.CodeNotFound {
				return invalid("filter.group: no group %q", req.Filter.Group)
			}
			return err
		}
	}
	if req.Rate != nil && !(*req.Rate > 0 && *req.Rate <= MaxBulkRate) {
		return invalid("rate: %v is not in (0, %d] tasks per second", *req.Rate, MaxBulkRate)
	}
	return checkBulkTask(req.Task)
}

// Count validates a bulk request (Check) and counts the devices its
// filter matches now: the figure a confirmation shows before Submit.
// Devices that come to match before the runner reaches them get their
// task too.
func (b *BulkRunner) Count(ctx context.Context, req BulkRequest) (int64, error) {
	if err := b.Check(ctx, req); err != nil {
		return 0, err
	}
	if req.Filter.Group != "" {
		return b.countGroup(ctx, req.Filter.Group)
	}
	sf, err := req.Filter.deviceFilter()
	if err != nil {
		return 0, err
	}
	var n int64
	sf.Count, sf.Limit = &n, 1
	if _, _, err := b.o.Store.FindDevices(ctx, sf); err != nil {
		return 0, err
	}
	return n, nil
}

func (b *BulkRunner) countGroup(ctx context.Context, id string) (int64, error) {
	var n int64
	cursor := ""
	for {
		ids, next, done, err := b.page(ctx, BulkFilter{Group: id}, store.DeviceFilter{}, cursor)
		if err != nil {
			return 0, err
		}
		n += int64(len(ids))
		if done {
			return n, nil
		}
		cursor = next
	}
}

// Submit validates a bulk request, stores the batch and starts it.
// Nothing is stored when the request is invalid. Errors:
// CodeInvalidArgument / CodeInvalidPath (the message names the field);
// CodeResourcesExceeded when MaxRunning batches run.
func (b *BulkRunner) Submit(ctx context.Context, actor string, req BulkRequest) (store.TaskBatch, error) {
	if err := b.Check(ctx, req); err != nil {
		return store.TaskBatch{}, err
	}
	rate := b.o.DefaultRate
	if req.Rate != nil {
		rate = *req.Rate
	}
	filter, err := json.Marshal(req.Filter)
	if err != nil {
		return store.TaskBatch{}, err
	}
	task, err := json.Marshal(req.Task)
	if err != nil {
		return store.TaskBatch{}, err
	}
	j, err := b.o.Store.CreateTaskBatch(ctx, actor, store.TaskBatch{Filter: filter, Request: task, Rate: rate, Runner: b.o.Tasks.id}, b.o.MaxRunning)
	if err != nil {
		return j, err
	}
	b.log.Info("task batch created", "batch", j.ID, "actor", actor, "operation", req.Task.Operation, "rate", rate)
	b.launch(j)
	return j, nil
}

// Cancel stops a running batch; its tasks created so far stay. Errors as
// store.CancelTaskBatch.
func (b *BulkRunner) Cancel(ctx context.Context, actor, id string) (store.TaskBatch, error) {
	j, err := b.o.Store.CancelTaskBatch(ctx, actor, id)
	if err != nil {
		return j, err
	}
	b.mu.Lock()
	if cancel := b.running[id]; cancel != nil {
		cancel()
	}
	b.mu.Unlock()
	b.log.Info("task batch cancelled", "batch", id, "actor", actor)
	return j, nil
}

// run works on one batch until it is done, cancelled, failed, or the
// runner stops.
func (b *BulkRunner) run(ctx context.Context, j store.TaskBatch) {
	log := b.log.With("batch", j.ID)
	var f BulkFilter
	var req TaskRequest
	if err := json.Unmarshal(j.Filter, &f); err != nil {
		b.fail(ctx, log, j.ID, j.Cursor, fmt.Sprintf("stored filter: %v", err))
		return
	}
	if err := json.Unmarshal(j.Request, &req); err != nil {
		b.fail(ctx, log, j.ID, j.Cursor, fmt.Sprintf("stored task: %v", err))
		return
	}
	sf, err := f.deviceFilter()
	if err != nil {
		b.fail(ctx, log, j.ID, j.Cursor, devicemodel.ErrorMessage(err))
		return
	}
	// The pacer is not reset between pages: the rate holds across them.
	p := &pacer{every: time.Duration(float64(time.Second) / j.Rate)}
	cursor := j.Cursor
	backoff := 0
	for {
		ids, next, done, err := b.page(ctx, f, sf, cursor)
		if err == nil {
			var prog store.BatchProgress
			prog, err = b.createPage(ctx, j, req, ids, p)
			if err == nil {
				prog.Cursor = next
				if done {
					prog.Finish = store.BatchDone
				}
				var running bool
				running, err = b.o.Store.SaveTaskBatchProgress(ctx, j.ID, prog)
				if err == nil {
					if !running {
						if done {
							log.Info("task batch done")
						}
						return // done, or cancelled meanwhile
					}
					cursor, backoff = next, 0
					continue
				}
			}
		}
		if ctx.Err() != nil {
			return
		}
		var de *devicemodel.Error
		if errors.As(err, &de) {
			// The group was deleted, or its filter no longer compiles:
			// nothing will change by trying again.
			b.fail(ctx, log, j.ID, cursor, devicemodel.ErrorMessage(err))
			return
		}
		// The database is away: redo the page later. Tasks created for
		// part of it are found then and not created again.
		backoff = min(backoff+1, 6)
		wait := time.Duration(1<<backoff) * 100 * time.Millisecond
		log.Warn("task batch page failed; retrying", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// page returns the IDs of the next page of matching devices after cursor,
// the cursor after it, and whether it is the last.
func (b *BulkRunner) page(ctx context.Context, f BulkFilter, sf store.DeviceFilter, cursor string) (ids []string, next string, done bool, err error) {
	if f.Group != "" {
		g, err := b.o.Store.FindGroupByID(ctx, f.Group)
		if err != nil {
			return nil, "", false, err
		}
		c := ""
		if cursor != "" {
			c = store.EncodeCursor(cursor)
		}
		mp, err := policy.Members(ctx, b.o.Store, g, c, b.o.PageSize)
		if err != nil {
			return nil, "", false, err
		}
		next = cursor
		if len(mp.IDs) > 0 {
			next = mp.IDs[len(mp.IDs)-1]
		}
		if mp.Next == "" {
			return mp.IDs, next, true, nil
		}
		// A page can end at the scan budget past its last member.
		if next, err = store.DecodeCursor(mp.Next); err != nil {
			return nil, "", false, err
		}
		return mp.IDs, next, false, nil
	}
	sf.After, sf.Limit = cursor, b.o.PageSize
	devs, nc, err := b.o.Store.FindDevices(ctx, sf)
	if err != nil {
		return nil, "", false, err
	}
	ids = make([]string, len(devs))
	for i, d := range devs {
		ids[i] = d.ID
	}
	next = cursor
	if len(ids) > 0 {
		next = ids[len(ids)-1]
	}
	return ids, next, nc == "", nil
}

// createPage creates the batch's task for each device of a page that does
// not have it yet. A device-specific refusal (the device was deleted,
// say) is counted in the progress; any other error aborts the page, to
// be redone.
func (b *BulkRunner) createPage(ctx context.Context, j store.TaskBatch, req TaskRequest, ids []string, p *pacer) (store.BatchProgress, error) {
	prog := store.BatchProgress{Matched: int64(len(ids))}
	have, err := b.o.Store.BatchDevicesWithTasks(ctx, j.ID, ids)
	if err != nil {
		return prog, err
	}
	// The batch's tasks carry its actor; the audit log has the batch.
	tctx := store.ContextWithActor(store.ContextWithTaskBatch(ctx, j.ID), j.Actor)
	for _, id := range ids {
		if have[id] {
			metricBulkTasks.WithLabelValues("skipped").Inc()
			continue
		}
		if err := p.wait(ctx); err != nil {
			return prog, err
		}
		_, err := b.o.Tasks.Create(tctx, id, req)
		var de *devicemodel.Error
		switch {
		case err == nil:
			metricBulkTasks.WithLabelValues("created").Inc()
		case ctx.Err() != nil:
			return prog, ctx.Err()
		case errors.As(err, &de) && de.Code == devicemodel.CodeConflict:
			// tasks_batch_device_idx: it has its task already.
			metricBulkTasks.WithLabelValues("skipped").Inc()
		case errors.As(err, &de):
			metricBulkTasks.WithLabelValues("failed").Inc()
			prog.Errors++
			prog.LastError = truncate(id+": "+de.Message, 500)
		default:
			return prog, err
		}
	}
	return prog, nil
}

func (b *BulkRunner) fail(ctx context.Context, log *slog.Logger, id, cursor, why string) {
	log.Error("task batch failed", "err", why)
	if _, err := b.o.Store.SaveTaskBatchProgress(ctx, id, store.BatchProgress{Cursor: cursor, LastError: truncate(why, 500), Finish: store.BatchFailed}); err != nil && ctx.Err() == nil {
		log.Warn("recording the failure of a task batch failed", "err", err)
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "")
}

// pacer spaces events every apart; after a pause it does not burst to
// catch up.
type pacer struct {
	every time.Duration
	next  time.Time
}

func (p *pacer) wait(ctx context.Context) error {
	now := time.Now()
	if d := p.next.Sub(now); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	} else {
		p.next = now
	}
	p.next = p.next.Add(p.every)
	return nil
}
