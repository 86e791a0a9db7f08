package store

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// PolicyListing is a policy as a list shows it: with its group's name and
// its rollout's state ("" when it was never enabled).
type PolicyListing struct {
	Policy
	GroupName    string
	RolloutState string
}

// ListPolicies returns one page of every group's policies, ordered by ID,
// and the next cursor ("" on the last page).
func (s *Store) ListPolicies(ctx context.Context, f PageFilter) ([]PolicyListing, string, error) {
	limit := f.limit()
	rows, err := s.pool.Query(ctx, `SELECT p.id, p.group_id, p.name, p.priority, p.kind, p.spec, p.enabled, p.revision,
		p.created_at, p.updated_at, g.name, COALESCE(r.state, '')
		FROM policies p JOIN groups g ON g.id = p.group_id LEFT JOIN rollouts r ON r.policy_id = p.id
		WHERE p.id > $1 ORDER BY p.id LIMIT $2`, f.After, limit+1)
	if err != nil {
		return nil, "", fmt.Errorf("store: list policies: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (PolicyListing, error) {
		var l PolicyListing
		var spec []byte
		err := row.Scan(&l.ID, &l.GroupID, &l.Name, &l.Priority, &l.Kind, &spec, &l.Enabled, &l.Revision,
			&l.CreatedAt, &l.UpdatedAt, &l.GroupName, &l.RolloutState)
		l.Spec = spec
		return l, err
	})
	if err != nil {
		return nil, "", fmt.Errorf("store: list policies: %w", err)
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		next = EncodeCursor(out[limit-1].ID)
	}
	return out, next, nil
}
