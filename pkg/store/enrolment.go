package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duet-dm/duet/pkg/devicemodel"
)

// Enrolment states (migrations/0095_cwmp_enrolment.sql). A device with no
// row is on the shared credentials ("shared" in the API).
const (
	EnrolmentPending  = "pending"
	EnrolmentEnrolled = "enrolled"
	EnrolmentFailed   = "failed"
)

// AuditEnrolment is the audit log's object type for a device's credential
// enrolment; the object ID is the device ID.
const AuditEnrolment = "cwmp_enrolment"

// Enrolment is what is stored of a device's credential enrolment: no
// secret in clear.
type Enrolment struct {
	DeviceID                  string
	State                     string
	Reason                    string
	Username                  string
	Realm                     string
	DigestHA1                 string
	ConnectionRequestUsername string
	TaskID                    string
	SetAt                     *time.Time
	OldSessions               int
	Attempts                  int
	UpdatedAt                 time.Time
}

// enrolmentAudit is what the audit log keeps of an enrolment: never a
// password, a hash or a ciphertext.
type enrolmentAudit struct {
	State       string `json:"state"`
	Reason      string `json:"reason,omitempty"`
	TaskID      string `json:"task_id,omitempty"`
	OldSessions int    `json:"old_sessions,omitempty"`
}

func (e Enrolment) audit() *enrolmentAudit {
	return &enrolmentAudit{State: e.State, Reason: e.Reason, TaskID: e.TaskID, OldSessions: e.OldSessions}
}

const enrolmentColumns = `device_id, state, reason, username, realm, digest_ha1, conn_req_username,
	coalesce(task_id, ''), set_at, old_sessions, attempts, updated_at`

func scanEnrolment(row pgx.Row) (Enrolment, error) {
	var e Enrolment
	err := row.Scan(&e.DeviceID, &e.State, &e.Reason, &e.Username, &e.Realm, &e.DigestHA1, &e.ConnectionRequestUsername,
		&e.TaskID, &e.SetAt, &e.OldSessions, &e.Attempts, &e.UpdatedAt)
	return e, err
}

// FindEnrolment returns a device's enrolment, or CodeNotFound when Duet
// never tried to enrol it.
func (s *Store) FindEnrolment(ctx context.Context, deviceID string) (Enrolment, error) {
	e, err := scanEnrolment(s.pool.QueryRow(ctx, `SELECT `+enrolmentColumns+` FROM cwmp_enrolments WHERE device_id = $1`, deviceID))
	if errors.Is(err, pgx.ErrNoRows) {
		return e, devicemodel.Errorf(devicemodel.CodeNotFound, "no credential enrolment for device %q", deviceID)
	}
	if err != nil {
		return e, fmt.Errorf("store: find enrolment: %w", err)
	}
	return e, nil
}

// lockEnrolment reads and locks a device's enrolment in tx; found is false
// when there is none.
func lockEnrolment(ctx context.Context, tx pgx.Tx, deviceID string) (e Enrolment, found bool, err error) {
	e, err = scanEnrolment(tx.QueryRow(ctx, `SELECT `+enrolmentColumns+` FROM cwmp_enrolments WHERE device_id = $1 FOR UPDATE`, deviceID))
	if errors.Is(err, pgx.ErrNoRows) {
		return e, false, nil
	}
	return e, err == nil, err
}

// BeginEnrolment stores new pending credentials for a device: the HA1 of
// the ACS password for realm, that password and the connection-request
// password sealed with key (the Set has to carry them). It refuses
// (CodeConflict) when the device holds per-device credentials, or an
// enrolment that is not failed, except, with replace, a pending one whose
// Set the CPE has not accepted (an operator's new try). Audited under actor.
func (s *Store) BeginEnrolment(ctx context.Context, actor string, key *CredentialKey, realm, deviceID string, in CredentialsInput, replace bool) (Enrolment, error) {
	if key == nil {
		return Enrolment{}, devicemodel.Errorf(devicemodel.CodeUnavailable, "no credentials key is configured")
	}
	if err := checkActor(actor); err != nil {
		return Enrolment{}, err
	}
	if err := in.Validate(); err != nil {
		return Enrolment{}, err
	}
	var out Enrolment
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		creds, err := currentCredentialsAudit(ctx, tx, deviceID)
		if err != nil {
			return err
		}
		if creds != nil {
			return devicemodel.Errorf(devicemodel.CodeConflict, "device %q already has per-device credentials (delete them to enrol it again)", deviceID)
		}
		before, found, err := lockEnrolment(ctx, tx, deviceID)
		if err != nil {
			return err
		}
		if found && before.State != EnrolmentFailed && !(replace && before.State == EnrolmentPending && before.SetAt == nil) {
			return devicemodel.Errorf(devicemodel.CodeConflict, "device %q is already %s", deviceID, before.State)
		}
		out, err = scanEnrolment(tx.QueryRow(ctx, `
			INSERT INTO cwmp_enrolments (device_id, state, reason, username, realm, digest_ha1, password_sealed,
				conn_req_username, conn_req_password_sealed, task_id, set_at, old_sessions, attempts, updated_at)
			VALUES ($1, 'pending', '', $2, $3, $4, $5, $6, $7, NULL, NULL, 0, 1, now())
			ON CONFLICT (device_id) DO UPDATE SET state = 'pending', reason = '', username = EXCLUDED.username,
				realm = EXCLUDED.realm, digest_ha1 = EXCLUDED.digest_ha1, password_sealed = EXCLUDED.password_sealed,
				conn_req_username = EXCLUDED.conn_req_username, conn_req_password_sealed = EXCLUDED.conn_req_password_sealed,
				task_id = NULL, set_at = NULL, old_sessions = 0, attempts = cwmp_enrolments.attempts + 1, updated_at = now()
			RETURNING `+enrolmentColumns,
			deviceID, in.Username, realm, DigestHA1(in.Username, realm, in.Password), key.Seal(deviceID, in.Password),
			in.ConnectionRequestUsername, key.Seal(deviceID, in.ConnectionRequestPassword)))
		if err != nil {
			return err
		}
		var b any
		if found {
			b = before.audit()
		}
		return audit(ctx, tx, actor, AuditCreate, AuditEnrolment, deviceID, b, out.audit())
	})
	if err != nil {
		if devicemodel.ErrorCode(err) == devicemodel.CodeConflict {
			return Enrolment{}, err
		}
		return Enrolment{}, fmt.Errorf("store: begin enrolment: %w", err)
	}
	return out, nil
}

// EnrolmentTask records the task carrying a pending enrolment's Set.
func (s *Store) EnrolmentTask(ctx context.Context, deviceID, taskID string) error {
	_, err := s.pool.Exec(ctx, `UPDATE cwmp_enrolments SET task_id = $2, updated_at = now()
		WHERE device_id = $1 AND state = 'pending'`, deviceID, taskID)
	if err != nil {
		return fmt.Errorf("store: enrolment task: %w", err)
	}
	return nil
}

// EnrolmentSecrets opens the pending passwords of a device's enrolment for
// the Set that carries them. found is false when no Set is due (no pending
// enrolment, or the CPE answered it already).
func (s *Store) EnrolmentSecrets(ctx context.Context, key *CredentialKey, deviceID string) (e Enrolment, password, connReqPassword string, found bool, err error) {
	if key == nil {
		return e, "", "", false, nil
	}
	var sealed, crSealed []byte
	err = s.pool.QueryRow(ctx, `SELECT username, conn_req_username, password_sealed, conn_req_password_sealed
		FROM cwmp_enrolments WHERE device_id = $1 AND state = 'pending' AND password_sealed IS NOT NULL`, deviceID).
		Scan(&e.Username, &e.ConnectionRequestUsername, &sealed, &crSealed)
	if errors.Is(err, pgx.ErrNoRows) {
		return e, "", "", false, nil
	}
	if err != nil {
		return e, "", "", false, fmt.Errorf("store: enrolment secrets: %w", err)
	}
	if password, err = key.Open(deviceID, sealed); err != nil {
		return e, "", "", false, err
	}
	if connReqPassword, err = key.Open(deviceID, crSealed); err != nil {
		return e, "", "", false, err
	}
	return e, password, connReqPassword, true, nil
}

// EnrolmentSetAnswered records how the CPE answered the Set of enrolment
// task taskID: accepted (the clear password is no longer needed: only its
// HA1 stays), or refused (reason), which fails the enrolment. A task that
// is not the enrolment's current one changes nothing.
func (s *Store) EnrolmentSetAnswered(ctx context.Context, actor, deviceID, taskID string, accepted bool, reason string) (Enrolment, bool, error) {
	var out Enrolment
	changed := false
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		before, found, err := lockEnrolment(ctx, tx, deviceID)
		if err != nil || !found || before.State != EnrolmentPending || before.TaskID != taskID || before.SetAt != nil {
			return err
		}
		if !accepted {
			out, err = failEnrolment(ctx, tx, actor, before, reason)
			changed = err == nil
			return err
		}
		out, err = scanEnrolment(tx.QueryRow(ctx, `UPDATE cwmp_enrolments SET set_at = now(), password_sealed = NULL,
			updated_at = now() WHERE device_id = $1 RETURNING `+enrolmentColumns, deviceID))
		changed = err == nil
		return err
	})
	if err != nil {
		return out, false, fmt.Errorf("store: enrolment set answered: %w", err)
	}
	return out, changed, nil
}

// failEnrolment discards the pending credentials, keeping why.
func failEnrolment(ctx context.Context, tx pgx.Tx, actor string, before Enrolment, reason string) (Enrolment, error) {
	out, err := scanEnrolment(tx.QueryRow(ctx, `UPDATE cwmp_enrolments SET state = 'failed', reason = $2,
		username = '', realm = '', digest_ha1 = '', password_sealed = NULL, conn_req_username = '',
		conn_req_password_sealed = NULL, updated_at = now() WHERE device_id = $1 RETURNING `+enrolmentColumns, before.DeviceID, reason))
	if err != nil {
		return out, err
	}
	return out, audit(ctx, tx, actor, AuditUpdate, AuditEnrolment, before.DeviceID, before.audit(), out.audit())
}

// EnrolmentRules decide when a pending enrolment whose Set the CPE accepted
// is given up: after MaxOldSessions sessions authenticated with the old
// credentials, or the first such session Window after the Set.
type EnrolmentRules struct {
	MaxOldSessions int
	Window         time.Duration
}

// EnrolmentSession applies what one session's authentication says about a
// device's enrolment (docs/guide-cwmp.md, "Enrolment"):
//   - with the pending credentials: they become the device's credentials
//     (device_credentials, audited) and the enrolment is enrolled;
//   - with the old ones after the CPE accepted the Set: one more old
//     session; past the rules the enrolment fails and the pending
//     credentials are discarded.
//
// It returns the enrolment after the change and whether there was one.
func (s *Store) EnrolmentSession(ctx context.Context, actor, deviceID string, withPending bool, rules EnrolmentRules) (Enrolment, bool, error) {
	var out Enrolment
	changed := false
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		before, found, err := lockEnrolment(ctx, tx, deviceID)
		if err != nil || !found || before.State != EnrolmentPending {
			return err
		}
		if withPending {
			out, err = promoteEnrolment(ctx, tx, actor, before)
			changed = err == nil
			return err
		}
		if before.SetAt == nil {
			return nil // the Set is not answered yet: old credentials are expected
		}
		n := before.OldSessions + 1
		if n >= rules.MaxOldSessions || time.Since(*before.SetAt) >= rules.Window {
			reason := fmt.Sprintf("the CPE accepted the new credentials at %s but kept authenticating with its old ones (%d sessions since)",
				before.SetAt.UTC().Format(time.RFC3339), n)
			before.OldSessions = n
			out, err = failEnrolment(ctx, tx, actor, before, reason)
			changed = err == nil
			return err
		}
		out, err = scanEnrolment(tx.QueryRow(ctx, `UPDATE cwmp_enrolments SET old_sessions = $2, updated_at = now()
			WHERE device_id = $1 RETURNING `+enrolmentColumns, deviceID, n))
		changed = err == nil
		return err
	})
	if err != nil {
		return out, false, fmt.Errorf("store: enrolment session: %w", err)
	}
	return out, changed, nil
}

// promoteEnrolment makes the pending credentials the device's own.
func promoteEnrolment(ctx context.Context, tx pgx.Tx, actor string, before Enrolment) (Enrolment, error) {
	if _, err := tx.Exec(ctx, `
		INSERT INTO device_credentials (device_id, username, realm, digest_ha1, conn_req_username, conn_req_password_sealed, updated_at)
		SELECT device_id, username, realm, digest_ha1, conn_req_username, conn_req_password_sealed, now()
		FROM cwmp_enrolments WHERE device_id = $1
		ON CONFLICT (device_id) DO UPDATE SET username = EXCLUDED.username, realm = EXCLUDED.realm,
			digest_ha1 = EXCLUDED.digest_ha1, conn_req_username = EXCLUDED.conn_req_username,
			conn_req_password_sealed = EXCLUDED.conn_req_password_sealed, updated_at = now()`, before.DeviceID); err != nil {
		return Enrolment{}, err
	}
	out, err := scanEnrolment(tx.QueryRow(ctx, `UPDATE cwmp_enrolments SET state = 'enrolled', reason = '',
		digest_ha1 = '', password_sealed = NULL, conn_req_password_sealed = NULL, updated_at = now()
		WHERE device_id = $1 RETURNING `+enrolmentColumns, before.DeviceID))
	if err != nil {
		return out, err
	}
	creds := &credentialsAudit{Username: before.Username, PasswordSet: true,
		ConnectionRequestUsername: before.ConnectionRequestUsername, ConnectionRequestPasswordSet: true}
	if err := audit(ctx, tx, actor, AuditCreate, AuditDeviceCredentials, before.DeviceID, nil, creds); err != nil {
		return out, err
	}
	return out, audit(ctx, tx, actor, AuditUpdate, AuditEnrolment, before.DeviceID, before.audit(), out.audit())
}

// PendingConnectionRequestCredentials returns the connection-request
// credentials of an enrolment whose Set the CPE accepted but has not yet
// authenticated with; found is false otherwise.
func (s *Store) PendingConnectionRequestCredentials(ctx context.Context, key *CredentialKey, deviceID string) (username, password string, found bool, err error) {
	if key == nil {
		return "", "", false, nil
	}
	var sealed []byte
	err = s.pool.QueryRow(ctx, `SELECT conn_req_username, conn_req_password_sealed FROM cwmp_enrolments
		WHERE device_id = $1 AND state = 'pending' AND set_at IS NOT NULL AND conn_req_password_sealed IS NOT NULL`, deviceID).
		Scan(&username, &sealed)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", "", false, nil
	}
	if err != nil {
		return "", "", false, fmt.Errorf("store: pending connection-request credentials: %w", err)
	}
	if password, err = key.Open(deviceID, sealed); err != nil {
		return "", "", false, err
	}
	return username, password, true, nil
}
