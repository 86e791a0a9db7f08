package store

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/md5"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/duet-dm/duet/pkg/devicemodel"
)

// CredentialKey encrypts the connection-request passwords Duet must present
// to CPEs: AES-256-GCM, a random 96-bit nonce per value, the device ID as
// additional data.
type CredentialKey struct {
	aead cipher.AEAD
}

// CredentialKeySize is the key length: AES-256.
const CredentialKeySize = 32

// NewCredentialKey builds a key from 32 raw bytes.
func NewCredentialKey(raw []byte) (*CredentialKey, error) {
	if len(raw) != CredentialKeySize {
		return nil, fmt.Errorf("the key is %d bytes, want %d", len(raw), CredentialKeySize)
	}
	block, err := aes.NewCipher(raw)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &CredentialKey{aead: aead}, nil
}

// ParseCredentialKey decodes base64 (standard or URL alphabet, padded or
// not) of 32 bytes, as in DUET_CREDENTIALS_KEY.
func ParseCredentialKey(s string) (*CredentialKey, error) {
	s = strings.TrimSpace(s)
	var raw []byte
	var err error
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if raw, err = enc.DecodeString(s); err == nil {
			break
		}
	}
	if err != nil {
		return nil, errors.New("not valid base64 (generate one with: openssl rand -base64 32)")
	}
	return NewCredentialKey(raw)
}

// Seal encrypts plaintext for deviceID: nonce || ciphertext || tag.
func (k *CredentialKey) Seal(deviceID, plaintext string) []byte {
	nonce := make([]byte, k.aead.NonceSize(), k.aead.NonceSize()+len(plaintext)+k.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return k.aead.Seal(nonce, nonce, []byte(plaintext), []byte(deviceID))
}

// Open decrypts what Seal returned for the same deviceID. A value sealed
// for another device, under another key, or altered, fails.
func (k *CredentialKey) Open(deviceID string, sealed []byte) (string, error) {
	ns := k.aead.NonceSize()
	if len(sealed) < ns+k.aead.Overhead() {
		return "", errors.New("store: sealed credential is too short")
	}
	pt, err := k.aead.Open(nil, sealed[:ns], sealed[ns:], []byte(deviceID))
	if err != nil {
		return "", fmt.Errorf("store: cannot decrypt the credential of device %q (wrong DUET_CREDENTIALS_KEY, or the value was moved or altered)", deviceID)
	}
	return string(pt), nil
}

// DigestHA1 is MD5(username ":" realm ":" password) in lower-case hex
// (RFC 2617 §3.2.2.2).
func DigestHA1(username, realm, password string) string {
	h := md5.Sum([]byte(username + ":" + realm + ":" + password))
	return hex.EncodeToString(h[:])
}

// MaxCredentialLen is the longest username or password: TR-069 declares
// ManagementServer.Username/Password and ConnectionRequestUsername/Password
// as string(256).
const MaxCredentialLen = 256

// CredentialsInput is what an integrator sets for a device. The passwords
// are never stored as given.
type CredentialsInput struct {
	Username                  string
	Password                  string
	ConnectionRequestUsername string
	ConnectionRequestPassword string
}

// Validate checks every field is present and at most MaxCredentialLen
// bytes, naming the first that is not.
func (in CredentialsInput) Validate() error {
	for _, f := range []struct{ name, v string }{
		{"username", in.Username}, {"password", in.Password},
		{"connection_request_username", in.ConnectionRequestUsername},
		{"connection_request_password", in.ConnectionRequestPassword},
	} {
		if f.v == "" {
			return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s is required", f.name)
		}
		if len(f.v) > MaxCredentialLen {
			return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s is longer than %d bytes", f.name, MaxCredentialLen)
		}
	}
	return nil
}

// DeviceCredentials is a device's stored credentials: no secret in clear.
type DeviceCredentials struct {
	DeviceID                  string
	Username                  string
	Realm                     string
	DigestHA1                 string
	ConnectionRequestUsername string
	HasConnectionRequestPass  bool
	UpdatedAt                 time.Time
}

// AuditDeviceCredentials is the audit log's object type for a device's
// credentials; the object ID is the device ID.
const AuditDeviceCredentials = "device_credentials"

// credentialsAudit is what the audit log keeps of a device's credentials:
// the usernames and whether each password is set. Never a password, a
// hash or a ciphertext: the audit log is readable by viewers.
type credentialsAudit struct {
	Username                     string `json:"username"`
	PasswordSet                  bool   `json:"password_set"`
	ConnectionRequestUsername    string `json:"connection_request_username"`
	ConnectionRequestPasswordSet bool   `json:"connection_request_password_set"`
}

// currentCredentialsAudit locks and reads the audit view of a device's
// stored credentials in tx; nil when there are none.
func currentCredentialsAudit(ctx context.Context, tx pgx.Tx, deviceID string) (*credentialsAudit, error) {
	var c credentialsAudit
	err := tx.QueryRow(ctx, `SELECT username, digest_ha1 <> '', conn_req_username, length(conn_req_password_sealed) > 0
		FROM device_credentials WHERE device_id = $1 FOR UPDATE`, deviceID).
		Scan(&c.Username, &c.PasswordSet, &c.ConnectionRequestUsername, &c.ConnectionRequestPasswordSet)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &c, nil
}

// PutDeviceCredentials stores (or replaces) a device's credentials: the
// HA1 of the CPE→ACS password for realm, and the connection-request
// password sealed with key. The audit entry (actor, no secret) is written
// in the same transaction.
func (s *Store) PutDeviceCredentials(ctx context.Context, actor string, key *CredentialKey, realm, deviceID string, in CredentialsInput) (DeviceCredentials, error) {
	if key == nil {
		return DeviceCredentials{}, devicemodel.Errorf(devicemodel.CodeUnavailable, "no credentials key is configured")
	}
	if err := checkActor(actor); err != nil {
		return DeviceCredentials{}, err
	}
	if err := in.Validate(); err != nil {
		return DeviceCredentials{}, err
	}
	out := DeviceCredentials{
		DeviceID: deviceID, Username: in.Username, Realm: realm,
		DigestHA1:                 DigestHA1(in.Username, realm, in.Password),
		ConnectionRequestUsername: in.ConnectionRequestUsername, HasConnectionRequestPass: true,
	}
	sealed := key.Seal(deviceID, in.ConnectionRequestPassword)
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		before, err := currentCredentialsAudit(ctx, tx, deviceID)
		if err != nil {
			return err
		}
		// Credentials an operator sets win over an enrolment in progress.
		if _, err := tx.Exec(ctx, `DELETE FROM cwmp_enrolments WHERE device_id = $1 AND state = 'pending'`, deviceID); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, `
			INSERT INTO device_credentials (device_id, username, realm, digest_ha1, conn_req_username, conn_req_password_sealed, updated_at)
			VALUES ($1, $2, $3, $4, $5, $6, now())
			ON CONFLICT (device_id) DO UPDATE SET username = EXCLUDED.username, realm = EXCLUDED.realm,
				digest_ha1 = EXCLUDED.digest_ha1, conn_req_username = EXCLUDED.conn_req_username,
				conn_req_password_sealed = EXCLUDED.conn_req_password_sealed, updated_at = now()
			RETURNING updated_at`,
			deviceID, out.Username, realm, out.DigestHA1, out.ConnectionRequestUsername, sealed).Scan(&out.UpdatedAt); err != nil {
			return err
		}
		after := &credentialsAudit{Username: out.Username, PasswordSet: out.DigestHA1 != "",
			ConnectionRequestUsername: out.ConnectionRequestUsername, ConnectionRequestPasswordSet: true}
		action := AuditUpdate
		if before == nil {
			action = AuditCreate
			return audit(ctx, tx, actor, action, AuditDeviceCredentials, deviceID, nil, after)
		}
		return audit(ctx, tx, actor, action, AuditDeviceCredentials, deviceID, before, after)
	})
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "23503" { // foreign_key_violation
		return DeviceCredentials{}, devicemodel.Errorf(devicemodel.CodeNotFound, "device %q not found", deviceID)
	}
	if err != nil {
		return DeviceCredentials{}, fmt.Errorf("store: put credentials: %w", err)
	}
	return out, nil
}

// FindDeviceCredentials returns a device's stored credentials, or
// CodeNotFound.
func (s *Store) FindDeviceCredentials(ctx context.Context, deviceID string) (DeviceCredentials, error) {
	c, err := scanDeviceCredentials(s.pool.QueryRow(ctx, findCredentialsSQL, deviceID), deviceID)
	if errors.Is(err, pgx.ErrNoRows) {
		return c, devicemodel.Errorf(devicemodel.CodeNotFound, "no credentials are stored for device %q", deviceID)
	}
	if err != nil {
		return c, fmt.Errorf("store: find credentials: %w", err)
	}
	return c, nil
}

const findCredentialsSQL = `SELECT username, realm, digest_ha1, conn_req_username,
	length(conn_req_password_sealed) > 0, updated_at FROM device_credentials WHERE device_id = $1`

func scanDeviceCredentials(row pgx.Row, deviceID string) (DeviceCredentials, error) {
	c := DeviceCredentials{DeviceID: deviceID}
	err := row.Scan(&c.Username, &c.Realm, &c.DigestHA1, &c.ConnectionRequestUsername, &c.HasConnectionRequestPass, &c.UpdatedAt)
	return c, err
}

// CredentialsForAuth reads a device's stored credentials and its
// enrolment in one round trip: a CWMP credential lookup, once per Inform.
// Either is nil when the device has none.
func (s *Store) CredentialsForAuth(ctx context.Context, deviceID string) (*DeviceCredentials, *Enrolment, error) {
	b := &pgx.Batch{}
	b.Queue(findCredentialsSQL, deviceID)
	b.Queue(`SELECT `+enrolmentColumns+` FROM cwmp_enrolments WHERE device_id = $1`, deviceID)
	br := s.pool.SendBatch(ctx, b)
	defer br.Close()
	var creds *DeviceCredentials
	c, err := scanDeviceCredentials(br.QueryRow(), deviceID)
	switch {
	case err == nil:
		creds = &c
	case !errors.Is(err, pgx.ErrNoRows):
		return nil, nil, fmt.Errorf("store: find credentials: %w", err)
	}
	var en *Enrolment
	e, err := scanEnrolment(br.QueryRow())
	switch {
	case err == nil:
		en = &e
	case !errors.Is(err, pgx.ErrNoRows):
		return nil, nil, fmt.Errorf("store: find enrolment: %w", err)
	}
	return creds, en, nil
}

// ConnectionRequestCredentials returns the decrypted connection-request
// username and password of a device; found is false when none are stored.
func (s *Store) ConnectionRequestCredentials(ctx context.Context, key *CredentialKey, deviceID string) (username, password string, found bool, err error) {
	if key == nil {
		return "", "", false, nil
	}
	var sealed []byte
	err = s.pool.QueryRow(ctx, `SELECT conn_req_username, conn_req_password_sealed FROM device_credentials WHERE device_id = $1`, deviceID).
		Scan(&username, &sealed)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", "", false, nil
	}
	if err != nil {
		return "", "", false, fmt.Errorf("store: find connection-request credentials: %w", err)
	}
	password, err = key.Open(deviceID, sealed)
	if err != nil {
		return "", "", false, err
	}
	return username, password, true, nil
}

// DeleteDeviceCredentials removes a device's credentials and audits it
// in one transaction, or returns CodeNotFound when none were stored.
func (s *Store) DeleteDeviceCredentials(ctx context.Context, actor, deviceID string) error {
	if err := checkActor(actor); err != nil {
		return err
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		before, err := currentCredentialsAudit(ctx, tx, deviceID)
		if err != nil {
			return err
		}
		if before == nil {
			return devicemodel.Errorf(devicemodel.CodeNotFound, "no credentials are stored for device %q", deviceID)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM device_credentials WHERE device_id = $1`, deviceID); err != nil {
			return err
		}
		// Back on the shared credentials: the device may be enrolled again.
		if _, err := tx.Exec(ctx, `DELETE FROM cwmp_enrolments WHERE device_id = $1`, deviceID); err != nil {
			return err
		}
		return audit(ctx, tx, actor, AuditDelete, AuditDeviceCredentials, deviceID, before, nil)
	})
	if devicemodel.ErrorCode(err) == devicemodel.CodeNotFound {
		return err
	}
	if err != nil {
		return fmt.Errorf("store: delete credentials: %w", err)
	}
	return nil
}
