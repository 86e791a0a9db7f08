-- Routine events (issue 12 item 5). A CPE on a 300 s interval sends 288
-- periodic Informs a day; a row each in device_events was ~0.5 MB per
-- device per day. Routine kinds (DUET_EVENT_HISTORY_KINDS) are now counted
-- on the device instead of stored: how many Informs (CWMP Inform, USP
-- Periodic!) the controller applied, and the time of the last one.
ALTER TABLE devices
    ADD COLUMN informs_total  bigint NOT NULL DEFAULT 0,
    ADD COLUMN last_inform_at timestamptz;

-- Per-kind retention: the pruner deletes one kind's old events at a time.
CREATE INDEX device_events_kind_time_idx ON device_events (kind, time);
