package store

import (
	"context"
	"fmt"
	"time"
)

// SampleActivity records this minute's activity sample (console_activity,
// 0086): the fleet's Inform total and the events of kinds stored during
// the minute before. A minute already sampled (by another replica) stays
// as it is. It reads every device row once (about 100k rows a minute at
// 100k devices) and a range of device_events_kind_time_idx per kind.
func (s *Store) SampleActivity(ctx context.Context, now time.Time, kinds []string) error {
	minute := now.UTC().Truncate(time.Minute)
	_, err := s.pool.Exec(ctx, `INSERT INTO console_activity (minute, informs_total, events)
		SELECT $1::timestamptz, (SELECT COALESCE(sum(informs_total), 0) FROM devices),
			(SELECT count(*) FROM device_events WHERE kind = ANY($2) AND time >= $1::timestamptz - interval '1 minute' AND time < $1::timestamptz)
		ON CONFLICT (minute) DO NOTHING`, minute, kinds)
	if err != nil {
		return fmt.Errorf("store: sample activity: %w", err)
	}
	_, err = s.pool.Exec(ctx, `DELETE FROM console_activity WHERE minute < $1`, minute.Add(-48*time.Hour))
	if err != nil {
		return fmt.Errorf("store: prune activity: %w", err)
	}
	return nil
}

// ActivityPoint is one minute of activity: Informs applied and other
// events stored in the minute before Minute.
type ActivityPoint struct {
	Minute  time.Time
	Informs int64
	Events  int64
}

// Activity returns the minutes sampled since since, oldest first, with
// the Informs of each minute (the difference from the sample before; a
// minute without one before it is left out).
func (s *Store) Activity(ctx context.Context, since time.Time) ([]ActivityPoint, error) {
	rows, err := s.pool.Query(ctx, `SELECT minute, informs, events FROM (
			SELECT minute, events, informs_total - lag(informs_total) OVER (ORDER BY minute) AS informs,
				minute - lag(minute) OVER (ORDER BY minute) AS gap
			FROM console_activity WHERE minute >= $1::timestamptz - interval '1 minute') a
		WHERE gap = interval '1 minute' ORDER BY minute`, since)
	if err != nil {
		return nil, fmt.Errorf("store: activity: %w", err)
	}
	defer rows.Close()
	var out []ActivityPoint
	for rows.Next() {
		var p ActivityPoint
		if err := rows.Scan(&p.Minute, &p.Informs, &p.Events); err != nil {
			return nil, fmt.Errorf("store: activity: %w", err)
		}
		// Deleted devices take their counts with them: never below zero.
		p.Informs = max(p.Informs, 0)
		out = append(out, p)
	}
	return out, rows.Err()
}

// DayCount is a number of something on a day (UTC).
type DayCount struct {
	Day time.Time
	N   int64
}

// NewDevicesPerDay counts the devices first seen on each day (UTC) since
// since (devices_first_seen_idx), days without one left out.
func (s *Store) NewDevicesPerDay(ctx context.Context, since time.Time) ([]DayCount, error) {
	rows, err := s.pool.Query(ctx, `SELECT date_trunc('day', first_seen AT TIME ZONE 'UTC'), count(*) FROM devices
		WHERE first_seen >= $1 GROUP BY 1 ORDER BY 1`, since)
	if err != nil {
		return nil, fmt.Errorf("store: new devices per day: %w", err)
	}
	defer rows.Close()
	var out []DayCount
	for rows.Next() {
		var d DayCount
		if err := rows.Scan(&d.Day, &d.N); err != nil {
			return nil, fmt.Errorf("store: new devices per day: %w", err)
		}
		d.Day = time.Date(d.Day.Year(), d.Day.Month(), d.Day.Day(), 0, 0, 0, 0, time.UTC)
		out = append(out, d)
	}
	return out, rows.Err()
}

// HourStateCount is how many tasks ended in a state during an hour.
type HourStateCount struct {
	Hour  time.Time
	State TaskState
	Tasks int64
}

// TaskOutcomesPerHour counts the tasks finished since since by hour
// (UTC) and final state (tasks_finished_idx).
func (s *Store) TaskOutcomesPerHour(ctx context.Context, since time.Time) ([]HourStateCount, error) {
	rows, err := s.pool.Query(ctx, `SELECT date_trunc('hour', finished_at AT TIME ZONE 'UTC'), state, count(*) FROM tasks
		WHERE finished_at >= $1 AND state NOT IN ('queued', 'dispatched') GROUP BY 1, 2 ORDER BY 1, 2`, since)
	if err != nil {
		return nil, fmt.Errorf("store: task outcomes per hour: %w", err)
	}
	defer rows.Close()
	var out []HourStateCount
	for rows.Next() {
		var h HourStateCount
		var st string
		if err := rows.Scan(&h.Hour, &st, &h.Tasks); err != nil {
			return nil, fmt.Errorf("store: task outcomes per hour: %w", err)
		}
		h.Hour = time.Date(h.Hour.Year(), h.Hour.Month(), h.Hour.Day(), h.Hour.Hour(), 0, 0, 0, time.UTC)
		h.State = TaskState(st)
		out = append(out, h)
	}
	return out, rows.Err()
}
