-- The device registry: one row per device, whatever protocol reaches it.
CREATE TABLE devices (
    id                     text PRIMARY KEY,
    protocol               text NOT NULL CHECK (protocol IN ('cwmp', 'usp')),
    manufacturer           text NOT NULL DEFAULT '',
    oui                    text NOT NULL DEFAULT '',
    product_class          text NOT NULL DEFAULT '',
    serial_number          text NOT NULL DEFAULT '',
    model_name             text NOT NULL DEFAULT '',
    software_version       text NOT NULL DEFAULT '',
    hardware_version       text NOT NULL DEFAULT '',
    provisioning_code      text NOT NULL DEFAULT '',
    data_model             text NOT NULL DEFAULT '',
    first_seen             timestamptz NOT NULL,
    last_seen              timestamptz NOT NULL,
    online                 boolean NOT NULL DEFAULT false,
    -- Event time of the event that last decided "online"; an older event
    -- replayed later never overrides a newer state.
    online_changed_at      timestamptz NOT NULL,
    transport              text NOT NULL DEFAULT '',
    address                text NOT NULL DEFAULT '',
    connection_request_url text NOT NULL DEFAULT '',
    -- Event time of the newest event whose identity facts were applied.
    facts_updated_at       timestamptz NOT NULL
);

-- Filters of GET /api/v1/devices. Paging is by id (the primary key); each
-- filter index ends with id so a filtered page is an index range scan.
CREATE INDEX devices_protocol_idx         ON devices (protocol, id);
CREATE INDEX devices_manufacturer_idx     ON devices (manufacturer, id);
CREATE INDEX devices_product_class_idx    ON devices (product_class, id);
CREATE INDEX devices_software_version_idx ON devices (software_version, id);
CREATE INDEX devices_online_idx           ON devices (online, id);
CREATE INDEX devices_last_seen_idx        ON devices (last_seen);

-- Every device event the controller consumed, keyed by the event's own ID
-- so a redelivered event is stored once (device history, issue 5).
CREATE TABLE device_events (
    id          text PRIMARY KEY,
    device_id   text NOT NULL,
    kind        text NOT NULL,
    time        timestamptz NOT NULL,
    stream_seq  bigint NOT NULL,
    payload     bytea NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX device_events_device_time_idx ON device_events (device_id, time DESC);
CREATE INDEX device_events_time_idx ON device_events (time);
