-- The controller replica running a task batch: its dispatcher ID, whose
-- lease (duet.lease.dispatcher.<id>) says it is alive. A starting or
-- sweeping replica takes over only the batches whose runner is gone, so a
-- batch runs in one replica at a time (docs/scaling.md, Singletons).
ALTER TABLE task_batches ADD COLUMN runner text NOT NULL DEFAULT '';
