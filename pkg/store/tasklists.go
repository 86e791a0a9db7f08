package store

import (
	"context"
	"fmt"
	"strconv"
	"time"
)

// TaskListFilter selects tasks of every device (the console's task list):
// each field left empty does not filter.
type TaskListFilter struct {
	State     TaskState
	Operation string
	DeviceID  string
	BatchID   string
	// CreatedAfter / CreatedBefore bound created_at (inclusive / exclusive).
	CreatedAfter, CreatedBefore time.Time
	// Before is the cursor: the seq of the last task of the previous page.
	Before int64
	Limit  int
}

// FindAllTasks returns one page of the tasks f selects, newest first, and
// the cursor of the next page ("" on the last; DecodeSeqCursor reads it).
// The state, batch and device filters are range scans of an index each
// (0003, 0085).
func (s *Store) FindAllTasks(ctx context.Context, f TaskListFilter) ([]Task, string, error) {
	limit := PageFilter{Limit: f.Limit}.limit()
	q := "SELECT " + taskColumns + " FROM tasks WHERE true"
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		q += fmt.Sprintf(" AND "+cond, len(args))
	}
	if f.State != "" {
		add("state = $%d", string(f.State))
	}
	if f.Operation != "" {
		add("operation = $%d", f.Operation)
	}
	if f.DeviceID != "" {
		add("device_id = $%d", f.DeviceID)
	}
	if f.BatchID != "" {
		add("batch_id = $%d", f.BatchID)
	}
	if !f.CreatedAfter.IsZero() {
		add("created_at >= $%d", f.CreatedAfter)
	}
	if !f.CreatedBefore.IsZero() {
		add("created_at < $%d", f.CreatedBefore)
	}
	if f.Before > 0 {
		add("seq < $%d", f.Before)
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

// BatchTaskStates counts the tasks of each batch by state: the progress
// of batches (ids) whose tasks were created (tasks_batch_device_idx).
func (s *Store) BatchTaskStates(ctx context.Context, ids []string) (map[string]map[TaskState]int64, error) {
	out := make(map[string]map[TaskState]int64, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	rows, err := s.pool.Query(ctx, "SELECT batch_id, state, count(*) FROM tasks WHERE batch_id = ANY($1) GROUP BY batch_id, state", ids)
	if err != nil {
		return nil, fmt.Errorf("store: batch task states: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, state string
		var n int64
		if err := rows.Scan(&id, &state, &n); err != nil {
			return nil, fmt.Errorf("store: batch task states: %w", err)
		}
		if out[id] == nil {
			out[id] = map[TaskState]int64{}
		}
		out[id][TaskState(state)] = n
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: batch task states: %w", err)
	}
	return out, nil
}
