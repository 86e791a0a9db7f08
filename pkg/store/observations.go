package store

import (
	"context"
	"fmt"
)

// FindTaskIDs returns which of ids are tasks. The registry uses it to
// leave the caching of a task's result to the task queue, its one writer
// (issue 12 item 2).
func (s *Store) FindTaskIDs(ctx context.Context, ids []string) (map[string]bool, error) {
	out := map[string]bool{}
	if len(ids) == 0 {
		return out, nil
	}
	rows, err := s.pool.Query(ctx, "SELECT id FROM tasks WHERE id = ANY($1::text[])", ids)
	if err != nil {
		return nil, fmt.Errorf("store: find task ids: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("store: find task ids: %w", err)
		}
		out[id] = true
	}
	return out, rows.Err()
}
