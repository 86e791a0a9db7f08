package store

import (
	"context"
	"fmt"
	"time"
)

// TaskStateCount is how many tasks ended in a state.
type TaskStateCount struct {
	State TaskState
	Tasks int
}

// CountTaskOutcomes counts the tasks that finished since since, by final
// state (the console's overview: task outcomes over 24 h).
func (s *Store) CountTaskOutcomes(ctx context.Context, since time.Time) ([]TaskStateCount, error) {
	rows, err := s.pool.Query(ctx, `SELECT state, count(*) FROM tasks
		WHERE finished_at >= $1 AND state NOT IN ('queued', 'dispatched') GROUP BY state ORDER BY state`, since)
	if err != nil {
		return nil, fmt.Errorf("store: count task outcomes: %w", err)
	}
	defer rows.Close()
	var out []TaskStateCount
	for rows.Next() {
		var o TaskStateCount
		var st string
		if err := rows.Scan(&st, &o.Tasks); err != nil {
			return nil, fmt.Errorf("store: count task outcomes: %w", err)
		}
		o.State = TaskState(st)
		out = append(out, o)
	}
	return out, rows.Err()
}

// VersionCount is how many devices run a software version.
type VersionCount struct {
	ProductClass    string
	SoftwareVersion string
	Devices         int
}

// TopSoftwareVersions returns the n most common (product class, software
// version) pairs, most devices first.
func (s *Store) TopSoftwareVersions(ctx context.Context, n int) ([]VersionCount, error) {
	rows, err := s.pool.Query(ctx, `SELECT product_class, software_version, count(*) FROM devices
		GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2 LIMIT $1`, n)
	if err != nil {
		return nil, fmt.Errorf("store: top software versions: %w", err)
	}
	defer rows.Close()
	var out []VersionCount
	for rows.Next() {
		var v VersionCount
		if err := rows.Scan(&v.ProductClass, &v.SoftwareVersion, &v.Devices); err != nil {
			return nil, fmt.Errorf("store: top software versions: %w", err)
		}
		out = append(out, v)
	}
	return out, rows.Err()
}
