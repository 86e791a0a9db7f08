-- Tasks: the work queue of issue 5 §2. One row per operation for one
-- device; rows are never deleted by Duet, so a task's history stays
-- readable after it finished.
CREATE TABLE tasks (
    id                 text PRIMARY KEY,
    -- Global creation order; a device's tasks are dispatched in seq order.
    seq                bigserial NOT NULL UNIQUE,
    device_id          text NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    operation          text NOT NULL,
    -- The API request as submitted (JSON), for display.
    request            jsonb NOT NULL,
    -- The duet.v1.Command to send (protobuf), with id = the task id.
    command            bytea NOT NULL,
    -- Sent twice it could do harm (reboot, add, operate, transfers): never
    -- re-sent without an explicit retry.
    non_idempotent     boolean NOT NULL,
    state              text NOT NULL CHECK (state IN ('queued', 'dispatched', 'succeeded', 'failed', 'expired', 'cancelled')),
    unique_key         text,
    connection_request boolean NOT NULL DEFAULT true,
    expires_at         timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    dispatched_at      timestamptz,
    finished_at        timestamptz,
    -- CWMP session (or "usp") the task was last dispatched in.
    session            text NOT NULL DEFAULT '',
    attempts           integer NOT NULL DEFAULT 0,
    -- The duet.v1.CommandResult (protobuf) when the device answered.
    result             bytea,
    error_code         text NOT NULL DEFAULT '',
    error_message      text NOT NULL DEFAULT '',
    device_fault       integer NOT NULL DEFAULT 0,
    retry_of           text
);

-- The dispatcher's question, "the next queued task of this device", and
-- "is one in flight", are range scans on this partial index; finished
-- tasks, the bulk of the table, are not in it.
CREATE INDEX tasks_device_open_idx ON tasks (device_id, seq) WHERE state IN ('queued', 'dispatched');
-- GET /devices/{id}/tasks, newest first.
CREATE INDEX tasks_device_seq_idx ON tasks (device_id, seq DESC);
-- Expiry sweep.
CREATE INDEX tasks_expires_idx ON tasks (expires_at) WHERE state = 'queued' AND expires_at IS NOT NULL;
-- unique_key: at most one queued task per device and key.
CREATE UNIQUE INDEX tasks_unique_key_idx ON tasks (device_id, unique_key) WHERE state = 'queued' AND unique_key IS NOT NULL;
