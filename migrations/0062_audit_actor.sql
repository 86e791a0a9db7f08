-- The console's audit page filters by actor ("who did what", issue 13
-- item 4): newest first within one actor's entries.
CREATE INDEX audit_log_actor_idx ON audit_log (actor, id DESC);
