package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"
)

// Installation is this installation's identity (migration 0073).
type Installation struct {
	// ID is 16 lower-case hex digits, generated once.
	ID string
	// CreatedAt is when the ID was generated: a new installation's
	// consumer reads the events published since (less a margin).
	CreatedAt time.Time
	// AdoptLegacyConsumer is true until the controller has taken over the
	// position of the consumer older releases used ("duet-controller").
	AdoptLegacyConsumer bool
}

// Installation reads this installation's identity, generating the ID on
// first use.
func (s *Store) Installation(ctx context.Context) (Installation, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return Installation{}, err
	}
	// Controllers starting together: the first UPDATE wins, the others
	// find its ID.
	if _, err := s.pool.Exec(ctx, `UPDATE installation SET id = $1, created_at = now() WHERE id IS NULL`, hex.EncodeToString(b[:])); err != nil {
		return Installation{}, fmt.Errorf("store: installation: %w", err)
	}
	var in Installation
	err := s.pool.QueryRow(ctx, `SELECT id, created_at, adopt_legacy_consumer FROM installation`).Scan(&in.ID, &in.CreatedAt, &in.AdoptLegacyConsumer)
	if err != nil {
		return in, fmt.Errorf("store: installation: %w", err)
	}
	return in, nil
}

// LegacyConsumerAdopted records that the legacy consumer's position was
// taken over (or that there was none), so it is never looked for again.
func (s *Store) LegacyConsumerAdopted(ctx context.Context) error {
	_, err := s.pool.Exec(ctx, `UPDATE installation SET adopt_legacy_consumer = false`)
	if err != nil {
		return fmt.Errorf("store: installation: %w", err)
	}
	return nil
}
