-- The file repository (issue 14 §1, §2): firmware images, vendor
-- configuration files (device backups among them) and other files. The
-- bytes live in the NATS JetStream Object Store bucket "duet-files" under
-- the file's id; this table holds what Duet knows of each.
--   device_id: set for a file a device uploaded (a configuration backup),
--   listed under that device.
--   state: 'ready' once every byte is stored and checked; a row is only
--   written then, so it is always 'ready' today (kept for uploads that
--   may be resumed later).
CREATE TABLE files (
    id              text PRIMARY KEY,
    name            text NOT NULL CHECK (name <> ''),
    type            text NOT NULL CHECK (type IN ('firmware', 'vendor_config', 'other')),
    version         text NOT NULL DEFAULT '',
    product_classes text[] NOT NULL DEFAULT '{}',
    ouis            text[] NOT NULL DEFAULT '{}',
    data_model      text NOT NULL DEFAULT '',
    size            bigint NOT NULL CHECK (size >= 0),
    sha256          text NOT NULL,
    device_id       text REFERENCES devices (id) ON DELETE CASCADE,
    uploaded_by     text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX files_created_idx ON files (created_at DESC, id);
CREATE INDEX files_device_idx ON files (device_id, created_at DESC) WHERE device_id IS NOT NULL;

-- Every transfer the file listener served or received (issue 14 §2).
CREATE TABLE file_transfers (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    file_id     text NOT NULL,
    device_id   text NOT NULL,
    direction   text NOT NULL CHECK (direction IN ('download', 'upload')),
    bytes       bigint NOT NULL,
    duration_ms bigint NOT NULL,
    outcome     text NOT NULL,
    remote      text NOT NULL DEFAULT ''
);
CREATE INDEX file_transfers_file_idx ON file_transfers (file_id, at DESC);
CREATE INDEX file_transfers_device_idx ON file_transfers (device_id, at DESC);

-- The key signing per-transfer URLs (HMAC-SHA256), made once and shared
-- by every controller replica, so any replica's listener accepts a URL
-- another signed. The first controller to start writes it (from Go's
-- crypto/rand; INSERT ... ON CONFLICT DO NOTHING, so replicas agree).
CREATE TABLE file_signing_key (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    key bytea NOT NULL CHECK (length(key) >= 32)
);
