package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/duet-dm/duet/pkg/devicemodel"
)

// AuditToken is the audit log's object type for an API token made or
// revoked in the console (never its secret or hash).
const AuditToken = "token"

type tokenAudit struct {
	ID      string `json:"id"`
	Name    string `json:"name"`
	Role    Role   `json:"role"`
	Revoked bool   `json:"revoked"`
}

// CreateTokenAs is CreateToken recorded in the audit log as made by
// actor.
func (s *Store) CreateTokenAs(ctx context.Context, actor, name string, role Role) (Token, string, error) {
	if err := checkActor(actor); err != nil {
		return Token{}, "", err
	}
	secret := NewTokenSecret()
	var t Token
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		if t, err = s.insertToken(ctx, tx, name, role, secret); err != nil {
			return err
		}
		return audit(ctx, tx, actor, AuditCreate, AuditToken, t.ID, nil, tokenAudit{ID: t.ID, Name: t.Name, Role: t.Role})
	})
	if err != nil {
		return Token{}, "", err
	}
	return t, secret, nil
}

// RevokeTokenAs is RevokeToken recorded in the audit log as done by actor
// (revoking a revoked token changes and records nothing).
func (s *Store) RevokeTokenAs(ctx context.Context, actor, id string) error {
	if err := checkActor(actor); err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var t Token
		var role string
		err := tx.QueryRow(ctx, `SELECT id, name, role, revoked_at FROM api_tokens WHERE id = $1 FOR UPDATE`, id).Scan(&t.ID, &t.Name, &role, &t.RevokedAt)
		if errors.Is(err, pgx.ErrNoRows) {
			return devicemodel.Errorf(devicemodel.CodeNotFound, "token %q not found", id)
		}
		if err != nil {
			return fmt.Errorf("store: revoke token: %w", err)
		}
		if t.RevokedAt != nil {
			return nil
		}
		if _, err := tx.Exec(ctx, `UPDATE api_tokens SET revoked_at = now() WHERE id = $1`, id); err != nil {
			return fmt.Errorf("store: revoke token: %w", err)
		}
		before := tokenAudit{ID: t.ID, Name: t.Name, Role: Role(role)}
		after := before
		after.Revoked = true
		return audit(ctx, tx, actor, AuditUpdate, AuditToken, id, before, after)
	})
}
