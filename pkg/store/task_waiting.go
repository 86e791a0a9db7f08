package store

import (
	"context"
	"fmt"
)

// Why a queued task waits (issue 11 §5; migration 0035).
const (
	WaitDeviceOffline   = "device_offline"
	WaitNoAdapter       = "no_adapter"
	WaitDeviceBusy      = "device_busy"
	WaitAwaitingSession = "awaiting_session"
	WaitAwaitingInform  = "awaiting_inform"
	// WaitConnReqFailed is followed by ": " and the failure.
	WaitConnReqFailed = "connection_request_failed"
)

// SetTasksWaiting records why the device's queued tasks wait. It returns
// how many tasks got a new reason (0 when they already had it, so callers
// log changes only), through the partial index of open tasks.
func (s *Store) SetTasksWaiting(ctx context.Context, deviceID, reason string) (int, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE tasks SET waiting_reason = $2, waiting_since = now()
		WHERE device_id = $1 AND state = 'queued' AND waiting_reason <> $2`, deviceID, reason)
	if err != nil {
		return 0, fmt.Errorf("store: task waiting: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// WaitingChange is a device whose queued tasks got a new waiting reason.
type WaitingChange struct {
	DeviceID string
	Tasks    int
}

// MarkOfflineTasksWaiting gives the queued tasks of offline devices the
// reason device_offline, set-based, and returns the devices that changed.
func (s *Store) MarkOfflineTasksWaiting(ctx context.Context) ([]WaitingChange, error) {
	rows, err := s.pool.Query(ctx, `WITH changed AS (
		UPDATE tasks t SET waiting_reason = 'device_offline', waiting_since = now()
		FROM devices d
		WHERE t.state = 'queued' AND d.id = t.device_id AND NOT d.online AND t.waiting_reason <> 'device_offline'
		RETURNING t.device_id)
		SELECT device_id, count(*) FROM changed GROUP BY device_id ORDER BY device_id`)
	if err != nil {
		return nil, fmt.Errorf("store: offline tasks waiting: %w", err)
	}
	defer rows.Close()
	var out []WaitingChange
	for rows.Next() {
		var c WaitingChange
		if err := rows.Scan(&c.DeviceID, &c.Tasks); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}
