package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// OverdueDevice is an online CPE that missed its inform schedule.
type OverdueDevice struct {
	ID       string
	LastSeen time.Time
	// Interval is its PeriodicInformInterval (0 = unknown).
	Interval time.Duration
	// Deadline is when it became overdue.
	Deadline time.Time
}

// PresenceRule says when an online CPE is overdue: no session for its
// PeriodicInformInterval × Tolerance + Grace, or for Unknown when its
// interval is not known.
type PresenceRule struct {
	Tolerance float64
	Grace     time.Duration
	Unknown   time.Duration
}

// OverdueCursor continues FindOverdueCWMP after the last device of a page.
type OverdueCursor struct {
	LastSeen time.Time
	ID       string
}

// FindOverdueCWMP returns, oldest first (last_seen, id), at most limit
// online CWMP devices overdue at now under rule, after the cursor (nil
// for the first page). A range scan of devices_cwmp_online_seen_idx
// bounded by the shortest possible window (Grace), each row then checked
// against its own deadline.
func (s *Store) FindOverdueCWMP(ctx context.Context, now time.Time, rule PresenceRule, after *OverdueCursor, limit int) ([]OverdueDevice, error) {
	var afterSeen time.Time
	afterID := ""
	if after != nil {
		afterSeen, afterID = after.LastSeen, after.ID
	}
	rows, err := s.pool.Query(ctx, `SELECT id, last_seen, inform_interval, deadline FROM (
			SELECT id, last_seen, inform_interval,
				last_seen + CASE WHEN inform_interval > 0
					THEN make_interval(secs => inform_interval * $2::float8) + $3::interval
					ELSE $4::interval END AS deadline
			FROM devices
			WHERE protocol = 'cwmp' AND online AND last_seen < $1::timestamptz - $3::interval
			  AND (last_seen, id) > ($6::timestamptz, $7::text)) o
		WHERE deadline <= $1
		ORDER BY last_seen, id LIMIT $5`, now, rule.Tolerance, rule.Grace, rule.Unknown, limit, afterSeen, afterID)
	if err != nil {
		return nil, fmt.Errorf("store: overdue cpes: %w", err)
	}
	defer rows.Close()
	var out []OverdueDevice
	for rows.Next() {
		var d OverdueDevice
		var secs int
		if err := rows.Scan(&d.ID, &d.LastSeen, &secs, &d.Deadline); err != nil {
			return nil, err
		}
		d.Interval = time.Duration(secs) * time.Second
		out = append(out, d)
	}
	return out, rows.Err()
}

// InformSchedule is what the registry knows of one CPE's schedule.
type InformSchedule struct {
	Online   bool
	LastSeen time.Time
	Interval time.Duration
}

// FindInformSchedule returns a CWMP device's presence facts; ok is false
// for an unknown device or a USP one.
func (s *Store) FindInformSchedule(ctx context.Context, id string) (sch InformSchedule, ok bool, err error) {
	var secs int
	err = s.pool.QueryRow(ctx, `SELECT online, last_seen, inform_interval FROM devices WHERE id = $1 AND protocol = 'cwmp'`, id).
		Scan(&sch.Online, &sch.LastSeen, &secs)
	if err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return sch, false, nil
		}
		return sch, false, fmt.Errorf("store: inform schedule: %w", err)
	}
	sch.Interval = time.Duration(secs) * time.Second
	return sch, true, nil
}
