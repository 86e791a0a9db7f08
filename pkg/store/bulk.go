package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duet-dm/duet/pkg/devicemodel"
)

// TaskBatchState is where a bulk job is: running until every matching
// device has its task (done), it is cancelled, or it cannot go on (failed).
type TaskBatchState string

// Task batch states.
const (
	BatchRunning   TaskBatchState = "running"
	BatchDone      TaskBatchState = "done"
	BatchCancelled TaskBatchState = "cancelled"
	BatchFailed    TaskBatchState = "failed"
)

// AuditTaskBatch is the audit log's object type for bulk jobs.
const AuditTaskBatch = "task_batch"

// TaskBatch is a bulk job: one task request for every device a filter
// matches, created by the controller's worker at Rate per second.
type TaskBatch struct {
	ID      string
	Seq     int64
	Actor   string
	Filter  []byte // JSON, as the API received it
	Request []byte // JSON task request
	Rate    float64
	State   TaskBatchState
	// Cursor is the last device ID of the last completed page ("" before
	// the first).
	Cursor       string
	Matched      int64
	CreatedTasks int64
	Errors       int64
	LastError    string
	CreatedAt    time.Time
	UpdatedAt    time.Time
	FinishedAt   *time.Time
	// Runner is the dispatcher ID of the controller replica running the
	// batch ("" before one took it; migrations/0080_task_batch_runner.sql).
	Runner string
}

const batchColumns = `id, seq, actor, filter, request, rate, state, cursor, matched, created_tasks, errors,
	last_error, created_at, updated_at, finished_at, runner`

func scanBatch(row pgx.Row) (TaskBatch, error) {
	var b TaskBatch
	var st string
	err := row.Scan(&b.ID, &b.Seq, &b.Actor, &b.Filter, &b.Request, &b.Rate, &st, &b.Cursor, &b.Matched,
		&b.CreatedTasks, &b.Errors, &b.LastError, &b.CreatedAt, &b.UpdatedAt, &b.FinishedAt, &b.Runner)
	b.State = TaskBatchState(st)
	return b, err
}

// batchAudit is what the audit log records of a batch: its definition and
// state, not its counters.
type batchAudit struct {
	State   TaskBatchState `json:"state"`
	Rate    float64        `json:"rate"`
	Filter  rawJSON        `json:"filter"`
	Request rawJSON        `json:"request"`
}

func auditOf(b TaskBatch) batchAudit {
	return batchAudit{State: b.State, Rate: b.Rate, Filter: b.Filter, Request: b.Request}
}

type rawJSON []byte

func (r rawJSON) MarshalJSON() ([]byte, error) {
	if len(r) == 0 {
		return []byte("null"), nil
	}
	return r, nil
}

// CreateTaskBatch stores a running batch (Filter, Request, Rate and
// Runner of b are used) and records it in the audit log. Errors: CodeInvalidArgument
// for no actor or a rate that is not positive; CodeResourcesExceeded when
// maxRunning batches already run (0: no bound).
func (s *Store) CreateTaskBatch(ctx context.Context, actor string, b TaskBatch, maxRunning int) (TaskBatch, error) {
	if err := checkActor(actor); err != nil {
		return b, err
	}
	if !(b.Rate > 0) {
		return b, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "rate must be positive")
	}
	var out TaskBatch
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if maxRunning > 0 {
			// Serialise creates so two cannot both see room for one more.
			if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtextextended('duet.task_batches', 0))"); err != nil {
				return err
			}
			var n int
			if err := tx.QueryRow(ctx, "SELECT count(*) FROM task_batches WHERE state = 'running'").Scan(&n); err != nil {
				return err
			}
			if n >= maxRunning {
				return devicemodel.Errorf(devicemodel.CodeResourcesExceeded, "%d task batches are running, the most allowed; wait for one to finish or cancel one", n)
			}
		}
		var err error
		out, err = scanBatch(tx.QueryRow(ctx, `INSERT INTO task_batches (id, actor, filter, request, rate, state, runner)
			VALUES ($1, $2, $3, $4, $5, 'running', $6) RETURNING `+batchColumns,
			newID("batch"), actor, b.Filter, b.Request, b.Rate, b.Runner))
		if err != nil {
			return err
		}
		return audit(ctx, tx, actor, AuditCreate, AuditTaskBatch, out.ID, nil, auditOf(out))
	})
	if err != nil {
		return out, pgError("create task batch", err)
	}
	return out, nil
}

// batchColumnsLive is batchColumns with created_tasks counted now (a
// range of tasks_batch_device_idx) rather than as of the last saved page.
var batchColumnsLive = strings.Replace(batchColumns, "created_tasks",
	"(SELECT count(*) FROM tasks t WHERE t.batch_id = task_batches.id)", 1)

// FindTaskBatchByID returns a batch, its created_tasks counted now, or
// CodeNotFound.
func (s *Store) FindTaskBatchByID(ctx context.Context, id string) (TaskBatch, error) {
	b, err := scanBatch(s.pool.QueryRow(ctx, "SELECT "+batchColumnsLive+" FROM task_batches WHERE id = $1", id))
	if errors.Is(err, pgx.ErrNoRows) {
		return b, devicemodel.Errorf(devicemodel.CodeNotFound, "task batch %q not found", id)
	}
	if err != nil {
		return b, fmt.Errorf("store: find task batch: %w", err)
	}
	return b, nil
}

// TaskBatchFilter pages FindTaskBatches.
type TaskBatchFilter struct {
	State TaskBatchState // "" for all
	// Before is the cursor: the seq of the last batch of the previous page.
	Before int64
	Limit  int
}

// FindTaskBatches returns one page of batches, newest first, and the
// cursor of the next page ("" on the last; DecodeSeqCursor reads it).
func (s *Store) FindTaskBatches(ctx context.Context, f TaskBatchFilter) ([]TaskBatch, string, error) {
	limit := PageFilter{Limit: f.Limit}.limit()
	q := "SELECT " + batchColumns + " FROM task_batches WHERE true"
	var args []any
	if f.State != "" {
		args = append(args, string(f.State))
		q += fmt.Sprintf(" AND state = $%d", len(args))
	}
	if f.Before > 0 {
		args = append(args, f.Before)
		q += fmt.Sprintf(" AND seq < $%d", len(args))
	}
	args = append(args, limit+1)
	q += fmt.Sprintf(" ORDER BY seq DESC LIMIT $%d", len(args))
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, "", fmt.Errorf("store: find task batches: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (TaskBatch, error) { return scanBatch(r) })
	if err != nil {
		return nil, "", fmt.Errorf("store: find task batches: %w", err)
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		next = EncodeCursor(strconv.FormatInt(out[limit-1].Seq, 10))
	}
	return out, next, nil
}

// RunningTaskBatches returns every running batch, oldest first: the work a
// starting controller resumes.
func (s *Store) RunningTaskBatches(ctx context.Context) ([]TaskBatch, error) {
	rows, err := s.pool.Query(ctx, "SELECT "+batchColumns+" FROM task_batches WHERE state = 'running' ORDER BY seq")
	if err != nil {
		return nil, fmt.Errorf("store: running task batches: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (TaskBatch, error) { return scanBatch(r) })
	if err != nil {
		return nil, fmt.Errorf("store: running task batches: %w", err)
	}
	return out, nil
}

// OrphanedTaskBatches returns the running batches that runner may take
// over, oldest first: its own, those no runner took yet, and those whose
// runner's dispatcher lease no live session of this database holds (the
// replica stopped or crashed; the pg_locks test is OrphanedTasks').
func (s *Store) OrphanedTaskBatches(ctx context.Context, runner string) ([]TaskBatch, error) {
	rows, err := s.pool.Query(ctx, "SELECT "+batchColumns+` FROM task_batches b
		WHERE b.state = 'running' AND (b.runner = '' OR b.runner = $1 OR NOT EXISTS (
			SELECT 1 FROM pg_locks l
			WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
			  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
			  AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended('duet.lease.dispatcher.' || b.runner, 0)))
		ORDER BY seq`, runner)
	if err != nil {
		return nil, fmt.Errorf("store: orphaned task batches: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (TaskBatch, error) { return scanBatch(r) })
	if err != nil {
		return nil, fmt.Errorf("store: orphaned task batches: %w", err)
	}
	return out, nil
}

// AdoptTaskBatch makes runner the runner of b, found by
// OrphanedTaskBatches, if it is still running under b's runner; ok is
// false when another replica took it first or it ended meanwhile.
func (s *Store) AdoptTaskBatch(ctx context.Context, b TaskBatch, runner string) (ok bool, err error) {
	tag, err := s.pool.Exec(ctx, `UPDATE task_batches SET runner = $3, updated_at = now()
		WHERE id = $1 AND state = 'running' AND runner = $2`, b.ID, b.Runner, runner)
	if err != nil {
		return false, fmt.Errorf("store: adopt task batch: %w", err)
	}
	return tag.RowsAffected() == 1, nil
}

// CancelTaskBatch stops a running batch: no more tasks are created for
// it; those already created stay. Recorded in the audit log. Errors:
// CodeNotFound; CodeConflict when it is no longer running.
func (s *Store) CancelTaskBatch(ctx context.Context, actor, id string) (TaskBatch, error) {
	if err := checkActor(actor); err != nil {
		return TaskBatch{}, err
	}
	var out TaskBatch
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		before, err := scanBatch(tx.QueryRow(ctx, "SELECT "+batchColumns+" FROM task_batches WHERE id = $1 FOR UPDATE", id))
		if errors.Is(err, pgx.ErrNoRows) {
			return devicemodel.Errorf(devicemodel.CodeNotFound, "task batch %q not found", id)
		}
		if err != nil {
			return err
		}
		if before.State != BatchRunning {
			return devicemodel.Errorf(devicemodel.CodeConflict, "task batch %s is %s; only a running batch can be cancelled", id, before.State)
		}
		out, err = scanBatch(tx.QueryRow(ctx, `UPDATE task_batches SET state = 'cancelled', updated_at = now(),
			finished_at = now(), created_tasks = (SELECT count(*) FROM tasks WHERE batch_id = $1)
			WHERE id = $1 RETURNING `+batchColumns, id))
		if err != nil {
			return err
		}
		return audit(ctx, tx, actor, AuditUpdate, AuditTaskBatch, id, auditOf(before), auditOf(out))
	})
	if err != nil {
		return out, pgError("cancel task batch", err)
	}
	return out, nil
}

// BatchProgress is what the worker reports after a page of devices.
type BatchProgress struct {
	// Cursor is the last device ID of the page just completed.
	Cursor string
	// Matched and Errors are added to the batch's counters.
	Matched, Errors int64
	LastError       string
	// Finish ends the batch in this state ("" to keep running).
	Finish TaskBatchState
}

// SaveTaskBatchProgress records a completed page of a running batch.
// created_tasks is recounted from the tasks themselves, so it is exact
// even for a page redone after a restart. running is false when the
// batch is no longer running (it was cancelled meanwhile): the worker
// stops.
func (s *Store) SaveTaskBatchProgress(ctx context.Context, id string, p BatchProgress) (running bool, err error) {
	st := string(BatchRunning)
	if p.Finish != "" {
		st = string(p.Finish)
	}
	tag, err := s.pool.Exec(ctx, `UPDATE task_batches SET cursor = $2, matched = matched + $3, errors = errors + $4,
		last_error = CASE WHEN $5 = '' THEN last_error ELSE $5 END,
		created_tasks = (SELECT count(*) FROM tasks WHERE batch_id = $1),
		state = $6, updated_at = now(), finished_at = CASE WHEN $6 = 'running' THEN NULL ELSE now() END
		WHERE id = $1 AND state = 'running'`, id, p.Cursor, p.Matched, p.Errors, p.LastError, st)
	if err != nil {
		return false, fmt.Errorf("store: save task batch progress: %w", err)
	}
	return tag.RowsAffected() == 1 && st == string(BatchRunning), nil
}

// BatchDevicesWithTasks returns which of ids already have a task of the
// batch (tasks_batch_device_idx answers it).
func (s *Store) BatchDevicesWithTasks(ctx context.Context, batchID string, ids []string) (map[string]bool, error) {
	out := map[string]bool{}
	if len(ids) == 0 {
		return out, nil
	}
	rows, err := s.pool.Query(ctx, "SELECT device_id FROM tasks WHERE batch_id = $1 AND device_id = ANY($2::text[])", batchID, ids)
	if err != nil {
		return nil, fmt.Errorf("store: batch tasks: %w", err)
	}
	have, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("store: batch tasks: %w", err)
	}
	for _, id := range have {
		out[id] = true
	}
	return out, nil
}

type taskBatchKey struct{}

// ContextWithTaskBatch marks the tasks CreateTask stores under ctx as
// created by batch id. The bulk worker creates its tasks through the same
// path as the API (validation, unique_key, expiry, connection requests),
// which does not know about batches; the batch ID rides in the context
// so the task row carries it from its very INSERT. That atomicity is what
// makes a resumed batch exact: a device either has its task with the
// batch ID or has none.
func ContextWithTaskBatch(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, taskBatchKey{}, id)
}

func taskBatchFrom(ctx context.Context) string {
	id, _ := ctx.Value(taskBatchKey{}).(string)
	return id
}
