-- Why a queued task waits (issue 11 §5): a task for a device Duet cannot
-- reach used to sit in 'queued' with no reason anywhere but the log.

-- The last delivery attempt (a dispatch), set when the task is claimed.
ALTER TABLE tasks ADD COLUMN last_attempt_at timestamptz;

-- Why the device's queued tasks wait, one row per device: 'device_offline',
-- 'no_adapter' (nobody serves the device's command subject),
-- 'connection_request_failed: <why>', 'awaiting_session' (a connection
-- request went out), 'awaiting_inform' (no connection request: the next
-- periodic inform), 'device_busy', 'no_answer'; wait_since: when that
-- reason was first given. A table of its own, not columns of tasks: writing
-- it must never lock a task row, or a session's claim (FOR UPDATE SKIP
-- LOCKED) would pass the task by. The row goes when a task of the device
-- is dispatched. Its columns are named so that a correlated subquery in a
-- task query can say "device_id" and mean the task's.
CREATE TABLE device_task_waits (
    wait_device text PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    wait_reason text NOT NULL,
    wait_since  timestamptz NOT NULL
);
