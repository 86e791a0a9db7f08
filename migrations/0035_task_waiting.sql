-- Why a queued task waits (issue 11 §5): a task for a device Duet cannot
-- reach used to sit in 'queued' with no reason anywhere but the log.
--
-- waiting_reason: '' (not waiting on anything known), 'device_offline',
-- 'no_adapter' (nobody serves the device's command subject),
-- 'connection_request_failed: <why>', 'awaiting_session' (a connection
-- request went out), 'awaiting_inform' (no connection request: the next
-- periodic inform), 'device_busy'. waiting_since: when that reason was
-- first given. last_attempt_at: the last delivery attempt (a dispatch).
ALTER TABLE tasks
    ADD COLUMN waiting_reason  text NOT NULL DEFAULT '',
    ADD COLUMN waiting_since   timestamptz,
    ADD COLUMN last_attempt_at timestamptz;
