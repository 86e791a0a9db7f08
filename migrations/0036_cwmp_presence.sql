-- CWMP presence (issue 11 §3): a CPE is online while it keeps its inform
-- schedule. The controller's presence sweeper takes an online CPE offline
-- when no session came for its PeriodicInformInterval times a tolerance
-- (plus a grace), or a default when the interval is unknown.

-- The CPE's ManagementServer.PeriodicInformInterval in seconds (0 =
-- unknown), learned from the parameter cache by the trigger below, so the
-- sweeper reads one narrow row per device instead of joining the cache.
ALTER TABLE devices ADD COLUMN inform_interval integer NOT NULL DEFAULT 0;

-- The sweeper's question, "online CPEs not seen since T", is a range scan
-- of this partial index; USP agents and offline CPEs are not in it.
CREATE INDEX devices_cwmp_online_seen_idx ON devices (last_seen) WHERE protocol = 'cwmp' AND online;

-- Learn the interval wherever the cache gets it (an Inform's parameters, a
-- Get, a Set that succeeded), TR-181 Device. and TR-098
-- InternetGatewayDevice. alike. The device row is written only when the
-- value changes.
CREATE FUNCTION duet_learn_inform_interval() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.value ~ '^[0-9]{1,9}$' THEN
        UPDATE devices SET inform_interval = NEW.value::integer
        WHERE id = NEW.device_id AND inform_interval <> NEW.value::integer;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER device_parameters_inform_interval
    AFTER INSERT OR UPDATE OF value ON device_parameters
    FOR EACH ROW
    WHEN (NEW.path IN ('Device.ManagementServer.PeriodicInformInterval',
                       'InternetGatewayDevice.ManagementServer.PeriodicInformInterval'))
    EXECUTE FUNCTION duet_learn_inform_interval();

-- What the cache already knows: two primary-key lookups per CPE.
UPDATE devices d SET inform_interval = p.value::integer
FROM device_parameters p
WHERE d.protocol = 'cwmp' AND p.device_id = d.id
  AND p.path IN ('Device.ManagementServer.PeriodicInformInterval',
                 'InternetGatewayDevice.ManagementServer.PeriodicInformInterval')
  AND p.value ~ '^[0-9]{1,9}$';
