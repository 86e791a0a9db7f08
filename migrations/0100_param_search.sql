-- Indexed parameter search (issue 17): the values of the parameters an
-- operator filters devices on most, copied beside the cache with value
-- indexes, so a `param` condition on one of them can start from the
-- devices that match instead of probing the cache for every device.
--
-- Why a copy of a configured few paths, not an index on all of
-- device_parameters: the cache is the write path (every Inform, value
-- change and Get result, 50M rows at 100k x 500). Its primary key is its
-- only index, so an update of a value can be HOT (no index write); an
-- index on value, even a partial one, would make every value change of
-- every parameter write a second and third index entry, and double the
-- cache's index size. Operators filter on a handful of paths (model,
-- firmware, hardware, inform interval, a WAN or Wi-Fi setting); only
-- their values pay, and a condition on any other path still works as
-- before (a probe of the cache's key per device).
--
-- Which paths: the DUET_SEARCH_PATHS setting, written into
-- parameter_search_paths by `duet serve` (Store.SetSearchPaths), each
-- path with its own partition of device_parameter_search. A partition per
-- path gives each path its own statistics: the planner then knows that
-- "interval <= 600" holds for 17% of one path's values and "Model7" for
-- 1%, where one table's statistics mix every path's values (and its
-- numbers with other paths' NULLs) and were off by 3x and more, enough to
-- pick a hash of 30k rows over a walk of a few hundred. It also makes
-- taking a path out a DROP of its partition.
--
-- A path added later is backfilled from the cache in the background;
-- until then (ready = false) searches on it use the cache. added_xid is
-- the transaction that added it: the backfill waits until every
-- transaction older than it has ended, so a write that did not see the
-- path yet has committed before the backfill reads the cache.
CREATE TABLE parameter_search_paths (
    id        integer GENERATED ALWAYS AS IDENTITY UNIQUE,
    path      text COLLATE "C" PRIMARY KEY,
    ready     boolean NOT NULL DEFAULT false,
    added_xid xid8 NOT NULL DEFAULT pg_current_xact_id()
);

-- One row per cached value of a configured path, partitioned by path
-- (device_parameter_search_<id>, created with the path). It is written in
-- the same statement as the cache (pkg/store/parameters.go,
-- upsertParametersSQL, from the rows that statement stored) and goes when
-- the cached value goes: device_parameters_forget_search below deletes
-- the copies of every delete of the cache (a deleted object, a factory
-- reset, a deleted device).
--
-- vkey is the value's first 200 characters: short enough for any btree
-- entry (800 bytes at most), and for an operand shorter than that it
-- decides eq, ne and prefix alone (pkg/store/search.go, indexedSQL). num
-- is the value as a number when it is one by the same pattern as
-- search.go's numericRE (lt/le/gt/ge compare it), else NULL.
CREATE TABLE device_parameter_search (
    path      text COLLATE "C" NOT NULL,
    device_id text NOT NULL,
    value     text COLLATE "C" NOT NULL,
    vkey      text COLLATE "C" GENERATED ALWAYS AS (left(value, 200)) STORED,
    num       numeric GENERATED ALWAYS AS (
        CASE WHEN value ~ '^\s*[-+]?([0-9]{1,100}(\.[0-9]{0,100})?|\.[0-9]{1,100})([eE][-+]?[0-9]{1,3})?\s*$'
            THEN value::numeric END) STORED,
    -- A path's values in device order, with what the conditions compare:
    -- a page sorted by id that a broad condition fills (Status = Up on
    -- 10%, interval > 3000 on 17%) walks this beside devices' key, from
    -- the index alone.
    PRIMARY KEY (path, device_id) INCLUDE (vkey, num)
) PARTITION BY LIST (path);

-- A selective condition starts here: eq and prefix on vkey, the matches
-- of one value in device order (device_id last); lt/le/gt/ge on num.
CREATE INDEX device_parameter_search_value_idx ON device_parameter_search (path, vkey, device_id);
CREATE INDEX device_parameter_search_num_idx ON device_parameter_search (path, num, device_id) WHERE num IS NOT NULL;

-- The copies go with the cache's rows: once per DELETE statement, from
-- the rows it deleted, whatever their paths. Not a foreign key: its
-- cascade is a trigger call per deleted row of the cache, whatever its
-- path (measured: 8,000 rows of 2,000 devices took 1.0-1.4 s against
-- 8-15 ms without); this is one join per statement. Its DELETE takes a snapshot of its own,
-- after the cache rows were deleted, so it also sees a copy that a write
-- of the same row committed while the delete waited for it. The backfill
-- (Store.BackfillSearchPaths) holds a key-share lock on each cache row it
-- copies, so a delete waits for its copies to be committed and removes
-- them.
--
-- EXECUTE plans the join for each statement's number of deleted rows: a
-- plan cached for a delete of thousands of rows (a hash join over every
-- copy) made the next delete of one device's rows take 600 ms; planned
-- afresh it probes the copies' key per deleted row (0.4 ms).
CREATE FUNCTION device_parameters_forget_search() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE 'DELETE FROM device_parameter_search s USING gone g WHERE s.path = g.path AND s.device_id = g.device_id';
    RETURN NULL;
END
$$;
CREATE TRIGGER device_parameters_forget_search AFTER DELETE ON device_parameters
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION device_parameters_forget_search();
