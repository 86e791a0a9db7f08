-- The console's task pages (issue 13 item 4, "Tasks and batches"): every
-- device's tasks newest first, filtered by state or by batch, are range
-- scans of these rather than a walk of the whole seq index past the rows
-- of other states (tasks are never deleted, so the table only grows).
CREATE INDEX tasks_state_seq_idx ON tasks (state, seq DESC);
CREATE INDEX tasks_batch_seq_idx ON tasks (batch_id, seq DESC) WHERE batch_id IS NOT NULL;
