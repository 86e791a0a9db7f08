package store

import (
	"context"
	"fmt"
)

// Why a queued task waits (issue 11 §5; migration 0035). The reason is
// the device's (all its queued tasks wait for the same thing) and lives in
// device_task_waits, never in the task rows: a session's claim skips
// locked task rows.
const (
	WaitDeviceOffline   = "device_offline"
	WaitNoAdapter       = "no_adapter"
	WaitDeviceBusy      = "device_busy"
	WaitAwaitingSession = "awaiting_session"
	WaitAwaitingInform  = "awaiting_inform"
	// WaitConnReqFailed is followed by ": " and the failure.
	WaitConnReqFailed = "connection_request_failed"
)

// SetTasksWaiting records why the device's queued tasks wait. changed is
// false when they already waited for that reason, or none is queued, so
// callers log changes only.
func (s *Store) SetTasksWaiting(ctx context.Context, deviceID, reason string) (changed bool, err error) {
	tag, err := s.pool.Exec(ctx, setTasksWaitingSQL, deviceID, reason)
	if err != nil {
		return false, fmt.Errorf("store: task waiting: %w", err)
	}
	return tag.RowsAffected() > 0, nil
}

const setTasksWaitingSQL = `INSERT INTO device_task_waits (wait_device, wait_reason, wait_since)
	SELECT $1, $2, now() WHERE EXISTS (SELECT 1 FROM tasks WHERE device_id = $1 AND state = 'queued')
	ON CONFLICT (wait_device) DO UPDATE SET wait_reason = excluded.wait_reason, wait_since = excluded.wait_since
	WHERE device_task_waits.wait_reason <> excluded.wait_reason`

// MarkOfflineTasksWaiting gives the devices that are offline with queued
// tasks the reason device_offline, and forgets it for those online again,
// set-based; it returns the devices newly marked.
func (s *Store) MarkOfflineTasksWaiting(ctx context.Context) ([]string, error) {
	if _, err := s.pool.Exec(ctx, `DELETE FROM device_task_waits w USING devices d
		WHERE d.id = w.wait_device AND d.online AND w.wait_reason = 'device_offline'`); err != nil {
		return nil, fmt.Errorf("store: offline tasks waiting: %w", err)
	}
	rows, err := s.pool.Query(ctx, `INSERT INTO device_task_waits (wait_device, wait_reason, wait_since)
		SELECT DISTINCT t.device_id, 'device_offline', now()
		FROM tasks t JOIN devices d ON d.id = t.device_id
		WHERE t.state = 'queued' AND NOT d.online
		ON CONFLICT (wait_device) DO UPDATE SET wait_reason = excluded.wait_reason, wait_since = excluded.wait_since
		WHERE device_task_waits.wait_reason <> excluded.wait_reason
		RETURNING wait_device`)
	if err != nil {
		return nil, fmt.Errorf("store: offline tasks waiting: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, rows.Err()
}
