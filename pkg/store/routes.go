package store

import (
	"context"
	"fmt"
)

// Route is where a USP agent was last reached over a broker.
type Route struct {
	DeviceID string
	Address  string
}

// FindUSPRoutes returns, in ID order after the cursor, the USP agents that
// are online and were last reached over transport ("mqtt", "stomp"), with
// their address, at most limit of them; more tells whether others follow.
// A range scan of devices_online_idx (online, id).
func (s *Store) FindUSPRoutes(ctx context.Context, transport, after string, limit int) (routes []Route, more bool, err error) {
	if limit <= 0 || limit > MaxPageSize {
		limit = MaxPageSize
	}
	rows, err := s.pool.Query(ctx, `SELECT id, address FROM devices
		WHERE online AND id > $2 AND protocol = 'usp' AND transport = $1 AND address <> ''
		ORDER BY id LIMIT $3`, transport, after, limit+1)
	if err != nil {
		return nil, false, fmt.Errorf("store: usp routes: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var r Route
		if err := rows.Scan(&r.DeviceID, &r.Address); err != nil {
			return nil, false, err
		}
		routes = append(routes, r)
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("store: usp routes: %w", err)
	}
	if len(routes) > limit {
		return routes[:limit], true, nil
	}
	return routes, false, nil
}
