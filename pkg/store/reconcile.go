package store

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/duet-dm/duet/pkg/devicemodel"
)

// Compliance statuses of one device against one policy (issue 6 §3).
const (
	StatusCompliant   = "compliant"
	StatusPending     = "pending"
	StatusApplying    = "applying"
	StatusFailed      = "failed"
	StatusConflicting = "conflicting"
)

// Rollout states.
const (
	RolloutRunning   = "running"
	RolloutPaused    = "paused"
	RolloutStopped   = "stopped"
	RolloutCompleted = "completed"
	RolloutAborted   = "aborted"
)

// AuditRollout is the audit object type of rollout actions (enable,
// pause, resume, abort); the object ID is the policy's.
const AuditRollout = "rollout"

// Rollout is where the staged application of an enabled policy stands.
type Rollout struct {
	PolicyID       string          `json:"policy_id"`
	Strategy       json.RawMessage `json:"strategy"`
	State          string          `json:"state"`
	Reason         string          `json:"reason,omitempty"`
	Batch          int             `json:"batch"`
	BatchSize      int             `json:"batch_size"`
	BatchStartedAt *time.Time      `json:"batch_started_at,omitempty"`
	BatchDoneAt    *time.Time      `json:"batch_done_at,omitempty"`
	StartedBy      string          `json:"started_by"`
	StartedAt      time.Time       `json:"started_at"`
	UpdatedAt      time.Time       `json:"updated_at"`
}

const rolloutColumns = `policy_id, strategy, state, reason, batch, batch_size, batch_started_at, batch_done_at,
	started_by, started_at, updated_at`

func scanRollout(row pgx.Row) (Rollout, error) {
	var r Rollout
	var strategy []byte
	err := row.Scan(&r.PolicyID, &strategy, &r.State, &r.Reason, &r.Batch, &r.BatchSize, &r.BatchStartedAt,
		&r.BatchDoneAt, &r.StartedBy, &r.StartedAt, &r.UpdatedAt)
	r.Strategy = strategy
	return r, err
}

// ActivePolicy is an enabled policy with its group's filter and rollout.
type ActivePolicy struct {
	Policy
	Filter  string
	Rollout Rollout
}

// ActivePolicies returns every enabled policy, highest priority first
// (then by ID: the order in which conflicts are resolved).
func (s *Store) ActivePolicies(ctx context.Context) ([]ActivePolicy, error) {
	rows, err := s.pool.Query(ctx, `SELECT p.id, p.group_id, p.name, p.priority, p.kind, p.spec, p.enabled, p.revision,
		p.created_at, p.updated_at, g.filter,
		r.policy_id, r.strategy, r.state, r.reason, r.batch, r.batch_size, r.batch_started_at, r.batch_done_at,
		r.started_by, r.started_at, r.updated_at
		FROM policies p JOIN groups g ON g.id = p.group_id JOIN rollouts r ON r.policy_id = p.id
		WHERE p.enabled ORDER BY p.priority DESC, p.id`)
	if err != nil {
		return nil, fmt.Errorf("store: active policies: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ActivePolicy, error) {
		var a ActivePolicy
		var spec, strategy []byte
		err := row.Scan(&a.ID, &a.GroupID, &a.Name, &a.Priority, &a.Kind, &spec, &a.Enabled, &a.Revision,
			&a.CreatedAt, &a.UpdatedAt, &a.Filter,
			&a.Rollout.PolicyID, &strategy, &a.Rollout.State, &a.Rollout.Reason, &a.Rollout.Batch, &a.Rollout.BatchSize,
			&a.Rollout.BatchStartedAt, &a.Rollout.BatchDoneAt, &a.Rollout.StartedBy, &a.Rollout.StartedAt, &a.Rollout.UpdatedAt)
		a.Spec, a.Rollout.Strategy = spec, strategy
		return a, err
	})
	if err != nil {
		return nil, fmt.Errorf("store: active policies: %w", err)
	}
	return out, nil
}

// FindRollout returns a policy's rollout, CodeNotFound if it was never
// enabled.
func (s *Store) FindRollout(ctx context.Context, policyID string) (Rollout, error) {
	r, err := scanRollout(s.pool.QueryRow(ctx, "SELECT "+rolloutColumns+" FROM rollouts WHERE policy_id = $1", policyID))
	if errors.Is(err, pgx.ErrNoRows) {
		return r, devicemodel.Errorf(devicemodel.CodeNotFound, "policy %q has no rollout (it was never enabled)", policyID)
	}
	if err != nil {
		return r, fmt.Errorf("store: find rollout: %w", err)
	}
	return r, nil
}

// EnablePolicy enables a disabled policy with a rollout strategy (already
// validated by the controller) and records it in the audit log, in one
// transaction. A previous rollout of the policy is replaced. CodeConflict
// if it is already enabled.
func (s *Store) EnablePolicy(ctx context.Context, actor, policyID string, strategy json.RawMessage, batchSize int) (Rollout, error) {
	if err := checkActor(actor); err != nil {
		return Rollout{}, err
	}
	var out Rollout
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		before, err := scanPolicy(tx.QueryRow(ctx, "SELECT "+policyColumns+" FROM policies WHERE id = $1 FOR UPDATE", policyID))
		if errors.Is(err, pgx.ErrNoRows) {
			return devicemodel.Errorf(devicemodel.CodeNotFound, "policy %q not found", policyID)
		}
		if err != nil {
			return err
		}
		if before.Enabled {
			return devicemodel.Errorf(devicemodel.CodeConflict, "policy %q is already enabled; pause, resume or abort its rollout", policyID)
		}
		after, err := scanPolicy(tx.QueryRow(ctx, "UPDATE policies SET enabled = true, updated_at = now() WHERE id = $1 RETURNING "+policyColumns, policyID))
		if err != nil {
			return err
		}
		// Statuses of an earlier rollout say nothing about this one.
		if _, err := tx.Exec(ctx, "DELETE FROM policy_status WHERE policy_id = $1", policyID); err != nil {
			return err
		}
		out, err = scanRollout(tx.QueryRow(ctx, `INSERT INTO rollouts (policy_id, strategy, state, batch_size, started_by)
			VALUES ($1, $2::jsonb, 'running', $3, $4)
			ON CONFLICT (policy_id) DO UPDATE SET strategy = EXCLUDED.strategy, state = 'running', reason = '',
				batch = 0, batch_size = EXCLUDED.batch_size, batch_started_at = NULL, batch_done_at = NULL,
				started_by = EXCLUDED.started_by, started_at = now(), updated_at = now()
			RETURNING `+rolloutColumns, policyID, []byte(strategy), batchSize, actor))
		if err != nil {
			return err
		}
		if err := audit(ctx, tx, actor, AuditUpdate, AuditPolicy, policyID, before, after); err != nil {
			return err
		}
		return audit(ctx, tx, actor, "enable", AuditRollout, policyID, nil, out)
	})
	if err != nil {
		return Rollout{}, pgError("enable policy", err)
	}
	return out, nil
}

// SetRolloutState moves a rollout from one of the states in from to to,
// with a reason, and audits it when actor is set (the controller's own
// automatic stop and completion are not operator actions and pass "").
// Aborting also disables the policy, cancels its queued tasks and drops
// its statuses, in the same transaction. CodeConflict when the rollout is
// in none of from.
func (s *Store) SetRolloutState(ctx context.Context, actor, policyID string, from []string, to, reason string) (Rollout, error) {
	var out Rollout
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		before, err := scanRollout(tx.QueryRow(ctx, "SELECT "+rolloutColumns+" FROM rollouts WHERE policy_id = $1 FOR UPDATE", policyID))
		if errors.Is(err, pgx.ErrNoRows) {
			return devicemodel.Errorf(devicemodel.CodeNotFound, "policy %q has no rollout (it was never enabled)", policyID)
		}
		if err != nil {
			return err
		}
		ok := false
		for _, f := range from {
			ok = ok || before.State == f
		}
		if !ok {
			return devicemodel.Errorf(devicemodel.CodeConflict, "the rollout of policy %q is %s; it cannot become %s", policyID, before.State, to)
		}
		out, err = scanRollout(tx.QueryRow(ctx, `UPDATE rollouts SET state = $2, reason = $3, updated_at = now()
			WHERE policy_id = $1 RETURNING `+rolloutColumns, policyID, to, reason))
		if err != nil {
			return err
		}
		if to == RolloutAborted {
			if _, err := tx.Exec(ctx, "UPDATE policies SET enabled = false, updated_at = now() WHERE id = $1", policyID); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `UPDATE tasks SET state = 'cancelled', error_code = 'cancelled',
				error_message = 'policy rollout aborted', finished_at = now(), updated_at = now()
				WHERE state = 'queued' AND id IN (SELECT task_id FROM policy_tasks WHERE policy_id = $1)`, policyID); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, "DELETE FROM policy_status WHERE policy_id = $1", policyID); err != nil {
				return err
			}
		}
		if actor == "" {
			return nil
		}
		return audit(ctx, tx, actor, to, AuditRollout, policyID, before, out)
	})
	if err != nil {
		return Rollout{}, pgError("set rollout state", err)
	}
	return out, nil
}

// RolloutBatchDone records that the current batch finished at.
func (s *Store) RolloutBatchDone(ctx context.Context, policyID string, batch int, at time.Time) error {
	_, err := s.pool.Exec(ctx, "UPDATE rollouts SET batch_done_at = $3, updated_at = now() WHERE policy_id = $1 AND batch = $2 AND batch_done_at IS NULL",
		policyID, batch, at)
	if err != nil {
		return fmt.Errorf("store: rollout batch done: %w", err)
	}
	return nil
}

// AdmitDevices admits up to n not-yet-admitted devices that need work
// (pending), in device ID order, into batch number batch of a running
// rollout: the next batch (the rollout's batch + 1, whose size is size)
// or the current one (topping it up as in-flight room frees). It returns
// their IDs. Another controller replica admitting concurrently finds the
// rollout row locked, then the batch moved on, and admits nothing.
func (s *Store) AdmitDevices(ctx context.Context, policyID string, batch, n, size int) ([]string, error) {
	var ids []string
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var cur int
		var state string
		if err := tx.QueryRow(ctx, "SELECT batch, state FROM rollouts WHERE policy_id = $1 FOR UPDATE", policyID).Scan(&cur, &state); err != nil {
			return err
		}
		if (cur != batch && cur != batch-1) || state != RolloutRunning || n <= 0 {
			return nil
		}
		rows, err := tx.Query(ctx, `UPDATE policy_status SET batch = $2, updated_at = now()
			WHERE policy_id = $1 AND device_id IN (
				SELECT device_id FROM policy_status WHERE policy_id = $1 AND status = 'pending' AND batch IS NULL
				ORDER BY device_id LIMIT $3)
			RETURNING device_id`, policyID, batch, n)
		if err != nil {
			return err
		}
		if ids, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return err
		}
		if len(ids) == 0 || cur == batch {
			return nil
		}
		_, err = tx.Exec(ctx, `UPDATE rollouts SET batch = $2, batch_size = $3, batch_started_at = now(), batch_done_at = NULL,
			updated_at = now() WHERE policy_id = $1`, policyID, batch, size)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("store: admit devices: %w", err)
	}
	return ids, nil
}

// markFailedPending makes a policy's failed devices pending again (the
// operator says the cause is fixed), keeping their batch. The tables the
// policy read on them are read again.
func markFailedPending(ctx context.Context, db interface {
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
}, policyID string) (int, error) {
	tag, err := db.Exec(ctx, `UPDATE policy_status SET status = 'pending', error_code = '', error_message = '',
		device_fault = 0, revision = 0, refreshed = '{}', updated_at = now() WHERE policy_id = $1 AND status = 'failed'`, policyID)
	if err != nil {
		return 0, err
	}
	return int(tag.RowsAffected()), nil
}

// ResumeRollout sets a rollout running again, audited, in one
// transaction: from paused or stopped, and, when retryFailed, its failed
// devices are made pending again (RetryFailed). A completed rollout with
// failed devices resumes too when retryFailed: it is how they are tried
// again without a new revision (issue 12 §4). CodeConflict from any other
// state, or from completed with nothing to retry.
func (s *Store) ResumeRollout(ctx context.Context, actor, policyID string, retryFailed bool) (Rollout, int, error) {
	if err := checkActor(actor); err != nil {
		return Rollout{}, 0, err
	}
	var out Rollout
	retried := 0
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		before, err := scanRollout(tx.QueryRow(ctx, "SELECT "+rolloutColumns+" FROM rollouts WHERE policy_id = $1 FOR UPDATE", policyID))
		if errors.Is(err, pgx.ErrNoRows) {
			return devicemodel.Errorf(devicemodel.CodeNotFound, "policy %q has no rollout (it was never enabled)", policyID)
		}
		if err != nil {
			return err
		}
		switch before.State {
		case RolloutPaused, RolloutStopped:
		case RolloutCompleted:
			if !retryFailed {
				return devicemodel.Errorf(devicemodel.CodeConflict, "the rollout of policy %q is completed; resume it with \"retry_failed\": true to try its failed devices again", policyID)
			}
			var failed int
			if err := tx.QueryRow(ctx, "SELECT count(*) FROM policy_status WHERE policy_id = $1 AND status = 'failed'", policyID).Scan(&failed); err != nil {
				return err
			}
			if failed == 0 {
				return devicemodel.Errorf(devicemodel.CodeConflict, "the rollout of policy %q is completed and no device failed; there is nothing to retry", policyID)
			}
		default:
			return devicemodel.Errorf(devicemodel.CodeConflict, "the rollout of policy %q is %s; it cannot become %s", policyID, before.State, RolloutRunning)
		}
		if out, err = scanRollout(tx.QueryRow(ctx, `UPDATE rollouts SET state = 'running', reason = '', updated_at = now()
			WHERE policy_id = $1 RETURNING `+rolloutColumns, policyID)); err != nil {
			return err
		}
		if retryFailed {
			if retried, err = markFailedPending(ctx, tx, policyID); err != nil {
				return err
			}
		}
		return audit(ctx, tx, actor, RolloutRunning, AuditRollout, policyID, before, out)
	})
	if err != nil {
		return Rollout{}, 0, pgError("resume rollout", err)
	}
	return out, retried, nil
}

// AdmittedFailureRate is the failed share of finished admitted devices,
// and how many finished: what an automatic stop judges. Devices that
// failed before admission were given no work, so they say nothing of the
// harm a batch does; they are counted in Failed and Finished all the same.
func (c RolloutCounts) AdmittedFailureRate() (rate float64, finished int) {
	finished = c.Finished - c.FailedBeforeAdmission
	if finished <= 0 {
		return 0, 0
	}
	return float64(c.Failed-c.FailedBeforeAdmission) / float64(finished), finished
}

// RolloutCounts is how the devices of one policy stand.
type RolloutCounts struct {
	// ByStatus counts every device with a status, by status.
	ByStatus map[string]int `json:"by_status"`
	// Admitted devices were let in by a batch. Finished are the admitted
	// devices now compliant, conflicting or failed, and the devices that
	// failed before any batch admitted them; Failed are all the failed
	// devices (ByStatus["failed"]), FailedBeforeAdmission those of them
	// judged failed without being given work (the policy cannot apply to
	// them: an instance it may not create is missing, an expression
	// fails).
	Admitted              int `json:"admitted"`
	Finished              int `json:"finished"`
	Failed                int `json:"failed"`
	FailedBeforeAdmission int `json:"failed_before_admission"`
	// Waiting devices need work but no batch admitted them yet.
	Waiting int `json:"waiting"`
	// InFlight: admitted devices with work under way (applying);
	// AdmittedOpen also counts admitted devices not yet judged (pending).
	InFlight     int `json:"in_flight"`
	AdmittedOpen int `json:"admitted_open"`
	// CurrentBatch and CurrentBatchOpen: devices of the latest batch and
	// those of them still applying or pending.
	CurrentBatch     int `json:"current_batch"`
	CurrentBatchOpen int `json:"current_batch_open"`
	// ByVersion (firmware policies): member devices by the software
	// version they run (CountVersions).
	ByVersion map[string]int `json:"by_version,omitempty"`
}

// PolicyStatusCounts counts every status of every policy: policy ID ->
// status -> devices. One grouped scan (statuses exist only for enabled
// policies' members).
func (s *Store) PolicyStatusCounts(ctx context.Context) (map[string]map[string]int, error) {
	rows, err := s.pool.Query(ctx, "SELECT policy_id, status, count(*) FROM policy_status GROUP BY 1, 2")
	if err != nil {
		return nil, fmt.Errorf("store: count policy statuses: %w", err)
	}
	defer rows.Close()
	out := map[string]map[string]int{}
	for rows.Next() {
		var pid, st string
		var n int
		if err := rows.Scan(&pid, &st, &n); err != nil {
			return nil, fmt.Errorf("store: count policy statuses: %w", err)
		}
		if out[pid] == nil {
			out[pid] = map[string]int{}
		}
		out[pid][st] = n
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: count policy statuses: %w", err)
	}
	return out, nil
}

// CountRollout counts a policy's statuses for its rollout (one pass over
// policy_status_progress_idx).
func (s *Store) CountRollout(ctx context.Context, policyID string, batch int) (RolloutCounts, error) {
	c := RolloutCounts{ByStatus: map[string]int{}}
	rows, err := s.pool.Query(ctx, `SELECT status, batch IS NOT NULL, COALESCE(batch = $2, false), count(*)
		FROM policy_status WHERE policy_id = $1 GROUP BY 1, 2, 3`, policyID, batch)
	if err != nil {
		return c, fmt.Errorf("store: count rollout: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var st string
		var admitted, current bool
		var n int
		if err := rows.Scan(&st, &admitted, &current, &n); err != nil {
			return c, fmt.Errorf("store: count rollout: %w", err)
		}
		c.ByStatus[st] += n
		open := st == StatusApplying || st == StatusPending
		switch {
		case admitted:
			c.Admitted += n
			if !open {
				c.Finished += n
			}
			if st == StatusFailed {
				c.Failed += n
			}
			if st == StatusApplying {
				c.InFlight += n
			}
			if open {
				c.AdmittedOpen += n
			}
			if current {
				c.CurrentBatch += n
				if open {
					c.CurrentBatchOpen += n
				}
			}
		case st == StatusPending:
			c.Waiting += n
		case st == StatusFailed:
			c.Finished += n
			c.Failed += n
			c.FailedBeforeAdmission += n
		}
	}
	return c, rows.Err()
}

// PolicyStatus is one device's standing against one policy.
type PolicyStatus struct {
	PolicyID      string          `json:"policy_id"`
	DeviceID      string          `json:"device_id"`
	Status        string          `json:"status"`
	Revision      int             `json:"revision"`
	AttrsRevision int             `json:"-"`
	Refreshed     []string        `json:"-"`
	Batch         *int            `json:"batch,omitempty"`
	Plan          json.RawMessage `json:"plan,omitempty"`
	Conflicts     json.RawMessage `json:"conflicts,omitempty"`
	ErrorCode     string          `json:"error_code,omitempty"`
	ErrorMessage  string          `json:"error_message,omitempty"`
	DeviceFault   int             `json:"device_fault,omitempty"`
	UpdatedAt     time.Time       `json:"updated_at"`
	// OpenTasks counts the policy's tasks for the device still queued or
	// dispatched.
	OpenTasks int `json:"open_tasks"`
}

const statusColumns = `s.policy_id, s.device_id, s.status, s.revision, s.attrs_revision, s.refreshed, s.batch, s.plan,
	s.conflicts, s.error_code, s.error_message, s.device_fault, s.updated_at`

func scanStatus(row pgx.Row, extra ...any) (PolicyStatus, error) {
	var p PolicyStatus
	var plan, conflicts []byte
	dst := append([]any{&p.PolicyID, &p.DeviceID, &p.Status, &p.Revision, &p.AttrsRevision, &p.Refreshed, &p.Batch,
		&plan, &conflicts, &p.ErrorCode, &p.ErrorMessage, &p.DeviceFault, &p.UpdatedAt}, extra...)
	err := row.Scan(dst...)
	p.Plan, p.Conflicts = plan, conflicts
	return p, err
}

// DeviceStatuses returns every status of the given devices, with their
// open policy task counts, keyed by policy then device.
func (s *Store) DeviceStatuses(ctx context.Context, deviceIDs []string) (map[string]map[string]PolicyStatus, error) {
	out := map[string]map[string]PolicyStatus{}
	if len(deviceIDs) == 0 {
		return out, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT `+statusColumns+`,
		(SELECT count(*) FROM policy_tasks pt JOIN tasks t ON t.id = pt.task_id
		 WHERE pt.device_id = s.device_id AND pt.policy_id = s.policy_id AND t.state IN ('queued', 'dispatched'))
		FROM policy_status s WHERE s.device_id = ANY($1::text[])`, deviceIDs)
	if err != nil {
		return nil, fmt.Errorf("store: device statuses: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var open int
		st, err := scanStatus(rows, &open)
		if err != nil {
			return nil, fmt.Errorf("store: device statuses: %w", err)
		}
		st.OpenTasks = open
		m := out[st.PolicyID]
		if m == nil {
			m = map[string]PolicyStatus{}
			out[st.PolicyID] = m
		}
		m[st.DeviceID] = st
	}
	return out, rows.Err()
}

// StatusFilter selects statuses of one policy.
type StatusFilter struct {
	PolicyID string
	DeviceID string
	Status   string
	After    string // device ID (policy) or policy ID (device) cursor
	Limit    int
}

// FindStatuses lists a policy's statuses in device order, or a device's
// in policy order, with a cursor.
func (s *Store) FindStatuses(ctx context.Context, f StatusFilter) ([]PolicyStatus, string, error) {
	limit := f.Limit
	if limit <= 0 || limit > MaxPageSize {
		limit = 100
	}
	q := "SELECT " + statusColumns + `, (SELECT count(*) FROM policy_tasks pt JOIN tasks t ON t.id = pt.task_id
		WHERE pt.device_id = s.device_id AND pt.policy_id = s.policy_id AND t.state IN ('queued', 'dispatched'))
		FROM policy_status s WHERE `
	var args []any
	order := "s.device_id"
	if f.PolicyID != "" {
		args = append(args, f.PolicyID)
		q += "s.policy_id = $1"
	} else {
		args = append(args, f.DeviceID)
		q += "s.device_id = $1"
		order = "s.policy_id"
	}
	if f.Status != "" {
		args = append(args, f.Status)
		q += fmt.Sprintf(" AND s.status = $%d", len(args))
	}
	if f.After != "" {
		args = append(args, f.After)
		q += fmt.Sprintf(" AND %s > $%d", order, len(args))
	}
	args = append(args, limit+1)
	q += fmt.Sprintf(" ORDER BY %s LIMIT $%d", order, len(args))
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, "", fmt.Errorf("store: find statuses: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (PolicyStatus, error) {
		var open int
		st, err := scanStatus(r, &open)
		st.OpenTasks = open
		return st, err
	})
	if err != nil {
		return nil, "", fmt.Errorf("store: find statuses: %w", err)
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		last := out[limit-1]
		if f.PolicyID != "" {
			next = EncodeCursor(last.DeviceID)
		} else {
			next = EncodeCursor(last.PolicyID)
		}
	}
	return out, next, nil
}

// PolicyTask links a task to the policy that created it.
type PolicyTask struct {
	TaskID   string
	PolicyID string
	DeviceID string
	Revision int
	// Purpose is set, add, delete, attributes or refresh; Target the table
	// a refresh reads.
	Purpose string
	Target  string
}

// PolicyDevice names one status.
type PolicyDevice struct{ PolicyID, DeviceID string }

// Reconciliation is the outcome of judging a set of devices against every
// active policy, written in one transaction by ApplyReconciliation.
type Reconciliation struct {
	// DeviceIDs are the devices judged: their statuses not in Keep are
	// deleted (they left the group, or the policy is gone).
	DeviceIDs []string
	Keep      []PolicyDevice
	// Statuses to write: new or changed ones only (a sweep over an
	// unchanged fleet writes nothing).
	Statuses []PolicyStatus
	// Tasks to queue. A task with a UniqueKey replaces a queued task of
	// the same device and key.
	Tasks []Task
	Links []PolicyTask
}

// ApplyReconciliation writes statuses, tasks and their links in one
// transaction: a crash leaves either all of a batch's decisions or none
// (the next pass makes them again).
func (s *Store) ApplyReconciliation(ctx context.Context, r Reconciliation) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if len(r.DeviceIDs) > 0 {
			keepP := make([]string, len(r.Keep))
			keepD := make([]string, len(r.Keep))
			for i, k := range r.Keep {
				keepP[i], keepD[i] = k.PolicyID, k.DeviceID
			}
			if _, err := tx.Exec(ctx, `DELETE FROM policy_status s WHERE s.device_id = ANY($1::text[])
				AND NOT EXISTS (SELECT 1 FROM unnest($2::text[], $3::text[]) k(p, d) WHERE k.p = s.policy_id AND k.d = s.device_id)`,
				r.DeviceIDs, keepP, keepD); err != nil {
				return err
			}
		}
		if len(r.Tasks) > 0 {
			var dev, key, ids []string
			for _, t := range r.Tasks {
				if t.UniqueKey != "" {
					dev, key, ids = append(dev, t.DeviceID), append(key, t.UniqueKey), append(ids, t.ID)
				}
			}
			if len(dev) > 0 {
				// The same devices' locks as CreateTask and ClaimNextTask,
				// in a fixed order so two batches cannot deadlock.
				if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('duet.task.' || d, 0))
					FROM (SELECT DISTINCT d FROM unnest($1::text[]) d ORDER BY d) x`, dev); err != nil {
					return err
				}
				// A non-idempotent task whose twin (same device and key)
				// is on the device with its outcome still unknown is not
				// queued again: two judgements of one device at once (two
				// replicas, or one racing the result) must not add an
				// instance twice. The twin's result judges the device anew.
				var err error
				if r.Tasks, r.Links, err = dropDispatchedTwins(ctx, tx, r.Tasks, r.Links); err != nil {
					return err
				}
				dev, key, ids = dev[:0], key[:0], ids[:0]
				for _, t := range r.Tasks {
					if t.UniqueKey != "" {
						dev, key, ids = append(dev, t.DeviceID), append(key, t.UniqueKey), append(ids, t.ID)
					}
				}
				if _, err := tx.Exec(ctx, `UPDATE tasks t SET state = 'cancelled', error_code = 'cancelled',
					error_message = 'replaced by task ' || k.id, finished_at = now(), updated_at = now()
					FROM unnest($1::text[], $2::text[], $3::text[]) k(d, key, id)
					WHERE t.device_id = k.d AND t.unique_key = k.key AND t.state = 'queued'`, dev, key, ids); err != nil {
					return err
				}
			}
			rows := make([][]any, len(r.Tasks))
			for i, t := range r.Tasks {
				rows[i] = []any{t.ID, t.DeviceID, t.Operation, t.Request, t.Command, t.NonIdempotent, "queued",
					nullable(t.UniqueKey), t.ConnectionRequest, t.ExpiresAt, t.CreatedBy}
			}
			if _, err := tx.CopyFrom(ctx, pgx.Identifier{"tasks"}, []string{"id", "device_id", "operation", "request", "command",
				"non_idempotent", "state", "unique_key", "connection_request", "expires_at", "created_by"}, pgx.CopyFromRows(rows)); err != nil {
				return err
			}
		}
		if len(r.Links) > 0 {
			rows := make([][]any, len(r.Links))
			for i, l := range r.Links {
				rows[i] = []any{l.TaskID, l.PolicyID, l.DeviceID, l.Revision, l.Purpose, l.Target}
			}
			if _, err := tx.CopyFrom(ctx, pgx.Identifier{"policy_tasks"}, []string{"task_id", "policy_id", "device_id", "revision", "purpose", "target"},
				pgx.CopyFromRows(rows)); err != nil {
				return err
			}
		}
		if len(r.Statuses) > 0 {
			n := len(r.Statuses)
			pol, dev, status, ecode, emsg := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
			rev, attrs, fault := make([]int32, n), make([]int32, n), make([]int32, n)
			batch := make([]*int32, n)
			plan, conflicts := make([]*string, n), make([]*string, n)
			refreshed := make([]string, n)
			for i, st := range r.Statuses {
				pol[i], dev[i], status[i], ecode[i], emsg[i] = st.PolicyID, st.DeviceID, st.Status, st.ErrorCode, st.ErrorMessage
				rev[i], attrs[i], fault[i] = int32(st.Revision), int32(st.AttrsRevision), int32(st.DeviceFault)
				if st.Batch != nil {
					v := int32(*st.Batch)
					batch[i] = &v
				}
				plan[i], conflicts[i] = jsonText(st.Plan), jsonText(st.Conflicts)
				// A text[] literal per row: unnest cannot take an array
				// of arrays of different lengths.
				refreshed[i] = textArray(st.Refreshed)
			}
			// One statement per page, whatever its size.
			if _, err := tx.Exec(ctx, `INSERT INTO policy_status AS s (policy_id, device_id, status, revision, attrs_revision,
					refreshed, batch, plan, conflicts, error_code, error_message, device_fault)
				SELECT u.p, u.d, u.st, u.rev, u.attrs, u.refr::text[], u.batch, u.plan::jsonb, u.conf::jsonb, u.ecode, u.emsg, u.fault
				FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::int[], $6::text[], $7::int[], $8::text[],
					$9::text[], $10::text[], $11::text[], $12::int[]) AS u(p, d, st, rev, attrs, refr, batch, plan, conf, ecode, emsg, fault)
				ON CONFLICT (policy_id, device_id) DO UPDATE SET status = EXCLUDED.status, revision = EXCLUDED.revision,
					plan = EXCLUDED.plan, conflicts = EXCLUDED.conflicts, error_code = EXCLUDED.error_code,
					error_message = EXCLUDED.error_message, device_fault = EXCLUDED.device_fault,
					batch = COALESCE(s.batch, EXCLUDED.batch),
					updated_at = CASE WHEN s.status = EXCLUDED.status AND s.revision = EXCLUDED.revision THEN s.updated_at ELSE now() END`,
				pol, dev, status, rev, attrs, refreshed, batch, plan, conflicts, ecode, emsg, fault); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: apply reconciliation: %w", err)
	}
	return nil
}

func jsonText(b json.RawMessage) *string {
	if len(b) == 0 {
		return nil
	}
	s := string(b)
	return &s
}

// textArray renders a PostgreSQL text[] literal.
func textArray(items []string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, it := range items {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		b.WriteString(strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(it))
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

// FinishPolicyTask records the outcome of a finished task a policy
// created, when it did: a failure marks the status failed (if it still
// judges the task's revision); accepted attributes and a table read are
// remembered. ok is false for a task no policy created.
func (s *Store) FinishPolicyTask(ctx context.Context, t Task) (link PolicyTask, ok bool, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, "SELECT task_id, policy_id, device_id, revision, purpose, target FROM policy_tasks WHERE task_id = $1", t.ID).
			Scan(&link.TaskID, &link.PolicyID, &link.DeviceID, &link.Revision, &link.Purpose, &link.Target)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		ok = true
		switch t.State {
		case TaskSucceeded:
			switch link.Purpose {
			case "attributes":
				_, err = tx.Exec(ctx, "UPDATE policy_status SET attrs_revision = $3 WHERE policy_id = $1 AND device_id = $2 AND revision = $3",
					link.PolicyID, link.DeviceID, link.Revision)
			case "refresh":
				_, err = tx.Exec(ctx, `UPDATE policy_status SET refreshed = array_append(refreshed, $3)
					WHERE policy_id = $1 AND device_id = $2 AND NOT ($3 = ANY(refreshed))`, link.PolicyID, link.DeviceID, link.Target)
			}
		case TaskFailed, TaskExpired:
			msg := t.ErrorMessage
			if msg == "" {
				msg = "task " + string(t.State)
			}
			_, err = tx.Exec(ctx, `UPDATE policy_status SET status = 'failed', error_code = $4, error_message = $5,
				device_fault = $6, updated_at = now() WHERE policy_id = $1 AND device_id = $2 AND revision = $3`,
				link.PolicyID, link.DeviceID, link.Revision, cmp.Or(t.ErrorCode, string(t.State)), msg, t.DeviceFault)
		}
		return err
	})
	if err != nil {
		return link, false, fmt.Errorf("store: finish policy task: %w", err)
	}
	return link, ok, nil
}

// ForgetDeviceState is called for devices that bootstrapped (factory
// reset), each with the time of its bootstrap: what Duet knew of them no
// longer holds. Their cached parameters learned before that time are
// dropped, and their policy statuses forget accepted attributes, tables
// read and failures, so every policy is applied to them again. One
// transaction for all of them.
func (s *Store) ForgetDeviceState(ctx context.Context, boots map[string]time.Time) error {
	if len(boots) == 0 {
		return nil
	}
	ids := make([]string, 0, len(boots))
	ats := make([]time.Time, 0, len(boots))
	for id, at := range boots {
		ids, ats = append(ids, id), append(ats, at)
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := forgetParameters(ctx, tx, ids, ats); err != nil {
			return err
		}
		if err := forgetTableListings(ctx, tx, ids, ats); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE policy_status SET attrs_revision = 0, refreshed = '{}',
			status = CASE WHEN status = 'failed' THEN 'pending' ELSE status END, error_code = '', error_message = '',
			device_fault = 0, updated_at = now() WHERE device_id = ANY($1::text[])`, ids)
		return err
	})
	if err != nil {
		return fmt.Errorf("store: forget device state: %w", err)
	}
	return nil
}

// forgetParameters drops what the cache held of each device before its
// bootstrap time (ids[i] at ats[i]) and leaves a whole-device tombstone,
// so a value read before the bootstrap and applied late is not stored
// again. What was observed at or after the bootstrap — the values of the
// Inform or onboarding that reported it — stays (issue 12 item 1). The
// device's older tombstones are covered by the new one.
func forgetParameters(ctx context.Context, tx pgx.Tx, ids []string, ats []time.Time) error {
	b := &pgx.Batch{}
	b.Queue(`DELETE FROM device_parameters p USING unnest($1::text[], $2::timestamptz[]) b(d, at)
		WHERE p.device_id = b.d AND p.updated_at < b.at`, ids, ats)
	b.Queue(`DELETE FROM device_parameter_tombstones t USING unnest($1::text[], $2::timestamptz[]) b(d, at)
		WHERE t.device_id = b.d AND t.prefix <> '' AND t.deleted_at <= b.at`, ids, ats)
	b.Queue(`INSERT INTO device_parameter_tombstones (device_id, prefix, deleted_at)
		SELECT b.d, '', b.at FROM unnest($1::text[], $2::timestamptz[]) b(d, at)
		WHERE EXISTS (SELECT 1 FROM devices WHERE id = b.d)
		ON CONFLICT (device_id, prefix) DO UPDATE SET deleted_at = GREATEST(device_parameter_tombstones.deleted_at, excluded.deleted_at)`, ids, ats)
	return tx.SendBatch(ctx, b).Close()
}

// DeleteParameterSubtrees is DeleteParameterSubtreesAt observed now: it
// refuses afterwards every value under prefixes observed before this call.
func (s *Store) DeleteParameterSubtrees(ctx context.Context, deviceID string, prefixes []string) error {
	return s.DeleteParameterSubtreesAt(ctx, deviceID, prefixes, time.Now())
}

// DeleteParameterSubtreesAt drops a device's cached parameters under the
// given object paths (instances it deleted), all of them, and leaves a
// tombstone per path at at, when the deletion was observed: a value under it observed before at (a Get
// answered before the Delete, applied late) is never stored again, while
// one observed after (the instance created anew) is.
func (s *Store) DeleteParameterSubtreesAt(ctx context.Context, deviceID string, prefixes []string, at time.Time) error {
	if len(prefixes) == 0 {
		return nil
	}
	likes := make([]string, len(prefixes))
	for i, p := range prefixes {
		likes[i] = likeEscape(p) + "%"
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		b.Queue(`INSERT INTO device_parameter_tombstones (device_id, prefix, deleted_at)
			SELECT $1, p, $3 FROM unnest($2::text[]) p WHERE EXISTS (SELECT 1 FROM devices WHERE id = $1)
			ON CONFLICT (device_id, prefix) DO UPDATE SET deleted_at = GREATEST(device_parameter_tombstones.deleted_at, excluded.deleted_at)`,
			deviceID, prefixes, at)
		b.Queue("DELETE FROM device_parameters WHERE device_id = $1 AND path LIKE ANY($2::text[])", deviceID, likes)
		return tx.SendBatch(ctx, b).Close()
	})
	if err != nil {
		return fmt.Errorf("store: delete parameter subtrees: %w", err)
	}
	return nil
}

// PruneParameterTombstones drops deletions observed before cutoff: once
// no event that old can still be delivered (the event stream's
// retention), nothing can arrive that they would have to beat.
func (s *Store) PruneParameterTombstones(ctx context.Context, cutoff time.Time) (int64, error) {
	tag, err := s.pool.Exec(ctx, "DELETE FROM device_parameter_tombstones WHERE deleted_at < $1", cutoff)
	if err != nil {
		return 0, fmt.Errorf("store: prune parameter tombstones: %w", err)
	}
	return tag.RowsAffected(), nil
}

// PrunePolicyTasks drops the links of policy tasks that finished before
// cutoff: their outcome was recorded when they finished, and a link kept
// forever would make "does this device have open policy work" scan every
// task a policy ever created for it.
func (s *Store) PrunePolicyTasks(ctx context.Context, cutoff time.Time) (int, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM policy_tasks pt USING tasks t
		WHERE t.id = pt.task_id AND t.state NOT IN ('queued', 'dispatched') AND t.updated_at < $1`, cutoff)
	if err != nil {
		return 0, fmt.Errorf("store: prune policy tasks: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// Lease is a session-level PostgreSQL advisory lock held on one pooled
// connection: while it is held, no other Duet process holds the same
// name. It is lost with the connection.
type Lease struct {
	conn *pgxpool.Conn
	key  string
}

// TryLease takes the lease called name if nobody holds it; ok is false
// when another process does.
func (s *Store) TryLease(ctx context.Context, name string) (l *Lease, ok bool, err error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("store: lease %s: %w", name, err)
	}
	key := "duet.lease." + name
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock(hashtextextended($1, 0))", key).Scan(&ok); err != nil {
		conn.Release()
		return nil, false, fmt.Errorf("store: lease %s: %w", name, err)
	}
	if !ok {
		conn.Release()
		return nil, false, nil
	}
	return &Lease{conn: conn, key: key}, true, nil
}

// Alive reports whether the lease's connection still answers (the lock
// went with it if not).
func (l *Lease) Alive(ctx context.Context) bool {
	_, err := l.conn.Exec(ctx, "SELECT 1")
	return err == nil
}

// Release gives the lease up.
func (l *Lease) Release(ctx context.Context) {
	if _, err := l.conn.Exec(ctx, "SELECT pg_advisory_unlock(hashtextextended($1, 0))", l.key); err != nil {
		// A broken connection: closing it releases the lock.
		_ = l.conn.Conn().Close(ctx)
	}
	l.conn.Release()
}

// dropDispatchedTwins removes from tasks (and their links) each
// non-idempotent task with a unique key that a dispatched task of the same
// device already carries. The caller holds the devices' task locks.
func dropDispatchedTwins(ctx context.Context, tx pgx.Tx, tasks []Task, links []PolicyTask) ([]Task, []PolicyTask, error) {
	var dev, key []string
	for _, t := range tasks {
		if t.NonIdempotent && t.UniqueKey != "" {
			dev, key = append(dev, t.DeviceID), append(key, t.UniqueKey)
		}
	}
	if len(dev) == 0 {
		return tasks, links, nil
	}
	rows, err := tx.Query(ctx, `SELECT t.device_id, t.unique_key FROM tasks t
		JOIN unnest($1::text[], $2::text[]) k(d, key) ON t.device_id = k.d AND t.unique_key = k.key
		WHERE t.state = 'dispatched'`, dev, key)
	if err != nil {
		return nil, nil, err
	}
	busy := map[[2]string]bool{}
	for rows.Next() {
		var d, k string
		if err := rows.Scan(&d, &k); err != nil {
			rows.Close()
			return nil, nil, err
		}
		busy[[2]string{d, k}] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	if len(busy) == 0 {
		return tasks, links, nil
	}
	dropped := map[string]bool{}
	keptTasks := make([]Task, 0, len(tasks))
	for _, t := range tasks {
		if t.NonIdempotent && busy[[2]string{t.DeviceID, t.UniqueKey}] {
			dropped[t.ID] = true
			continue
		}
		keptTasks = append(keptTasks, t)
	}
	keptLinks := make([]PolicyTask, 0, len(links))
	for _, l := range links {
		if !dropped[l.TaskID] {
			keptLinks = append(keptLinks, l)
		}
	}
	return keptTasks, keptLinks, nil
}
