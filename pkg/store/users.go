package store

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"golang.org/x/crypto/argon2"

	"github.com/duet-dm/duet/pkg/devicemodel"
)

// AuditUser is the audit log's object type for a console user (never its
// password hash).
const AuditUser = "user"

// User is a console user as stored, without its password hash.
type User struct {
	Name        string     `json:"name"`
	Role        Role       `json:"role"`
	CreatedAt   time.Time  `json:"created_at"`
	PasswordAt  time.Time  `json:"password_at"`
	DisabledAt  *time.Time `json:"disabled_at,omitempty"`
	LastLoginAt *time.Time `json:"last_login_at,omitempty"`
}

// userAudit is what the audit log keeps of a user.
type userAudit struct {
	Name     string `json:"name"`
	Role     Role   `json:"role"`
	Disabled bool   `json:"disabled"`
	// PasswordChanged marks an update that set a new password (never
	// the password or its hash).
	PasswordChanged bool `json:"password_changed,omitempty"`
}

// UserActor names a console user in the audit log and on the tasks the
// user creates, as tokenActor names a token's owner: "name (user)".
func UserActor(name string) string { return name + " (user)" }

// MinPasswordLen is the shortest password a user may have (NIST SP
// 800-63B §5.1.1.2 asks for at least 8; Duet's users can change devices
// fleet-wide).
const MinPasswordLen = 12

// Argon2id parameters: the OWASP Password Storage Cheat Sheet's first
// choice (19 MiB of memory, 2 passes, 1 lane), a 16-byte salt (RFC 9106
// §3.1) and a 32-byte tag. RFC 9106 §4's 64 MiB × 3 passes costs five
// times as much per login on the 2-core machines Duet often runs on, where
// a burst of logins would compete with device sessions. Each hash records
// its parameters, so raising them later keeps old hashes checkable.
const (
	argonTime    = 2
	argonMemory  = 19 * 1024 // KiB
	argonThreads = 1
	argonKeyLen  = 32
	argonSaltLen = 16
)

var userNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`)

// CheckUserName says whether name can be a user's name.
func CheckUserName(name string) error {
	if !userNameRE.MatchString(name) {
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "a user name is 1 to 64 letters, digits or . _ @ - and starts with a letter or digit")
	}
	return nil
}

// CheckPassword says whether pw is acceptable as a new password.
func CheckPassword(pw string) error {
	if utf8.RuneCountInString(pw) < MinPasswordLen {
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "a password needs at least %d characters", MinPasswordLen)
	}
	if len(pw) > 1024 {
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "a password is at most 1024 bytes")
	}
	return nil
}

// HashPassword returns pw's argon2id hash as a PHC string.
func HashPassword(pw string) string {
	salt := make([]byte, argonSaltLen)
	if _, err := rand.Read(salt); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	key := argon2.IDKey([]byte(pw), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemory, argonTime, argonThreads,
		b64.EncodeToString(salt), b64.EncodeToString(key))
}

// VerifyPassword reports whether pw matches the PHC string hash. A hash it
// cannot read (or with parameters past what Duet would ever set, so a
// tampered row cannot make a login cost gigabytes) matches nothing.
func VerifyPassword(hash, pw string) bool {
	parts := strings.Split(hash, "$")
	if len(parts) != 6 || parts[1] != "argon2id" || parts[2] != fmt.Sprintf("v=%d", argon2.Version) {
		return false
	}
	var m, t uint32
	var p uint8
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil {
		return false
	}
	if m == 0 || m > 1<<20 || t == 0 || t > 16 || p == 0 || p > 16 {
		return false
	}
	b64 := base64.RawStdEncoding
	salt, err1 := b64.DecodeString(parts[4])
	want, err2 := b64.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(want) == 0 || len(want) > 64 {
		return false
	}
	got := argon2.IDKey([]byte(pw), salt, t, m, p, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1
}

// dummyHash is verified against when a login names no user, so that an
// unknown name takes as long to refuse as a wrong password.
// Lazily: hashing costs 64 MiB and tens of milliseconds, which a program
// that imports the store but never logs anyone in should not pay.
var dummyHash = sync.OnceValue(func() string { return HashPassword("no such user, no such password") })

// NewPassword returns a random password for a first admin or a reset:
// 20 characters from 120 random bits.
func NewPassword() string {
	var b [15]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:])
}

const userColumns = `name, role, created_at, password_at, disabled_at, last_login_at`

func scanUser(row pgx.Row) (User, error) {
	var u User
	var role string
	err := row.Scan(&u.Name, &role, &u.CreatedAt, &u.PasswordAt, &u.DisabledAt, &u.LastLoginAt)
	u.Role = Role(role)
	return u, err
}

// CreateUser stores a new user and audits it as actor. Errors:
// CodeInvalidArgument for a bad name, role or password, CodeConflict when
// the name is taken.
func (s *Store) CreateUser(ctx context.Context, actor, name string, role Role, password string) (User, error) {
	if err := checkActor(actor); err != nil {
		return User{}, err
	}
	if err := CheckUserName(name); err != nil {
		return User{}, err
	}
	if _, err := ParseRole(string(role)); err != nil {
		return User{}, err
	}
	if err := CheckPassword(password); err != nil {
		return User{}, err
	}
	hash := HashPassword(password)
	var u User
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		u, err = s.insertUser(ctx, tx, name, role, hash)
		if err != nil {
			return err
		}
		return audit(ctx, tx, actor, AuditCreate, AuditUser, name, nil, userAudit{Name: name, Role: role})
	})
	return u, err
}

func (s *Store) insertUser(ctx context.Context, tx pgx.Tx, name string, role Role, hash string) (User, error) {
	u, err := scanUser(tx.QueryRow(ctx, `INSERT INTO console_users (name, role, password_hash) VALUES ($1, $2, $3)
		ON CONFLICT (name) DO NOTHING RETURNING `+userColumns, name, string(role), hash))
	if errors.Is(err, pgx.ErrNoRows) {
		return User{}, devicemodel.Errorf(devicemodel.CodeConflict, "user %q exists", name)
	}
	if err != nil {
		return User{}, fmt.Errorf("store: create user: %w", err)
	}
	return u, nil
}

// FirstAdminName is the user EnsureFirstAdmin creates.
const FirstAdminName = "admin"

// EnsureFirstAdmin runs at start-up: when no console user exists, it
// creates the admin user FirstAdminName with a random password and
// returns that password for the caller to print once (as EnsureAdminToken
// does for the first token); otherwise it returns "". Concurrent starts
// create at most one (advisory lock).
func (s *Store) EnsureFirstAdmin(ctx context.Context) (string, error) {
	var pw string
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLockKey+2); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRow(ctx, "SELECT count(*) FROM console_users").Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return nil
		}
		pw = NewPassword()
		if _, err := s.insertUser(ctx, tx, FirstAdminName, RoleAdmin, HashPassword(pw)); err != nil {
			return err
		}
		return audit(ctx, tx, "duet (first start)", AuditCreate, AuditUser, FirstAdminName, nil, userAudit{Name: FirstAdminName, Role: RoleAdmin})
	})
	if err != nil {
		return "", fmt.Errorf("store: ensure first admin: %w", err)
	}
	return pw, nil
}

// FindUser returns a user by name (CodeNotFound when there is none).
func (s *Store) FindUser(ctx context.Context, name string) (User, error) {
	u, err := scanUser(s.pool.QueryRow(ctx, `SELECT `+userColumns+` FROM console_users WHERE name = $1`, name))
	if errors.Is(err, pgx.ErrNoRows) {
		return User{}, devicemodel.Errorf(devicemodel.CodeNotFound, "user %q not found", name)
	}
	if err != nil {
		return User{}, fmt.Errorf("store: find user: %w", err)
	}
	return u, nil
}

// ListUsers returns every user, disabled ones included, by name.
func (s *Store) ListUsers(ctx context.Context) ([]User, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+userColumns+` FROM console_users ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("store: list users: %w", err)
	}
	defer rows.Close()
	var out []User
	for rows.Next() {
		u, err := scanUser(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, rows.Err()
}

// UserChange is what UpdateUser changes; nil fields stay.
type UserChange struct {
	Role     *Role
	Disabled *bool
	Password *string
}

// UpdateUser changes a user and audits it as actor. Disabling a user or
// changing its password or role ends its sessions. Errors: CodeNotFound,
// CodeInvalidArgument.
func (s *Store) UpdateUser(ctx context.Context, actor, name string, c UserChange) (User, error) {
	if err := checkActor(actor); err != nil {
		return User{}, err
	}
	if c.Role != nil {
		if _, err := ParseRole(string(*c.Role)); err != nil {
			return User{}, err
		}
	}
	var hash *string
	if c.Password != nil {
		if err := CheckPassword(*c.Password); err != nil {
			return User{}, err
		}
		h := HashPassword(*c.Password)
		hash = &h
	}
	var out User
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		before, err := scanUser(tx.QueryRow(ctx, `SELECT `+userColumns+` FROM console_users WHERE name = $1 FOR UPDATE`, name))
		if errors.Is(err, pgx.ErrNoRows) {
			return devicemodel.Errorf(devicemodel.CodeNotFound, "user %q not found", name)
		}
		if err != nil {
			return err
		}
		var role *string
		if c.Role != nil {
			r := string(*c.Role)
			role = &r
		}
		out, err = scanUser(tx.QueryRow(ctx, `UPDATE console_users SET
			role = COALESCE($2, role),
			password_hash = COALESCE($3, password_hash),
			password_at = CASE WHEN $3::text IS NULL THEN password_at ELSE now() END,
			disabled_at = CASE WHEN $4::boolean IS NULL THEN disabled_at WHEN $4 THEN COALESCE(disabled_at, now()) ELSE NULL END
			WHERE name = $1 RETURNING `+userColumns, name, role, hash, c.Disabled))
		if err != nil {
			return fmt.Errorf("store: update user: %w", err)
		}
		if hash != nil || out.DisabledAt != nil || out.Role != before.Role {
			if _, err := tx.Exec(ctx, `DELETE FROM console_sessions WHERE user_name = $1`, name); err != nil {
				return err
			}
		}
		return audit(ctx, tx, actor, AuditUpdate, AuditUser, name,
			userAudit{Name: name, Role: before.Role, Disabled: before.DisabledAt != nil},
			userAudit{Name: name, Role: out.Role, Disabled: out.DisabledAt != nil, PasswordChanged: hash != nil})
	})
	return out, err
}

// LoginLimit bounds failed logins: past Failures failures within Window
// for one user name, or past 4×Failures from one address, a login is
// refused without checking the password.
type LoginLimit struct {
	Failures int
	Window   time.Duration
}

// DefaultLoginLimit: 5 failures in 5 minutes.
var DefaultLoginLimit = LoginLimit{Failures: 5, Window: 5 * time.Minute}

// Login checks a user's password, refusing (CodeResourcesExceeded) while
// the name or the address is over limit. A wrong password, an unknown or
// a disabled user are all CodeUnauthenticated with one message, so the
// answer does not tell which names exist.
func (s *Store) Login(ctx context.Context, name, password, address string, limit LoginLimit) (User, error) {
	if limit.Failures <= 0 {
		limit = DefaultLoginLimit
	}
	var byName, byAddr int
	err := s.pool.QueryRow(ctx, `SELECT
		(SELECT count(*) FROM console_login_failures WHERE user_name = $1 AND at > now() - $3::interval),
		(SELECT count(*) FROM console_login_failures WHERE address = $2 AND at > now() - $3::interval)`,
		name, address, limit.Window).Scan(&byName, &byAddr)
	if err != nil {
		return User{}, fmt.Errorf("store: login: %w", err)
	}
	if byName >= limit.Failures || byAddr >= 4*limit.Failures {
		return User{}, devicemodel.Errorf(devicemodel.CodeResourcesExceeded, "too many failed logins; try again in %s", limit.Window)
	}
	var hash string
	var disabled *time.Time
	err = s.pool.QueryRow(ctx, `SELECT password_hash, disabled_at FROM console_users WHERE name = $1`, name).Scan(&hash, &disabled)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return User{}, fmt.Errorf("store: login: %w", err)
	}
	found := err == nil
	if !found {
		hash = dummyHash()
	}
	if !VerifyPassword(hash, password) || !found || disabled != nil {
		// Also prunes what no window still looks at.
		_, err := s.pool.Exec(ctx, `WITH gone AS (DELETE FROM console_login_failures WHERE at < now() - interval '1 day')
			INSERT INTO console_login_failures (user_name, address) VALUES ($1, $2)`, name, address)
		if err != nil {
			return User{}, fmt.Errorf("store: login: %w", err)
		}
		return User{}, devicemodel.Errorf(devicemodel.CodeUnauthenticated, "wrong user name or password")
	}
	u, err := scanUser(s.pool.QueryRow(ctx, `UPDATE console_users SET last_login_at = now() WHERE name = $1 RETURNING `+userColumns, name))
	if err != nil {
		return User{}, fmt.Errorf("store: login: %w", err)
	}
	return u, nil
}

// Session is a console login.
type Session struct {
	User       User
	CSRF       string
	CreatedAt  time.Time
	LastSeenAt time.Time
}

func randomSecret() string {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// CreateSession starts a session for a user who just logged in and returns
// the cookie secret, shown to the browser only (its SHA-256 is stored).
func (s *Store) CreateSession(ctx context.Context, u User, address string) (string, Session, error) {
	secret := randomSecret()
	sess := Session{User: u, CSRF: randomSecret()}
	err := s.pool.QueryRow(ctx, `INSERT INTO console_sessions (hash, user_name, csrf, address) VALUES ($1, $2, $3, $4)
		RETURNING created_at, last_seen_at`, hashToken(secret), u.Name, sess.CSRF, address).Scan(&sess.CreatedAt, &sess.LastSeenAt)
	if err != nil {
		return "", Session{}, fmt.Errorf("store: create session: %w", err)
	}
	return secret, sess, nil
}

// FindSession returns the live session of a cookie secret and marks it
// seen. A session idle longer than idle, or older than maxAge, or of a
// disabled user, is removed and CodeUnauthenticated.
func (s *Store) FindSession(ctx context.Context, secret string, idle, maxAge time.Duration) (Session, error) {
	var sess Session
	var role string
	u := &sess.User
	// One statement touches and reads it; an expired one is not touched.
	err := s.pool.QueryRow(ctx, `UPDATE console_sessions s SET last_seen_at = now()
		FROM console_users u
		WHERE s.hash = $1 AND u.name = s.user_name AND u.disabled_at IS NULL
		  AND s.last_seen_at > now() - $2::interval AND s.created_at > now() - $3::interval
		RETURNING s.csrf, s.created_at, s.last_seen_at, u.name, u.role, u.created_at, u.password_at, u.disabled_at, u.last_login_at`,
		hashToken(secret), idle, maxAge).Scan(&sess.CSRF, &sess.CreatedAt, &sess.LastSeenAt,
		&u.Name, &role, &u.CreatedAt, &u.PasswordAt, &u.DisabledAt, &u.LastLoginAt)
	if errors.Is(err, pgx.ErrNoRows) {
		_, _ = s.pool.Exec(ctx, `DELETE FROM console_sessions WHERE hash = $1`, hashToken(secret))
		return Session{}, devicemodel.Errorf(devicemodel.CodeUnauthenticated, "no session, or it expired")
	}
	if err != nil {
		return Session{}, fmt.Errorf("store: find session: %w", err)
	}
	u.Role = Role(role)
	return sess, nil
}

// DeleteSession ends a session (logout); ending one twice is not an error.
func (s *Store) DeleteSession(ctx context.Context, secret string) error {
	_, err := s.pool.Exec(ctx, `DELETE FROM console_sessions WHERE hash = $1`, hashToken(secret))
	if err != nil {
		return fmt.Errorf("store: delete session: %w", err)
	}
	return nil
}

// PruneSessions removes the sessions idle longer than idle or older than
// maxAge, and returns how many.
func (s *Store) PruneSessions(ctx context.Context, idle, maxAge time.Duration) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM console_sessions WHERE last_seen_at < now() - $1::interval OR created_at < now() - $2::interval`, idle, maxAge)
	if err != nil {
		return 0, fmt.Errorf("store: prune sessions: %w", err)
	}
	return tag.RowsAffected(), nil
}
