package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duet-dm/duet/pkg/devicemodel"
)

// Role is what an API token may do.
type Role string

// Roles, from most to least powerful.
const (
	RoleAdmin    Role = "admin"    // everything
	RoleOperator Role = "operator" // everything a device needs: read, create tasks, cancel
	RoleViewer   Role = "viewer"   // read only (GET)
)

// ParseRole checks a role name.
func ParseRole(s string) (Role, error) {
	switch Role(s) {
	case RoleAdmin, RoleOperator, RoleViewer:
		return Role(s), nil
	}
	return "", devicemodel.Errorf(devicemodel.CodeInvalidArgument, "role %q is not one of admin, operator, viewer", s)
}

// Token is an API token as stored: never the secret itself.
type Token struct {
	ID        string     `json:"id"`
	Name      string     `json:"name"`
	Role      Role       `json:"role"`
	CreatedAt time.Time  `json:"created_at"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
}

// MinTokenLen is the shortest secret accepted from configuration
// (DUET_ADMIN_TOKEN); generated ones are 48 characters.
const MinTokenLen = 24

// tokenPrefix makes Duet tokens recognisable to secret scanners.
const tokenPrefix = "duet_"

// NewTokenSecret returns a fresh random token: 32 bytes from crypto/rand.
func NewTokenSecret() string {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return tokenPrefix + base64.RawURLEncoding.EncodeToString(b[:])
}

// hashToken is SHA-256, not a password hash: a token carries 256 random
// bits, so no dictionary or brute force applies, and a fast hash keeps the
// per-request lookup a single index probe instead of a deliberate
// 100 ms bcrypt on every API call.
func hashToken(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

func newTokenID() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return fmt.Sprintf("tok_%x", b)
}

// CreateToken stores a new token and returns it with its secret, which is
// shown once and never again.
func (s *Store) CreateToken(ctx context.Context, name string, role Role) (Token, string, error) {
	secret := NewTokenSecret()
	t, err := s.insertToken(ctx, s.pool, name, role, secret)
	return t, secret, err
}

type execQuerier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func (s *Store) insertToken(ctx context.Context, q execQuerier, name string, role Role, secret string) (Token, error) {
	if name == "" {
		return Token{}, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "a token needs a name")
	}
	if _, err := ParseRole(string(role)); err != nil {
		return Token{}, err
	}
	t := Token{ID: newTokenID(), Name: name, Role: role}
	err := q.QueryRow(ctx, `INSERT INTO api_tokens (id, name, role, hash) VALUES ($1, $2, $3, $4) RETURNING created_at`,
		t.ID, name, string(role), hashToken(secret)).Scan(&t.CreatedAt)
	if err != nil {
		return Token{}, fmt.Errorf("store: create token: %w", err)
	}
	return t, nil
}

// EnsureAdminToken runs at start-up. With configured set (DUET_ADMIN_TOKEN)
// it makes sure that token exists as an admin token (a token revoked
// earlier stays revoked: configuration does not undo a revocation) and
// returns "". Otherwise, when the database has no token at all, it creates
// an admin token and returns its secret for the caller to print once.
// Concurrent starts create at most one token (advisory lock).
func (s *Store) EnsureAdminToken(ctx context.Context, configured string) (string, error) {
	if configured != "" && len(configured) < MinTokenLen {
		return "", devicemodel.Errorf(devicemodel.CodeInvalidArgument, "admin token is shorter than %d characters", MinTokenLen)
	}
	var created string
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLockKey+1); err != nil {
			return err
		}
		if configured != "" {
			var exists bool
			if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM api_tokens WHERE hash = $1)", hashToken(configured)).Scan(&exists); err != nil {
				return err
			}
			if !exists {
				_, err := s.insertToken(ctx, tx, "admin (DUET_ADMIN_TOKEN)", RoleAdmin, configured)
				return err
			}
			return nil
		}
		var n int
		if err := tx.QueryRow(ctx, "SELECT count(*) FROM api_tokens").Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return nil
		}
		secret := NewTokenSecret()
		if _, err := s.insertToken(ctx, tx, "admin (first start)", RoleAdmin, secret); err != nil {
			return err
		}
		created = secret
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("store: ensure admin token: %w", err)
	}
	return created, nil
}

// FindTokenBySecret returns the live token with this secret, or a
// CodeUnauthenticated error when there is none or it was revoked.
func (s *Store) FindTokenBySecret(ctx context.Context, secret string) (Token, error) {
	var t Token
	var role string
	err := s.pool.QueryRow(ctx, `SELECT id, name, role, created_at, revoked_at FROM api_tokens WHERE hash = $1`,
		hashToken(secret)).Scan(&t.ID, &t.Name, &role, &t.CreatedAt, &t.RevokedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return t, devicemodel.Errorf(devicemodel.CodeUnauthenticated, "unknown token")
	}
	if err != nil {
		return t, fmt.Errorf("store: find token: %w", err)
	}
	t.Role = Role(role)
	if t.RevokedAt != nil {
		return t, devicemodel.Errorf(devicemodel.CodeUnauthenticated, "token revoked")
	}
	return t, nil
}

// ListTokens returns every token, revoked ones included, oldest first.
func (s *Store) ListTokens(ctx context.Context) ([]Token, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, name, role, created_at, revoked_at FROM api_tokens ORDER BY created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("store: list tokens: %w", err)
	}
	defer rows.Close()
	var out []Token
	for rows.Next() {
		var t Token
		var role string
		if err := rows.Scan(&t.ID, &t.Name, &role, &t.CreatedAt, &t.RevokedAt); err != nil {
			return nil, err
		}
		t.Role = Role(role)
		out = append(out, t)
	}
	return out, rows.Err()
}

// RevokeToken revokes a token by ID: CodeNotFound when there is no such
// token; revoking twice is not an error.
func (s *Store) RevokeToken(ctx context.Context, id string) error {
	tag, err := s.pool.Exec(ctx, `UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("store: revoke token: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return devicemodel.Errorf(devicemodel.CodeNotFound, "token %q not found", id)
	}
	return nil
}
