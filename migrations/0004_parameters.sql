-- The parameter cache (issue 5 §3): the last value Duet learned of each
-- (device, path), from informs, Get results and value changes.
--
-- One narrow row per parameter, keyed (device_id, path): every read is "a
-- subtree of one device", a range scan of the primary key, and every write
-- is a batched upsert that touches only the rows that changed. At 100k
-- devices x 500 parameters (50M rows) the key stays the only index, so
-- writes stay cheap; a JSONB document per device would rewrite ~500 values
-- on every value change. COLLATE "C" makes the btree usable for
-- LIKE 'Device.WiFi.%' prefix scans whatever the database's locale.
CREATE TABLE device_parameters (
    device_id  text NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    path       text COLLATE "C" NOT NULL,
    value      text NOT NULL,
    -- TR-106 type name; '' when the source did not say.
    type       text NOT NULL DEFAULT '',
    -- 0 unknown, 1 read-only, 2 read-write, 3 write-only (duet.v1.Writability).
    writable   smallint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (device_id, path)
);
