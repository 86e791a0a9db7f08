-- Which tables Duet holds a complete listing of, per device (issue 12 §3).
-- The parameter cache alone cannot say whether a table's instances are all
-- known: one Get of a single parameter puts one row under the table. A
-- policy decides that an instance is missing (and adds it, or reports the
-- device unable to comply) only on a complete listing; otherwise it reads
-- the table from the device first.
--
-- table_path is an object path whose whole subtree was read ("Device.NAT."
-- covers "Device.NAT.PortMapping."), or a table whose instances are known.
-- The most specific row covering a table decides:
--   level 2: every instance with every parameter was read (a Get of the
--            path, max_depth 0);
--   level 1: every instance is known and in the cache with its unique keys,
--            not every parameter (GetInstances; or a level-2 listing that
--            a USP ObjectCreation or Duet's own Add has since extended);
--   level 0: no longer complete (an instance appeared that the cache does
--            not show), overriding a listing of an ancestor.
-- listed_at is the time of the observation that set the row: an older one
-- never overwrites a newer. A bootstrap drops the rows listed before it.
CREATE TABLE table_listings (
    device_id  text NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    table_path text NOT NULL,
    level      smallint NOT NULL CHECK (level IN (0, 1, 2)),
    listed_at  timestamptz NOT NULL,
    PRIMARY KEY (device_id, table_path)
);
