-- USP agent identities (issue 15 §2). An agent proves its endpoint ID to
-- the embedded MQTT and STOMP brokers (login = endpoint ID) and to the
-- WebSocket server (bearer token) with a secret:
--   * a per-agent secret, of which only SHA-256(endpoint_id, 0, secret)
--     is kept (secrets are at least 20 characters; generated ones carry
--     256 random bits, so a fast hash cannot be brute-forced), or
--   * a password derived from an enrolment key: HMAC-SHA256(key,
--     endpoint ID), for every endpoint ID matching the key's pattern. The
--     key is kept sealed with DUET_CREDENTIALS_KEY (AES-256-GCM), since
--     Duet must recompute the HMAC.
CREATE TABLE usp_agent_secrets (
    endpoint_id  text PRIMARY KEY,
    hash         bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text NOT NULL
);

CREATE TABLE usp_enrolment_keys (
    id           text PRIMARY KEY,
    pattern      text NOT NULL UNIQUE,
    key_sealed   bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text NOT NULL
);

-- Admission of endpoint IDs (DUET_USP_ADMISSION): agents held for approval
-- and the operator's decisions. An endpoint ID with no row is unknown.
CREATE TABLE usp_agent_admission (
    endpoint_id  text PRIMARY KEY,
    state        text NOT NULL CHECK (state IN ('pending', 'approved', 'rejected')),
    mtp          text NOT NULL DEFAULT '',
    peer         text NOT NULL DEFAULT '',
    first_seen   timestamptz NOT NULL DEFAULT now(),
    last_seen    timestamptz NOT NULL DEFAULT now(),
    attempts     bigint NOT NULL DEFAULT 1,
    decided_by   text,
    decided_at   timestamptz
);
CREATE INDEX usp_agent_admission_pending_idx ON usp_agent_admission (first_seen) WHERE state = 'pending';
