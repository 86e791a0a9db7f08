-- Bulk tasks (issue 5): one operation for every device a filter matches,
-- created by a worker at a bounded rate. The job is persisted so a
-- controller restart resumes it where it stopped.
CREATE TABLE task_batches (
    id            text PRIMARY KEY,
    -- Creation order, for listing newest first.
    seq           bigserial NOT NULL UNIQUE,
    actor         text NOT NULL,
    -- The device filter as submitted (JSON), and the task request.
    filter        jsonb NOT NULL,
    request       jsonb NOT NULL,
    -- Tasks created per second.
    rate          double precision NOT NULL CHECK (rate > 0),
    state         text NOT NULL CHECK (state IN ('running', 'done', 'cancelled', 'failed')),
    -- The last device ID whose page is complete: a restart resumes after it.
    cursor        text NOT NULL DEFAULT '',
    matched       bigint NOT NULL DEFAULT 0,
    created_tasks bigint NOT NULL DEFAULT 0,
    errors        bigint NOT NULL DEFAULT 0,
    last_error    text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);
-- The worker's start-up question: which batches are still running.
CREATE INDEX task_batches_running_idx ON task_batches (seq) WHERE state = 'running';

-- The batch that created a task (NULL for tasks created one by one).
ALTER TABLE tasks ADD COLUMN batch_id text REFERENCES task_batches (id);
-- At most one task per device and batch: the worker's restart check
-- ("which devices of this page already have their task") is a range scan
-- here, and a second create for the same device fails instead of sending
-- the operation twice.
CREATE UNIQUE INDEX tasks_batch_device_idx ON tasks (batch_id, device_id) WHERE batch_id IS NOT NULL;
