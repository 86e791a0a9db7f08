package store

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/duet-dm/duet/pkg/devicemodel"
)

// DeviceEvent is one stored device event.
type DeviceEvent struct {
	ID       string
	DeviceID string
	Kind     string
	Time     time.Time
	Payload  []byte // protobuf duet.v1.Event
}

// EventFilter selects a device's events for FindDeviceEvents.
type EventFilter struct {
	DeviceID string
	Kind     string // "" for all
	// Before is the cursor (from the previous page's last event).
	Before *EventCursor
	Limit  int
}

// EventCursor is a position in a device's history: events are ordered by
// (time, id) descending.
type EventCursor struct {
	Time time.Time
	ID   string
}

// Encode makes the cursor opaque to clients.
func (c EventCursor) Encode() string {
	return EncodeCursor(c.Time.UTC().Format(time.RFC3339Nano) + " " + c.ID)
}

// DecodeEventCursor reverses EventCursor.Encode.
func DecodeEventCursor(s string) (EventCursor, error) {
	raw, err := DecodeCursor(s)
	if err != nil {
		return EventCursor{}, err
	}
	ts, id, ok := strings.Cut(raw, " ")
	t, terr := time.Parse(time.RFC3339Nano, ts)
	if !ok || terr != nil || id == "" {
		return EventCursor{}, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "malformed cursor")
	}
	return EventCursor{Time: t, ID: id}, nil
}

// FindDeviceEvents returns one page of a device's history, newest first,
// and the cursor of the next page ("" on the last). It is a range scan of
// device_events_device_time_idx.
func (s *Store) FindDeviceEvents(ctx context.Context, f EventFilter) ([]DeviceEvent, string, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, MaxPageSize)
	q := "SELECT id, device_id, kind, time, payload FROM device_events WHERE device_id = $1"
	args := []any{f.DeviceID}
	if f.Kind != "" {
		args = append(args, f.Kind)
		q += fmt.Sprintf(" AND kind = $%d", len(args))
	}
	if f.Before != nil {
		args = append(args, f.Before.Time, f.Before.ID)
		q += fmt.Sprintf(" AND (time, id) < ($%d, $%d)", len(args)-1, len(args))
	}
	args = append(args, limit+1)
	q += fmt.Sprintf(" ORDER BY time DESC, id DESC LIMIT $%d", len(args))
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, "", fmt.Errorf("store: find events: %w", err)
	}
	defer rows.Close()
	var out []DeviceEvent
	for rows.Next() {
		var e DeviceEvent
		if err := rows.Scan(&e.ID, &e.DeviceID, &e.Kind, &e.Time, &e.Payload); err != nil {
			return nil, "", err
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, "", err
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		last := out[limit-1]
		next = EventCursor{Time: last.Time, ID: last.ID}.Encode()
	}
	return out, next, nil
}

// DeleteEventsBefore deletes device history older than t, at most batch
// rows per statement (so a large backlog never holds one long
// transaction), and returns how many it deleted.
func (s *Store) DeleteEventsBefore(ctx context.Context, t time.Time, batch int) (int64, error) {
	return s.deleteEvents(ctx, `DELETE FROM device_events WHERE id IN (
			SELECT id FROM device_events WHERE time < $1 LIMIT $2)`, batch, t)
}

// DeleteEventsBeforeExcept is DeleteEventsBefore for every kind but the
// listed ones (which have retentions of their own).
func (s *Store) DeleteEventsBeforeExcept(ctx context.Context, t time.Time, except []string, batch int) (int64, error) {
	if len(except) == 0 {
		return s.DeleteEventsBefore(ctx, t, batch)
	}
	return s.deleteEvents(ctx, `DELETE FROM device_events WHERE id IN (
			SELECT id FROM device_events WHERE time < $1 AND kind <> ALL($3::text[]) LIMIT $2)`, batch, t, except)
}

// DeleteEventsOfKindBefore deletes one kind's history older than t
// (device_events_kind_time_idx), batched as DeleteEventsBefore.
func (s *Store) DeleteEventsOfKindBefore(ctx context.Context, kind string, t time.Time, batch int) (int64, error) {
	return s.deleteEvents(ctx, `DELETE FROM device_events WHERE id IN (
			SELECT id FROM device_events WHERE kind = $3 AND time < $1 LIMIT $2)`, batch, t, kind)
}

func (s *Store) deleteEvents(ctx context.Context, sql string, batch int, t time.Time, more ...any) (int64, error) {
	var total int64
	for {
		tag, err := s.pool.Exec(ctx, sql, append([]any{t, batch}, more...)...)
		if err != nil {
			return total, fmt.Errorf("store: delete old events: %w", err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < int64(batch) || ctx.Err() != nil {
			return total, nil
		}
	}
}
