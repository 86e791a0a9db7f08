-- Who made a task (issue 11 item 8): the API token's owner ("name (id)")
-- for a task created through the API, the batch's actor for a task of a
-- task batch, "policy:<id>" for one a policy queued; '' for tasks older
-- than this column whose origin is not recorded.
ALTER TABLE tasks ADD COLUMN created_by text NOT NULL DEFAULT '';

-- What can be recovered of the older tasks: their batch's actor, their
-- policy.
UPDATE tasks t SET created_by = b.actor FROM task_batches b WHERE t.batch_id = b.id;
UPDATE tasks t SET created_by = 'policy:' || pt.policy_id FROM policy_tasks pt
    WHERE pt.task_id = t.id AND t.created_by = '';
