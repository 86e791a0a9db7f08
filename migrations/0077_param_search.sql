-- Parameter conditions of device searches (issue 17): "devices whose cached
-- Device.DeviceInfo.ModelName is X" was an EXISTS probe of the primary key
-- for every device in ID order until a page was full, 100 ms and more at
-- 100k devices when few match. These indexes let PostgreSQL start from the
-- matching parameters instead, whichever path is asked: an index rather
-- than denormalised columns, because which parameters an operator filters
-- on is the operator's choice (any path of any data model), and a column
-- per parameter would need a migration per choice. The price is write
-- cost on value changes (a periodic Inform whose values did not change
-- stays a HOT update: only updated_at moves) and size, about the primary
-- key's again.
--
-- Text (eq, prefix): the first 128 characters, so a long value never
-- exceeds a btree entry's limit (search.go compares the whole value on
-- top); COLLATE "C" so a prefix is a range of the index.
CREATE INDEX device_parameters_value_idx ON device_parameters (path, (left(value, 128) COLLATE "C"), device_id);

-- Numbers (lt, le, gt, ge): only values that are numbers (numericRE in
-- pkg/store/search.go, which must stay identical to this pattern), as
-- numeric.
CREATE INDEX device_parameters_number_idx ON device_parameters
    (path, (CASE WHEN value ~ '^\s*[-+]?([0-9]{1,100}(\.[0-9]{0,100})?|\.[0-9]{1,100})([eE][-+]?[0-9]{1,3})?\s*$' THEN value::numeric END), device_id)
    WHERE value ~ '^\s*[-+]?([0-9]{1,100}(\.[0-9]{0,100})?|\.[0-9]{1,100})([eE][-+]?[0-9]{1,3})?\s*$';

ANALYZE device_parameters;
