-- Controller replicas sharing the task queue. Each TaskQueue has an ID and
-- holds the lease (session advisory lock) 'duet.lease.dispatcher.<id>'
-- while it runs.

-- The TaskQueue that dispatched the task ('' while queued, and for tasks
-- dispatched before this migration). A dispatched task whose dispatcher's
-- lease no PostgreSQL session holds is an orphan: its controller went away
-- with the task in flight, and a live one settles it.
ALTER TABLE tasks ADD COLUMN dispatcher text NOT NULL DEFAULT '';

-- Every sweep of every replica looks for orphans: the dispatched tasks
-- (at most one per device) without scanning the queued ones.
CREATE INDEX tasks_dispatched_idx ON tasks (seq) WHERE state = 'dispatched';
