-- A task ends on the device's real outcome (issue 11 §1). A command the
-- device accepted but finishes later stays 'dispatched' with a sub-state:
--   awaiting_completion  a transfer answered with Status 1 (TR-069 A.3.2.8),
--                        a USP async Operate (req_obj_path), a CWMP
--                        diagnostics run; ends on TransferComplete /
--                        OperationComplete / 8 DIAGNOSTICS COMPLETE
--   awaiting_boot        a reboot or factory reset; ends when the device is
--                        back (USP Boot!, CWMP 1 BOOT + M Reboot, 0 BOOTSTRAP)
-- '' otherwise. await_key is what the completion must carry (the
-- CommandKey, or the diagnostics object); await_deadline fails the task
-- with 'timeout' when nothing came.
ALTER TABLE tasks ADD COLUMN sub_state text NOT NULL DEFAULT ''
    CHECK (sub_state IN ('', 'awaiting_completion', 'awaiting_boot'));
ALTER TABLE tasks ADD COLUMN await_key text NOT NULL DEFAULT '';
ALTER TABLE tasks ADD COLUMN await_deadline timestamptz;

-- Completions look up a device's awaiting tasks; the sweep looks for
-- overdue ones. Both are few among the dispatched.
CREATE INDEX tasks_awaiting_idx ON tasks (device_id) WHERE state = 'dispatched' AND sub_state <> '';
CREATE INDEX tasks_await_deadline_idx ON tasks (await_deadline) WHERE state = 'dispatched' AND sub_state <> '';

-- The reboot task a device is waiting to come back from ('' when none):
-- the device shows state 'rebooting' (and online false) until it ends.
ALTER TABLE devices ADD COLUMN rebooting_task text NOT NULL DEFAULT '';
