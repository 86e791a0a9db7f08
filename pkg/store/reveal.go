package store

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// AuditSecretReveal records that actor was shown the cached values of
// secret parameters of a device (issue 15 §9). The paths are recorded,
// never the values.
func (s *Store) AuditSecretReveal(ctx context.Context, actor, deviceID string, paths []string) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		return audit(ctx, tx, actor, "reveal_secrets", "device", deviceID, nil, map[string]any{"paths": paths})
	})
}
