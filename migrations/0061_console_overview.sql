-- The console's overview counts the tasks finished over the last 24 hours
-- by outcome (issue 13 item 4): a range of this index rather than a scan of
-- every task ever kept.
CREATE INDEX tasks_finished_idx ON tasks (finished_at) WHERE finished_at IS NOT NULL;
