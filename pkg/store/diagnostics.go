package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// Diagnostic is the stored result of one on-device diagnostic (issue 14
// §6), the same for both protocols; Result holds the per-kind figures
// (controller.DiagnosticResult) as JSON.
type Diagnostic struct {
	TaskID       string
	DeviceID     string
	Kind         string
	Target       string
	Success      bool
	Status       string
	ErrorCode    string
	ErrorMessage string
	StartedAt    time.Time
	FinishedAt   time.Time
	Result       json.RawMessage
}

// DiagnosticFilter selects a device's diagnostics, newest first, after
// the keyset cursor (Before*) when given.
type DiagnosticFilter struct {
	DeviceID   string
	Kind       string
	BeforeTime time.Time
	BeforeID   string
	Limit      int
}

// RecordDiagnostic stores d; a second record of the same task replaces
// the first (a completion handled twice stores one row).
func (s *Store) RecordDiagnostic(ctx context.Context, d Diagnostic) error {
	if len(d.Result) == 0 {
		d.Result = json.RawMessage("{}")
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO device_diagnostics
		(task_id, device_id, kind, target, success, status, error_code, error_message, started_at, finished_at, result)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
		ON CONFLICT (task_id) DO UPDATE SET success = EXCLUDED.success, status = EXCLUDED.status,
			error_code = EXCLUDED.error_code, error_message = EXCLUDED.error_message,
			started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at, result = EXCLUDED.result`,
		d.TaskID, d.DeviceID, d.Kind, d.Target, d.Success, d.Status, d.ErrorCode, d.ErrorMessage,
		d.StartedAt, d.FinishedAt, []byte(d.Result))
	if err != nil {
		return fmt.Errorf("store: record diagnostic of task %s: %w", d.TaskID, err)
	}
	return nil
}

// FindDiagnostics lists a device's diagnostics, newest first.
func (s *Store) FindDiagnostics(ctx context.Context, f DiagnosticFilter) ([]Diagnostic, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	q := `SELECT task_id, device_id, kind, target, success, status, error_code, error_message, started_at, finished_at, result
		FROM device_diagnostics WHERE device_id = $1`
	args := []any{f.DeviceID}
	if f.Kind != "" {
		args = append(args, f.Kind)
		q += fmt.Sprintf(" AND kind = $%d", len(args))
	}
	if !f.BeforeTime.IsZero() {
		args = append(args, f.BeforeTime, f.BeforeID)
		q += fmt.Sprintf(" AND (finished_at, task_id) < ($%d, $%d)", len(args)-1, len(args))
	}
	args = append(args, f.Limit)
	q += fmt.Sprintf(" ORDER BY finished_at DESC, task_id DESC LIMIT $%d", len(args))
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []Diagnostic{}
	for rows.Next() {
		var d Diagnostic
		var res []byte
		if err := rows.Scan(&d.TaskID, &d.DeviceID, &d.Kind, &d.Target, &d.Success, &d.Status, &d.ErrorCode, &d.ErrorMessage,
			&d.StartedAt, &d.FinishedAt, &res); err != nil {
			return nil, err
		}
		d.StartedAt, d.FinishedAt, d.Result = d.StartedAt.UTC(), d.FinishedAt.UTC(), res
		out = append(out, d)
	}
	return out, rows.Err()
}
