-- Console users and their sessions (issue 13 item 3).
--
-- A user's password is kept as an argon2id PHC string
-- ($argon2id$v=19$m=…,t=…,p=…$salt$hash, RFC 9106), so the parameters
-- travel with each hash and can be raised later without a migration.
-- Roles are the API tokens' (api_tokens.role).
CREATE TABLE console_users (
    name           text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$'),
    role           text NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    password_hash  text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    password_at    timestamptz NOT NULL DEFAULT now(),
    disabled_at    timestamptz,
    last_login_at  timestamptz
);

-- A session is a random 256-bit cookie secret of which only the SHA-256 is
-- stored (as for api_tokens), with the CSRF token its forms carry. Idle
-- sessions are removed by the console (DUET_CONSOLE_IDLE_TIMEOUT).
CREATE TABLE console_sessions (
    hash          bytea PRIMARY KEY,
    user_name     text NOT NULL REFERENCES console_users (name) ON DELETE CASCADE,
    csrf          text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    address       text NOT NULL DEFAULT ''
);
CREATE INDEX console_sessions_user_idx ON console_sessions (user_name);
CREATE INDEX console_sessions_seen_idx ON console_sessions (last_seen_at);

-- Failed logins, for the login rate limit: shared by every controller
-- replica, so a guesser cannot spread attempts over them.
CREATE TABLE console_login_failures (
    at         timestamptz NOT NULL DEFAULT now(),
    user_name  text NOT NULL,
    address    text NOT NULL
);
CREATE INDEX console_login_failures_user_idx ON console_login_failures (user_name, at);
CREATE INDEX console_login_failures_addr_idx ON console_login_failures (address, at);
