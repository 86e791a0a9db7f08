-- API bearer tokens (issue 5 §1). Only the SHA-256 of each token is kept:
-- tokens are 256-bit random strings, so a fast hash cannot be brute-forced
-- and a leaked table does not let anyone call the API.
CREATE TABLE api_tokens (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    role        text NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    hash        bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
