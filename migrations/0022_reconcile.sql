-- Reconciliation and rollout (issue 6 §3, §4). Numbered 0022 so it never
-- collides with the API migrations (0006, 0007) written in parallel.

-- A policy's revision grows with every change of its spec or of its
-- group's filter: a device judged at an older revision is judged again.
ALTER TABLE policies ADD COLUMN revision integer NOT NULL DEFAULT 1;

-- One rollout per enabled policy: the strategy it was enabled with and
-- where it stands. Progress counts come from policy_status.
CREATE TABLE rollouts (
    policy_id        text PRIMARY KEY REFERENCES policies (id) ON DELETE CASCADE,
    strategy         jsonb NOT NULL,
    state            text NOT NULL CHECK (state IN ('running', 'paused', 'stopped', 'completed', 'aborted')),
    -- Why it is stopped, paused or aborted.
    reason           text NOT NULL DEFAULT '',
    -- The last batch admitted (0: none yet) and its size in devices.
    batch            integer NOT NULL DEFAULT 0,
    batch_size       integer NOT NULL DEFAULT 0,
    batch_started_at timestamptz,
    -- When every device of the current batch had finished: the pause
    -- between batches counts from here.
    batch_done_at    timestamptz,
    started_by       text NOT NULL,
    started_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Per device, per enabled policy: where the device stands.
CREATE TABLE policy_status (
    policy_id      text NOT NULL REFERENCES policies (id) ON DELETE CASCADE,
    device_id      text NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    status         text NOT NULL CHECK (status IN ('compliant', 'pending', 'applying', 'failed', 'conflicting')),
    -- The policy revision this status judges.
    revision       integer NOT NULL,
    -- Notification attributes are not observable: the revision whose
    -- attributes the device accepted (0: none since its last bootstrap).
    attrs_revision integer NOT NULL DEFAULT 0,
    -- Object tables read from the device since its last bootstrap (an
    -- empty table there is known empty, not unknown).
    refreshed      text[] NOT NULL DEFAULT '{}',
    -- The rollout batch that admitted the device; NULL: not yet admitted.
    batch          integer,
    -- What remains to do (policy.Plan), and the conflicts lost to
    -- higher-priority policies ([{key, policy_id}]).
    plan           jsonb,
    conflicts      jsonb,
    error_code     text NOT NULL DEFAULT '',
    error_message  text NOT NULL DEFAULT '',
    device_fault   integer NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (policy_id, device_id)
);
-- Progress counts and "the next devices to admit" are range scans here.
CREATE INDEX policy_status_progress_idx ON policy_status (policy_id, status, batch, device_id);
-- A device's statuses (on every event of the device).
CREATE INDEX policy_status_device_idx ON policy_status (device_id);

-- Which tasks a policy created, so a finished task updates the status.
CREATE TABLE policy_tasks (
    task_id   text PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
    policy_id text NOT NULL REFERENCES policies (id) ON DELETE CASCADE,
    device_id text NOT NULL,
    revision  integer NOT NULL,
    -- set, add, delete, attributes, refresh
    purpose   text NOT NULL,
    -- For refresh: the table read.
    target    text NOT NULL DEFAULT ''
);
CREATE INDEX policy_tasks_device_idx ON policy_tasks (device_id, policy_id);
