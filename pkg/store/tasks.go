package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/duet-dm/duet/pkg/devicemodel"
)

// TaskState is where a task is in its life.
type TaskState string

// Task states: queued → dispatched → succeeded | failed; queued → expired |
// cancelled. A dispatched task whose command was never delivered goes back
// to queued.
const (
	TaskQueued     TaskState = "queued"
	TaskDispatched TaskState = "dispatched"
	TaskSucceeded  TaskState = "succeeded"
	TaskFailed     TaskState = "failed"
	TaskExpired    TaskState = "expired"
	TaskCancelled  TaskState = "cancelled"
)

// Terminal reports whether the state is final.
func (s TaskState) Terminal() bool {
	return s == TaskSucceeded || s == TaskFailed || s == TaskExpired || s == TaskCancelled
}

// Task is one operation for one device.
type Task struct {
	ID                string
	Seq               int64
	DeviceID          string
	Operation         string
	Request           []byte // JSON
	Command           []byte // protobuf duet.v1.Command
	NonIdempotent     bool
	State             TaskState
	UniqueKey         string
	ConnectionRequest bool
	ExpiresAt         *time.Time
	CreatedAt         time.Time
	UpdatedAt         time.Time
	DispatchedAt      *time.Time
	FinishedAt        *time.Time
	Session           string
	Attempts          int
	Result            []byte // protobuf duet.v1.CommandResult
	ErrorCode         string
	ErrorMessage      string
	DeviceFault       int
	RetryOf           string
	// BatchID is the bulk job (task_batches) that created the task, "" for
	// one created on its own.
	BatchID string
	// Dispatcher is the ID of the TaskQueue that dispatched the task ("" when
	// queued, or dispatched before dispatchers were recorded).
	Dispatcher string
	// CreatedBy is who made the task: an API token's owner, a batch's
	// actor, "policy:<id>" (CreateTask defaults it to ActorFrom(ctx)).
	CreatedBy string
	// SubState says what a dispatched task the device accepted waits for
	// (SubStateAwaitingCompletion, SubStateAwaitingBoot), "" otherwise.
	SubState string
	// AwaitKey is what the completion must carry (a CommandKey, or the
	// diagnostics object of a CWMP diagnostics run).
	AwaitKey string
	// AwaitDeadline: past it an awaiting task fails with timeout.
	AwaitDeadline *time.Time
	// WaitingReason says why the device's queued tasks wait ("" when
	// unknown), since WaitingSince; LastAttemptAt is the task's last
	// dispatch (task_waiting.go).
	WaitingReason string
	WaitingSince  *time.Time
	LastAttemptAt *time.Time
	// MoreQueued is set by ClaimNextTask only: when the task was claimed,
	// another task of the device was queued. Without one a dispatcher
	// need not ask again until a new task is created.
	MoreQueued bool
}

// Sub-states of a dispatched task (0030_task_completion.sql).
const (
	SubStateAwaitingCompletion = "awaiting_completion"
	SubStateAwaitingBoot       = "awaiting_boot"
)

const taskColumns = `id, seq, device_id, operation, request, command, non_idempotent, state, COALESCE(unique_key, ''),
	connection_request, expires_at, created_at, updated_at, dispatched_at, finished_at, session, attempts, result,
	error_code, error_message, device_fault, COALESCE(retry_of, ''), COALESCE(batch_id, ''), dispatcher,
	sub_state, await_key, await_deadline, created_by,
	last_attempt_at, COALESCE((SELECT w.wait_reason FROM device_task_waits w WHERE w.wait_device = device_id), ''),
	(SELECT w.wait_since FROM device_task_waits w WHERE w.wait_device = device_id)`

func scanTask(row pgx.Row) (Task, error) {
	var t Task
	var st string
	err := row.Scan(&t.ID, &t.Seq, &t.DeviceID, &t.Operation, &t.Request, &t.Command, &t.NonIdempotent, &st, &t.UniqueKey,
		&t.ConnectionRequest, &t.ExpiresAt, &t.CreatedAt, &t.UpdatedAt, &t.DispatchedAt, &t.FinishedAt, &t.Session,
		&t.Attempts, &t.Result, &t.ErrorCode, &t.ErrorMessage, &t.DeviceFault, &t.RetryOf, &t.BatchID, &t.Dispatcher,
		&t.SubState, &t.AwaitKey, &t.AwaitDeadline, &t.CreatedBy,
		&t.LastAttemptAt, &t.WaitingReason, &t.WaitingSince)
	t.State = TaskState(st)
	return t, err
}

func collectTasks(rows pgx.Rows, err error) ([]Task, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Task
	for rows.Next() {
		t, err := scanTask(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// CreateTask queues t (ID, DeviceID, Operation, Request, Command,
// NonIdempotent, UniqueKey, ConnectionRequest, ExpiresAt, RetryOf, BatchID
// are used; BatchID defaults to ContextWithTaskBatch's). With a UniqueKey,
// a queued task of the same device and key is cancelled in the same
// transaction ("replaced by <id>"). Errors: CodeNotFound for an unknown
// device; CodeConflict when the batch already has a task for the device.
//
// One round trip: the statements go as one batch, which PostgreSQL runs
// as one implicit transaction (the extended protocol's Sync ends it), so
// a failed insert undoes the cancel before it.
func (s *Store) CreateTask(ctx context.Context, t Task) (Task, error) {
	out, _, err := s.CreateTaskWaiting(ctx, t, "")
	return out, err
}

// CreateTaskWaiting is CreateTask that also records, in the same round
// trip and transaction, why the device's queued tasks wait (reason, when
// not ""; changed as SetTasksWaiting reports it).
func (s *Store) CreateTaskWaiting(ctx context.Context, t Task, reason string) (out Task, changed bool, err error) {
	if t.BatchID == "" {
		t.BatchID = taskBatchFrom(ctx)
	}
	if t.CreatedBy == "" {
		t.CreatedBy = ActorFrom(ctx)
	}
	b := &pgx.Batch{}
	if t.UniqueKey != "" {
		// Two creates with the same key must not both find nothing to
		// replace and then collide on tasks_unique_key_idx: serialise
		// them per device (the same lock as ClaimNextTask). Each
		// statement of the batch takes its snapshot after the one
		// before, so the cancel sees what the lock waited for.
		b.Queue(taskLock, t.DeviceID)
		b.Queue(`UPDATE tasks SET state = 'cancelled', error_code = 'cancelled',
			error_message = 'replaced by task ' || $3, finished_at = now(), updated_at = now()
			WHERE device_id = $1 AND unique_key = $2 AND state = 'queued'`, t.DeviceID, t.UniqueKey, t.ID)
	}
	b.Queue(`INSERT INTO tasks (id, device_id, operation, request, command, non_idempotent,
		state, unique_key, connection_request, expires_at, retry_of, batch_id, created_by)
		VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $8, $9, $10, $11, $12) RETURNING `+taskColumns,
		t.ID, t.DeviceID, t.Operation, t.Request, t.Command, t.NonIdempotent, nullable(t.UniqueKey),
		t.ConnectionRequest, t.ExpiresAt, nullable(t.RetryOf), nullable(t.BatchID), t.CreatedBy).
		QueryRow(func(row pgx.Row) (err error) {
			out, err = scanTask(row)
			return err
		})
	if t.BatchID == "" && t.CreatedBy != "" {
		// A batch's tasks are in the audit log as their batch.
		a := t
		a.State = TaskQueued
		args, err := auditArgs(t.CreatedBy, AuditCreate, AuditTask, t.ID, nil, taskAuditOf(a))
		if err != nil {
			return out, false, err
		}
		b.Queue(auditInsert, args...)
	}
	if reason != "" {
		b.Queue(setTasksWaitingSQL, t.DeviceID, reason).Exec(func(tag pgconn.CommandTag) error {
			changed = tag.RowsAffected() > 0
			return nil
		})
	}
	err = s.pool.SendBatch(ctx, b).Close()
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "23503" && pe.ConstraintName != "tasks_batch_id_fkey" { // foreign_key_violation
		return out, false, devicemodel.Errorf(devicemodel.CodeNotFound, "device %q not found", t.DeviceID)
	}
	if errors.As(err, &pe) && pe.Code == "23505" && pe.ConstraintName == "tasks_batch_device_idx" {
		return out, false, devicemodel.Errorf(devicemodel.CodeConflict, "batch %s already has a task for device %q", t.BatchID, t.DeviceID)
	}
	if err != nil {
		return out, false, fmt.Errorf("store: create task: %w", err)
	}
	return out, changed, nil
}

// taskLock serialises the claims (and keyed creates) of one device until
// the end of the transaction.
const taskLock = "SELECT pg_advisory_xact_lock(hashtextextended('duet.task.' || $1, 0))"

// FindTaskByID returns a task or CodeNotFound.
func (s *Store) FindTaskByID(ctx context.Context, id string) (Task, error) {
	t, err := scanTask(s.pool.QueryRow(ctx, "SELECT "+taskColumns+" FROM tasks WHERE id = $1", id))
	if errors.Is(err, pgx.ErrNoRows) {
		return t, devicemodel.Errorf(devicemodel.CodeNotFound, "task %q not found", id)
	}
	if err != nil {
		return t, fmt.Errorf("store: find task: %w", err)
	}
	return t, nil
}

// TaskFilter selects a device's tasks for FindTasks.
type TaskFilter struct {
	DeviceID string
	State    TaskState // "" for all
	// Before is the cursor: the seq of the last task of the previous page.
	Before int64
	Limit  int
}

// FindTasks returns one page of a device's tasks, newest first, and the
// cursor of the next page ("" on the last).
func (s *Store) FindTasks(ctx context.Context, f TaskFilter) ([]Task, string, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, MaxPageSize)
	q := "SELECT " + taskColumns + " FROM tasks WHERE device_id = $1"
	args := []any{f.DeviceID}
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
	out, err := collectTasks(s.pool.Query(ctx, q, args...))
	if err != nil {
		return nil, "", fmt.Errorf("store: find tasks: %w", err)
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		next = EncodeCursor(strconv.FormatInt(out[limit-1].Seq, 10))
	}
	return out, next, nil
}

// DecodeSeqCursor decodes a cursor over a descending int64 sequence, as
// made by FindTasks and FindAudit.
func DecodeSeqCursor(c string) (int64, error) {
	s, err := DecodeCursor(c)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "malformed cursor")
	}
	return n, nil
}

// CancelTask cancels a queued task. Errors: CodeNotFound; CodeConflict
// when the task is past queued (dispatched or finished). The row is locked
// first, so the answer is about the state the cancel actually met.
func (s *Store) CancelTask(ctx context.Context, id string) (Task, error) {
	var t Task
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var st string
		err := tx.QueryRow(ctx, "SELECT state FROM tasks WHERE id = $1 FOR UPDATE", id).Scan(&st)
		if errors.Is(err, pgx.ErrNoRows) {
			return devicemodel.Errorf(devicemodel.CodeNotFound, "task %q not found", id)
		}
		if err != nil {
			return err
		}
		if TaskState(st) != TaskQueued {
			return devicemodel.Errorf(devicemodel.CodeConflict, "task %s is %s; only a queued task can be cancelled", id, st)
		}
		t, err = scanTask(tx.QueryRow(ctx, `UPDATE tasks SET state = 'cancelled', error_code = 'cancelled',
			error_message = 'cancelled through the API', finished_at = now(), updated_at = now()
			WHERE id = $1 RETURNING `+taskColumns, id))
		if err != nil {
			return err
		}
		if who := ActorFrom(ctx); who != "" {
			before := taskAuditOf(t)
			before.State = TaskState(st)
			return audit(ctx, tx, who, AuditUpdate, AuditTask, t.ID, before, taskAuditOf(t))
		}
		return nil
	})
	var de *devicemodel.Error
	if errors.As(err, &de) {
		return t, err
	}
	if err != nil {
		return t, fmt.Errorf("store: cancel task: %w", err)
	}
	return t, nil
}

// ClaimNextTask marks the device's oldest queued, unexpired task
// dispatched in session by dispatcher (a TaskQueue's ID, whose lease
// "dispatcher.<id>" it holds) and returns it; ok is false when there is
// none or one is already dispatched (one in flight per device). A task
// awaiting_completion (a transfer or async command running on the device)
// does not hold the queue; one awaiting_boot does (the device is going
// away). Claims of
// the same device are serialised by an advisory transaction lock, so two
// dispatchers never both send; FOR UPDATE SKIP LOCKED leaves a row being
// cancelled right now to its canceller.
func (s *Store) ClaimNextTask(ctx context.Context, deviceID, session, dispatcher string) (t Task, ok bool, err error) {
	// One round trip: the lock and the claim go as one batch, one
	// implicit transaction that holds the lock to its end. The claim is
	// a statement of its own, so its snapshot is taken after the lock
	// was granted and sees the task a claim before it dispatched.
	b := &pgx.Batch{}
	b.Queue(taskLock, deviceID)
	// Delivered now: no longer waiting (task_waiting.go).
	b.Queue(`WITH u AS (UPDATE tasks SET state = 'dispatched', dispatched_at = now(),
			updated_at = now(), session = $2, dispatcher = $3, attempts = attempts + 1, error_message = '',
			last_attempt_at = now()
			WHERE id = (SELECT id FROM tasks
				WHERE device_id = $1 AND state = 'queued' AND (expires_at IS NULL OR expires_at > now())
				  AND NOT EXISTS (SELECT 1 FROM tasks d WHERE d.device_id = $1 AND d.state = 'dispatched'
				                  AND d.sub_state <> 'awaiting_completion')
				ORDER BY seq LIMIT 1
				FOR UPDATE SKIP LOCKED)
			RETURNING *),
		w AS (DELETE FROM device_task_waits WHERE wait_device = $1 AND EXISTS (SELECT 1 FROM u))
		SELECT `+taskColumns+`, EXISTS (SELECT 1 FROM tasks o WHERE o.device_id = $1 AND o.state = 'queued' AND o.id <> u.id)
		FROM u`, deviceID, session, dispatcher).
		QueryRow(func(row pgx.Row) error {
			t2, err := scanTask(moreQueued{row, &t.MoreQueued})
			if errors.Is(err, pgx.ErrNoRows) {
				return nil
			}
			if err != nil {
				return err
			}
			// The wait row went in the same statement.
			t2.WaitingReason, t2.WaitingSince = "", nil
			t2.MoreQueued = t.MoreQueued
			t, ok = t2, true
			return nil
		})
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		return Task{}, false, fmt.Errorf("store: claim task: %w", err)
	}
	return t, ok, nil
}

// moreQueued scans a task row followed by one more column, into more.
type moreQueued struct {
	pgx.Row
	more *bool
}

func (r moreQueued) Scan(dest ...any) error { return r.Row.Scan(append(dest, r.more)...) }

// TaskOutcome is how a dispatched task ended.
type TaskOutcome struct {
	State        TaskState // succeeded or failed
	Result       []byte
	ErrorCode    string
	ErrorMessage string
	DeviceFault  int
}

// FinishTask records the outcome of a dispatched task. It also accepts a
// task already failed as outcome_unknown: the real result arriving late
// (after a restart, or after its session was given up) is better
// knowledge. done is false when the task was in neither state (already
// settled, cancelled, or no such task: results of commands that are not
// tasks land here too).
func (s *Store) FinishTask(ctx context.Context, id string, o TaskOutcome) (t Task, done bool, err error) {
	if o.State != TaskSucceeded && o.State != TaskFailed {
		return t, false, fmt.Errorf("store: finish task %s as %q", id, o.State)
	}
	// The device's rebooting marker goes with the reboot task that set it.
	t, err = scanTask(s.pool.QueryRow(ctx, `WITH u AS (UPDATE tasks SET state = $2, result = $3, error_code = $4,
		error_message = $5, device_fault = $6, finished_at = now(), updated_at = now(), sub_state = ''
		WHERE id = $1 AND (state = 'dispatched' OR (state = 'failed' AND error_code = 'outcome_unknown'))
		RETURNING *), r AS (UPDATE devices SET rebooting_task = '' WHERE id = (SELECT device_id FROM u) AND rebooting_task = $1)
		SELECT `+taskColumns+` FROM u`, id, string(o.State), o.Result, o.ErrorCode, o.ErrorMessage, o.DeviceFault))
	if errors.Is(err, pgx.ErrNoRows) {
		return t, false, nil
	}
	if err != nil {
		return t, false, fmt.Errorf("store: finish task: %w", err)
	}
	return t, true, nil
}

// RequeueTask puts a dispatched task back in the queue, keeping its place
// (seq). delivered says whether the command may have reached the device;
// when it certainly did not, the dispatch does not count as an attempt.
func (s *Store) RequeueTask(ctx context.Context, id, why string, delivered bool) (bool, error) {
	undo := 0
	if !delivered {
		undo = 1
	}
	tag, err := s.pool.Exec(ctx, `UPDATE tasks SET state = 'queued', session = '', dispatcher = '', error_message = $2,
		attempts = attempts - $3, updated_at = now(),
		dispatched_at = CASE WHEN attempts - $3 = 0 THEN NULL ELSE dispatched_at END
		WHERE id = $1 AND state = 'dispatched'`, id, why, undo)
	if err != nil {
		return false, fmt.Errorf("store: requeue task: %w", err)
	}
	return tag.RowsAffected() == 1, nil
}

// OpenTasks answers a CWMP session's first question in one round trip:
// whether the device has a task queued or dispatched at all (without one
// the session has nothing to do or settle), and which of its dispatched
// tasks still wait for the device's answer (DispatchedTasks), oldest
// first.
func (s *Store) OpenTasks(ctx context.Context, deviceID string) (open bool, unanswered []Task, err error) {
	// Both halves are range scans of tasks_device_open_idx
	// (0003_tasks.sql); a device without tasks costs one index probe each.
	rows, err := s.pool.Query(ctx, `(SELECT true, `+taskColumns+` FROM tasks
			WHERE device_id = $1 AND state = 'dispatched' AND sub_state = '' ORDER BY seq)
		UNION ALL
		(SELECT false, `+taskColumns+` FROM tasks
			WHERE device_id = $1 AND state IN ('queued', 'dispatched') LIMIT 1)`, deviceID)
	if err != nil {
		return false, nil, fmt.Errorf("store: open tasks: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var waits bool
		t, err := scanTask(leading{rows, &waits})
		if err != nil {
			return false, nil, fmt.Errorf("store: open tasks: %w", err)
		}
		open = true
		if waits {
			unanswered = append(unanswered, t)
		}
	}
	if err := rows.Err(); err != nil {
		return false, nil, fmt.Errorf("store: open tasks: %w", err)
	}
	return open, unanswered, nil
}

// leading scans a row whose first column (into first) precedes a task's.
type leading struct {
	pgx.Row
	first any
}

func (r leading) Scan(dest ...any) error { return r.Row.Scan(append([]any{r.first}, dest...)...) }

// DispatchedTasks returns the device's dispatched tasks ("" for every
// device) that wait for the device's answer, oldest first; tasks the
// device accepted and finishes later (a SubState) are not among them.
func (s *Store) DispatchedTasks(ctx context.Context, deviceID string) ([]Task, error) {
	q := "SELECT " + taskColumns + " FROM tasks WHERE state = 'dispatched' AND sub_state = ''"
	args := []any{}
	if deviceID != "" {
		q += " AND device_id = $1"
		args = append(args, deviceID)
	}
	out, err := collectTasks(s.pool.Query(ctx, q+" ORDER BY seq", args...))
	if err != nil {
		return nil, fmt.Errorf("store: dispatched tasks: %w", err)
	}
	return out, nil
}

// OrphanedTasks returns the dispatched tasks whose dispatcher is gone
// (not those awaiting the device: any controller completes them),
// oldest first: those dispatched before dispatchers were recorded
// (dispatcher ""), and those whose dispatcher's lease (TryLease
// "dispatcher.<id>") no live session of this database holds. A session
// advisory lock on a bigint key shows in pg_locks with the key's high 32
// bits in classid, the low ones in objid and objsubid 1.
func (s *Store) OrphanedTasks(ctx context.Context) ([]Task, error) {
	out, err := collectTasks(s.pool.Query(ctx, "SELECT "+taskColumns+` FROM tasks t
		WHERE t.state = 'dispatched' AND t.sub_state = '' AND (t.dispatcher = '' OR NOT EXISTS (
			SELECT 1 FROM pg_locks l
			WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
			  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
			  AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended('duet.lease.dispatcher.' || t.dispatcher, 0)))
		ORDER BY seq`))
	if err != nil {
		return nil, fmt.Errorf("store: orphaned tasks: %w", err)
	}
	return out, nil
}

// AdoptTask makes dispatcher the dispatcher of t, an orphan found by
// OrphanedTasks, if it is still dispatched by t's dispatcher in the same
// attempt; ok is false when someone else got there first (another
// replica's sweep, or the task was settled meanwhile). The one that adopts
// an orphan settles it, so two replicas never both do.
func (s *Store) AdoptTask(ctx context.Context, t Task, dispatcher string) (ok bool, err error) {
	tag, err := s.pool.Exec(ctx, `UPDATE tasks SET dispatcher = $4, updated_at = now()
		WHERE id = $1 AND state = 'dispatched' AND dispatcher = $2 AND attempts = $3`,
		t.ID, t.Dispatcher, t.Attempts, dispatcher)
	if err != nil {
		return false, fmt.Errorf("store: adopt task: %w", err)
	}
	return tag.RowsAffected() == 1, nil
}

// ExpireTasks marks queued tasks past their expires_at expired and returns
// their IDs.
func (s *Store) ExpireTasks(ctx context.Context) ([]string, error) {
	rows, err := s.pool.Query(ctx, `UPDATE tasks SET state = 'expired', error_code = 'timeout',
		error_message = 'expired before it could be dispatched', finished_at = now(), updated_at = now()
		WHERE state = 'queued' AND expires_at IS NOT NULL AND expires_at <= now() RETURNING id`)
	if err != nil {
		return nil, fmt.Errorf("store: expire tasks: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("store: expire tasks: %w", err)
	}
	return ids, nil
}

// DeviceWithTasks is a device that has queued tasks.
type DeviceWithTasks struct {
	ID                   string
	Protocol             devicemodel.Protocol
	Online               bool
	ConnectionRequestURL string
	// WantsConnectionRequest: one of the queued tasks asked to wake the device.
	WantsConnectionRequest bool
}

// DevicesWithQueuedTasks lists devices with queued, unexpired tasks: among
// ids, or every such device when ids is nil.
func (s *Store) DevicesWithQueuedTasks(ctx context.Context, ids []string) ([]DeviceWithTasks, error) {
	q := `SELECT d.id, d.protocol, d.online, d.connection_request_url, bool_or(t.connection_request)
		FROM tasks t JOIN devices d ON d.id = t.device_id
		WHERE t.state = 'queued' AND (t.expires_at IS NULL OR t.expires_at > now())`
	args := []any{}
	if ids != nil {
		q += " AND t.device_id = ANY($1)"
		args = append(args, ids)
	}
	rows, err := s.pool.Query(ctx, q+" GROUP BY d.id", args...)
	if err != nil {
		return nil, fmt.Errorf("store: devices with tasks: %w", err)
	}
	defer rows.Close()
	var out []DeviceWithTasks
	for rows.Next() {
		var d DeviceWithTasks
		var p string
		if err := rows.Scan(&d.ID, &p, &d.Online, &d.ConnectionRequestURL, &d.WantsConnectionRequest); err != nil {
			return nil, err
		}
		d.Protocol = devicemodel.Protocol(p)
		out = append(out, d)
	}
	return out, rows.Err()
}

// AwaitTask keeps a dispatched task open after the device accepted it:
// it records the sub-state, the key the completion must carry, the
// deadline and the interim result. With SubStateAwaitingBoot the device
// is marked rebooting until the task ends (FinishTask). ok is false when
// the task was no longer dispatched.
func (s *Store) AwaitTask(ctx context.Context, id, subState, key string, deadline time.Time, result []byte) (t Task, ok bool, err error) {
	t, err = scanTask(s.pool.QueryRow(ctx, `WITH u AS (UPDATE tasks SET sub_state = $2, await_key = $3,
		await_deadline = $4, result = $5, updated_at = now()
		WHERE id = $1 AND state = 'dispatched' RETURNING *),
		r AS (UPDATE devices SET rebooting_task = $1 WHERE $2 = 'awaiting_boot' AND id = (SELECT device_id FROM u))
		SELECT `+taskColumns+` FROM u`, id, subState, key, deadline, result))
	if errors.Is(err, pgx.ErrNoRows) {
		return t, false, nil
	}
	if err != nil {
		return t, false, fmt.Errorf("store: await task: %w", err)
	}
	return t, true, nil
}

// AwaitingTasks returns the device's tasks in subState, oldest first.
func (s *Store) AwaitingTasks(ctx context.Context, deviceID, subState string) ([]Task, error) {
	out, err := collectTasks(s.pool.Query(ctx, "SELECT "+taskColumns+` FROM tasks
		WHERE device_id = $1 AND state = 'dispatched' AND sub_state = $2 ORDER BY seq`, deviceID, subState))
	if err != nil {
		return nil, fmt.Errorf("store: awaiting tasks: %w", err)
	}
	return out, nil
}

// OverdueTasks returns the awaiting tasks past their deadline, oldest first.
func (s *Store) OverdueTasks(ctx context.Context) ([]Task, error) {
	out, err := collectTasks(s.pool.Query(ctx, "SELECT "+taskColumns+` FROM tasks
		WHERE state = 'dispatched' AND sub_state <> '' AND await_deadline <= now() ORDER BY seq LIMIT 1000`))
	if err != nil {
		return nil, fmt.Errorf("store: overdue tasks: %w", err)
	}
	return out, nil
}
