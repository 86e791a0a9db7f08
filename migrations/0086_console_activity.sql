-- The console's overview charts (issue 13 item 4, "Overview"): Informs
-- and other device events per minute over the last hours, new devices per
-- day. Informs are counted on each device (0046), not stored one a row,
-- so once a minute the console samples the fleet's total and the events
-- stored in that minute: one row a minute, kept two days. Replicas sample
-- the same minute once (the primary key).
CREATE TABLE console_activity (
    minute        timestamptz PRIMARY KEY,
    -- sum(devices.informs_total) when sampled; the chart shows the
    -- difference between consecutive minutes.
    informs_total bigint NOT NULL,
    -- device_events stored during the minute before it.
    events        bigint NOT NULL
);
-- New devices per day: a range of this index.
CREATE INDEX devices_first_seen_idx ON devices (first_seen);
