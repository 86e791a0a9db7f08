-- Deleted subtrees of the parameter cache (issue 12 item 2). A value is
-- cached only if it was observed after every deletion that covers its
-- path: a Get result, value change or inform that reached the controller
-- late can then never bring back an instance a Delete removed, or what a
-- device forgot in a factory reset.
--
-- prefix is an object path ("Device.NAT.PortMapping.3.") or '' for the
-- whole device (a bootstrap). deleted_at is when the deletion was observed
-- on the same clock as device_parameters.updated_at of the values it must
-- beat (a task's dispatch time for task results, the event time for
-- events). Rows older than the event stream's retention can no longer be
-- beaten by a late write and are pruned.
CREATE TABLE device_parameter_tombstones (
    device_id  text NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    prefix     text COLLATE "C" NOT NULL,
    deleted_at timestamptz NOT NULL,
    PRIMARY KEY (device_id, prefix)
);
CREATE INDEX device_parameter_tombstones_deleted_at_idx ON device_parameter_tombstones (deleted_at);
