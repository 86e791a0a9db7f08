-- Device search (issue 5): free text, sorts and the indexes behind them.
--
-- What GET /api/v1/devices (and bulk task filters) can use an index for:
--   * protocol, online, manufacturer, product_class, software_version:
--     the (column, id) btrees of 0001;
--   * last_seen_after / last_seen_before: devices_last_seen_id_idx below;
--   * tag: device_tags_tag_idx (0020);
--   * q (free text): the trigram GIN index below, when pg_trgm can be
--     installed; without it q still works, as a sequential scan;
--   * param conditions: NOT an index of their own. Each is an EXISTS probe
--     of device_parameters' primary key (device_id, path) per candidate
--     device, so they are cheap when another condition narrows the
--     devices and cost one probe per registry row otherwise (an index on
--     (path, value) would double the write cost of the 50M-row cache);
--   * sort=id|last_seen|serial_number|manufacturer|product_class|
--     software_version, ascending or descending: each has a (column, id)
--     btree, so a keyset page ((column, id) > (key, id)) is a range scan.

-- (last_seen, id) replaces 0001's (last_seen): it serves the same range
-- filters and also the last_seen sort's keyset, for one index's write cost.
CREATE INDEX devices_last_seen_id_idx ON devices (last_seen, id);
DROP INDEX IF EXISTS devices_last_seen_idx;
CREATE INDEX devices_serial_number_idx ON devices (serial_number, id);

-- Free text: q=abc matches devices whose identity fields contain "abc",
-- case-insensitively. The fields are joined with U+001F (unit separator,
-- never in a device ID and refused in q) so a match never spans two
-- fields. pkg/store/search.go's searchExpr is this exact expression: the
-- planner only uses the index for an identical one.
--
-- pg_trgm ships with PostgreSQL (contrib; Debian's postgresql package has
-- it) and is a trusted extension, so the database owner can create it.
-- Where it cannot be installed the migration still succeeds, with a
-- warning, and q falls back to a sequential scan.
DO $$
BEGIN
    BEGIN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
    EXCEPTION WHEN undefined_file OR insufficient_privilege OR feature_not_supported THEN
        RAISE WARNING 'pg_trgm is not available (%): device free-text search (q=) will scan the registry', SQLERRM;
        RETURN;
    END;
    CREATE INDEX devices_search_trgm_idx ON devices USING gin ((lower(
        id || E'\x1f' || serial_number || E'\x1f' || manufacturer || E'\x1f' || oui || E'\x1f' ||
        product_class || E'\x1f' || model_name || E'\x1f' || software_version)) gin_trgm_ops);
END
$$;
