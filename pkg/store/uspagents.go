package store

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/usp"
)

// Audit object types of USP agent identities.
const (
	AuditUSPAgentSecret   = "usp_agent_secret"
	AuditUSPEnrolmentKey  = "usp_enrolment_key"
	AuditUSPAgentDecision = "usp_agent_admission"
)

// MinAgentSecretLen is the shortest per-agent secret accepted from an
// operator; generated ones carry 256 random bits. The hash is fast (one
// SHA-256 on every broker login, migration 0070), so a secret must not
// be guessable.
const MinAgentSecretLen = 20

// maxAgentSecretLen bounds what we hash.
const maxAgentSecretLen = 256

// MaxEnrolmentPatternLen bounds an enrolment or allow-list pattern.
const MaxEnrolmentPatternLen = 256

func hashAgentSecret(eid, secret string) []byte {
	h := sha256.New()
	h.Write([]byte(eid))
	h.Write([]byte{0})
	h.Write([]byte(secret))
	return h.Sum(nil)
}

// USPAgentSecret is what the API shows of an agent's secret: never the
// secret or its hash.
type USPAgentSecret struct {
	EndpointID string    `json:"endpoint_id"`
	CreatedAt  time.Time `json:"created_at"`
	CreatedBy  string    `json:"created_by"`
}

// SetUSPAgentSecret stores (or replaces: rotation) the secret of agent
// eid. An empty secret generates one, which is returned; a given one must
// be MinAgentSecretLen characters at least. Audited without the secret.
func (s *Store) SetUSPAgentSecret(ctx context.Context, actor, eid, secret string) (USPAgentSecret, string, error) {
	if err := checkActor(actor); err != nil {
		return USPAgentSecret{}, "", err
	}
	if err := devicemodel.ValidateDeviceID(eid); err != nil {
		return USPAgentSecret{}, "", err
	}
	if secret == "" {
		secret = NewTokenSecret()[len(tokenPrefix):]
	}
	if len(secret) < MinAgentSecretLen || len(secret) > maxAgentSecretLen {
		return USPAgentSecret{}, "", devicemodel.Errorf(devicemodel.CodeInvalidArgument,
			"an agent secret has %d to %d characters (omit it to have one generated)", MinAgentSecretLen, maxAgentSecretLen)
	}
	out := USPAgentSecret{EndpointID: eid, CreatedBy: actor}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var existed bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM usp_agent_secrets WHERE endpoint_id = $1)`, eid).Scan(&existed); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, `INSERT INTO usp_agent_secrets (endpoint_id, hash, created_by) VALUES ($1, $2, $3)
			ON CONFLICT (endpoint_id) DO UPDATE SET hash = EXCLUDED.hash, created_by = EXCLUDED.created_by, created_at = now()
			RETURNING created_at`, eid, hashAgentSecret(eid, secret), actor).Scan(&out.CreatedAt); err != nil {
			return err
		}
		if existed {
			return audit(ctx, tx, actor, AuditUpdate, AuditUSPAgentSecret, eid, map[string]bool{"secret_set": true}, map[string]bool{"secret_set": true, "rotated": true})
		}
		return audit(ctx, tx, actor, AuditCreate, AuditUSPAgentSecret, eid, nil, map[string]bool{"secret_set": true})
	})
	if err != nil {
		return USPAgentSecret{}, "", fmt.Errorf("store: set agent secret: %w", err)
	}
	return out, secret, nil
}

// FindUSPAgentSecret says whether agent eid has a secret, or CodeNotFound.
func (s *Store) FindUSPAgentSecret(ctx context.Context, eid string) (USPAgentSecret, error) {
	out := USPAgentSecret{EndpointID: eid}
	err := s.pool.QueryRow(ctx, `SELECT created_at, created_by FROM usp_agent_secrets WHERE endpoint_id = $1`, eid).Scan(&out.CreatedAt, &out.CreatedBy)
	if errors.Is(err, pgx.ErrNoRows) {
		return out, devicemodel.Errorf(devicemodel.CodeNotFound, "agent %q has no secret", eid)
	}
	return out, err
}

// DeleteUSPAgentSecret removes agent eid's secret: its next login fails
// (unless an enrolment key covers it). Audited.
func (s *Store) DeleteUSPAgentSecret(ctx context.Context, actor, eid string) error {
	if err := checkActor(actor); err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM usp_agent_secrets WHERE endpoint_id = $1`, eid)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return devicemodel.Errorf(devicemodel.CodeNotFound, "agent %q has no secret", eid)
		}
		return audit(ctx, tx, actor, AuditDelete, AuditUSPAgentSecret, eid, map[string]bool{"secret_set": true}, nil)
	})
}

// USPEnrolmentKey is an enrolment key as the API shows it: never the key.
type USPEnrolmentKey struct {
	ID        string    `json:"id"`
	Pattern   string    `json:"pattern"`
	CreatedAt time.Time `json:"created_at"`
	CreatedBy string    `json:"created_by"`
}

// CreateUSPEnrolmentKey generates an enrolment key for the endpoint IDs
// matching pattern and returns it once: an agent of the pattern then logs
// in with usp.EnrolmentPassword(key, its endpoint ID). The key is stored
// sealed with ck (DUET_CREDENTIALS_KEY). Audited without the key.
func (s *Store) CreateUSPEnrolmentKey(ctx context.Context, actor string, ck *CredentialKey, pattern string) (USPEnrolmentKey, string, error) {
	if ck == nil {
		return USPEnrolmentKey{}, "", devicemodel.Errorf(devicemodel.CodeUnavailable, "no credentials key is configured")
	}
	if err := checkActor(actor); err != nil {
		return USPEnrolmentKey{}, "", err
	}
	if err := ValidateEndpointPattern(pattern); err != nil {
		return USPEnrolmentKey{}, "", err
	}
	key := NewTokenSecret()[len(tokenPrefix):]
	out := USPEnrolmentKey{ID: newID("enr"), Pattern: pattern, CreatedBy: actor}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `INSERT INTO usp_enrolment_keys (id, pattern, key_sealed, created_by) VALUES ($1, $2, $3, $4) RETURNING created_at`,
			out.ID, pattern, ck.Seal(out.ID, key), actor).Scan(&out.CreatedAt); err != nil {
			if strings.Contains(err.Error(), "usp_enrolment_keys_pattern_key") {
				return devicemodel.Errorf(devicemodel.CodeConflict, "an enrolment key for %q exists: delete it first to rotate", pattern)
			}
			return err
		}
		return audit(ctx, tx, actor, AuditCreate, AuditUSPEnrolmentKey, out.ID, nil, map[string]string{"pattern": pattern})
	})
	if err != nil {
		var de *devicemodel.Error
		if errors.As(err, &de) {
			return USPEnrolmentKey{}, "", err
		}
		return USPEnrolmentKey{}, "", fmt.Errorf("store: create enrolment key: %w", err)
	}
	return out, key, nil
}

// ValidateEndpointPattern checks an enrolment or allow-list pattern: an
// endpoint ID with '*' wildcards, not only wildcards.
func ValidateEndpointPattern(p string) error {
	if p == "" || len(p) > MaxEnrolmentPatternLen || strings.Trim(p, "*") == "" {
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument,
			"pattern %q: an endpoint ID with '*' wildcards (for example os::012345-*), at most %d characters, not only '*'", p, MaxEnrolmentPatternLen)
	}
	if err := devicemodel.ValidateDeviceID(strings.ReplaceAll(p, "*", "x")); err != nil {
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "pattern %q: %s", p, devicemodel.ErrorMessage(err))
	}
	return nil
}

// ListUSPEnrolmentKeys lists the enrolment keys, without the keys.
func (s *Store) ListUSPEnrolmentKeys(ctx context.Context) ([]USPEnrolmentKey, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, pattern, created_at, created_by FROM usp_enrolment_keys ORDER BY pattern`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (USPEnrolmentKey, error) {
		var k USPEnrolmentKey
		err := r.Scan(&k.ID, &k.Pattern, &k.CreatedAt, &k.CreatedBy)
		return k, err
	})
}

// DeleteUSPEnrolmentKey removes an enrolment key: agents whose only
// credential it was can no longer log in. Audited.
func (s *Store) DeleteUSPEnrolmentKey(ctx context.Context, actor, id string) error {
	if err := checkActor(actor); err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var pattern string
		err := tx.QueryRow(ctx, `DELETE FROM usp_enrolment_keys WHERE id = $1 RETURNING pattern`, id).Scan(&pattern)
		if errors.Is(err, pgx.ErrNoRows) {
			return devicemodel.Errorf(devicemodel.CodeNotFound, "enrolment key %q not found", id)
		}
		if err != nil {
			return err
		}
		return audit(ctx, tx, actor, AuditDelete, AuditUSPEnrolmentKey, id, map[string]string{"pattern": pattern}, nil)
	})
}

// CheckUSPAgentSecret reports whether secret proves the identity eid: it
// is eid's own secret, or, when eid has none, the enrolment password of a
// key whose pattern eid matches. ck may be nil (no enrolment keys then).
func (s *Store) CheckUSPAgentSecret(ctx context.Context, ck *CredentialKey, eid, secret string) (bool, error) {
	if eid == "" || secret == "" || len(secret) > maxAgentSecretLen {
		return false, nil
	}
	var hash []byte
	err := s.pool.QueryRow(ctx, `SELECT hash FROM usp_agent_secrets WHERE endpoint_id = $1`, eid).Scan(&hash)
	switch {
	case err == nil:
		return subtle.ConstantTimeCompare(hash, hashAgentSecret(eid, secret)) == 1, nil
	case !errors.Is(err, pgx.ErrNoRows):
		return false, err
	}
	if ck == nil {
		return false, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT id, pattern, key_sealed FROM usp_enrolment_keys`)
	if err != nil {
		return false, err
	}
	type keyRow struct {
		id, pattern string
		sealed      []byte
	}
	keys, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (keyRow, error) {
		var k keyRow
		err := r.Scan(&k.id, &k.pattern, &k.sealed)
		return k, err
	})
	if err != nil {
		return false, err
	}
	for _, k := range keys {
		if !usp.MatchEndpointPattern(k.pattern, eid) {
			continue
		}
		key, err := ck.Open(k.id, k.sealed)
		if err != nil {
			return false, err
		}
		if subtle.ConstantTimeCompare([]byte(usp.EnrolmentPassword(key, eid)), []byte(secret)) == 1 {
			return true, nil
		}
	}
	return false, nil
}

// Admission states of an endpoint ID (DUET_USP_ADMISSION).
const (
	AdmissionPending  = "pending"
	AdmissionApproved = "approved"
	AdmissionRejected = "rejected"
)

// MaxPendingAgents bounds the agents held for approval: past it, further
// unknown endpoint IDs are refused without a row, so a stream of made-up
// endpoint IDs cannot fill the table (CONTRIBUTING.md, habit 8).
const MaxPendingAgents = 10_000

// USPAdmission is one endpoint ID held, approved or rejected.
type USPAdmission struct {
	EndpointID string     `json:"endpoint_id"`
	State      string     `json:"state"`
	MTP        string     `json:"mtp"`
	Peer       string     `json:"peer,omitempty"`
	FirstSeen  time.Time  `json:"first_seen"`
	LastSeen   time.Time  `json:"last_seen"`
	Attempts   int64      `json:"attempts"`
	DecidedBy  *string    `json:"decided_by,omitempty"`
	DecidedAt  *time.Time `json:"decided_at,omitempty"`
}

// AdmissionState returns eid's admission state, "" when it has none.
func (s *Store) AdmissionState(ctx context.Context, eid string) (string, error) {
	var st string
	err := s.pool.QueryRow(ctx, `SELECT state FROM usp_agent_admission WHERE endpoint_id = $1`, eid).Scan(&st)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	return st, err
}

// KnownUSPAgent reports whether eid is a device of the registry or has a
// secret: such an agent is not "unknown" to admission.
func (s *Store) KnownUSPAgent(ctx context.Context, eid string) (bool, error) {
	var known bool
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM devices WHERE id = $1) OR EXISTS (SELECT 1 FROM usp_agent_secrets WHERE endpoint_id = $1)`, eid).Scan(&known)
	return known, err
}

// HoldUSPAgent records an attempt of the unknown eid: a new pending row
// (while fewer than MaxPendingAgents are pending), or the attempt counted
// on its row. It returns the state ("" when the table was full).
func (s *Store) HoldUSPAgent(ctx context.Context, eid, mtp, peer string) (string, error) {
	var st string
	err := s.pool.QueryRow(ctx, `
		WITH upd AS (
			UPDATE usp_agent_admission SET last_seen = now(), attempts = attempts + 1, mtp = $2, peer = $3
			WHERE endpoint_id = $1 RETURNING state
		), ins AS (
			INSERT INTO usp_agent_admission (endpoint_id, state, mtp, peer)
			SELECT $1, 'pending', $2, $3
			WHERE NOT EXISTS (SELECT 1 FROM upd)
			  AND (SELECT count(*) FROM usp_agent_admission WHERE state = 'pending') < $4
			ON CONFLICT (endpoint_id) DO NOTHING
			RETURNING state
		)
		SELECT state FROM upd UNION ALL SELECT state FROM ins`, eid, mtp, peer, MaxPendingAgents).Scan(&st)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	return st, err
}

// ListUSPAdmission lists endpoint IDs in state (all when ""), oldest
// first, at most limit, after the endpoint ID after (paging).
func (s *Store) ListUSPAdmission(ctx context.Context, state string, limit int, after string) ([]USPAdmission, error) {
	rows, err := s.pool.Query(ctx, `SELECT endpoint_id, state, mtp, peer, first_seen, last_seen, attempts, decided_by, decided_at
		FROM usp_agent_admission WHERE ($1 = '' OR state = $1) AND endpoint_id > $2 ORDER BY endpoint_id LIMIT $3`, state, after, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (USPAdmission, error) {
		var a USPAdmission
		err := r.Scan(&a.EndpointID, &a.State, &a.MTP, &a.Peer, &a.FirstSeen, &a.LastSeen, &a.Attempts, &a.DecidedBy, &a.DecidedAt)
		return a, err
	})
}

// DecideUSPAgent approves or rejects eid (held or not: an operator may
// decide ahead of the agent's first contact). Audited.
func (s *Store) DecideUSPAgent(ctx context.Context, actor, eid string, approve bool) (USPAdmission, error) {
	if err := checkActor(actor); err != nil {
		return USPAdmission{}, err
	}
	if err := devicemodel.ValidateDeviceID(eid); err != nil {
		return USPAdmission{}, err
	}
	state := AdmissionRejected
	if approve {
		state = AdmissionApproved
	}
	var out USPAdmission
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var before *string
		if err := tx.QueryRow(ctx, `SELECT state FROM usp_agent_admission WHERE endpoint_id = $1 FOR UPDATE`, eid).Scan(&before); err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		if err := tx.QueryRow(ctx, `INSERT INTO usp_agent_admission (endpoint_id, state, attempts, decided_by, decided_at) VALUES ($1, $2, 0, $3, now())
			ON CONFLICT (endpoint_id) DO UPDATE SET state = EXCLUDED.state, decided_by = EXCLUDED.decided_by, decided_at = EXCLUDED.decided_at
			RETURNING endpoint_id, state, mtp, peer, first_seen, last_seen, attempts, decided_by, decided_at`, eid, state, actor).
			Scan(&out.EndpointID, &out.State, &out.MTP, &out.Peer, &out.FirstSeen, &out.LastSeen, &out.Attempts, &out.DecidedBy, &out.DecidedAt); err != nil {
			return err
		}
		var b any
		if before != nil {
			b = map[string]string{"state": *before}
		}
		return audit(ctx, tx, actor, AuditUpdate, AuditUSPAgentDecision, eid, b, map[string]string{"state": state})
	})
	if err != nil {
		return USPAdmission{}, fmt.Errorf("store: decide agent: %w", err)
	}
	return out, nil
}
