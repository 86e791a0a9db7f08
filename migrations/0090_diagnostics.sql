-- On-device diagnostics results (issue 14 §6): one row per diagnostic
-- task that ended, whichever protocol ran it, in one schema.
--   kind: ping, traceroute, download, upload, nslookup, udp_echo.
--   target: the host or URL tested.
--   status: the device's own word (DiagnosticsState / Status, e.g.
--   Complete, Error_CannotResolveHostName), '' when it gave none (the
--   task failed before the test ran, or timed out).
--   result: the per-kind figures (controller.DiagnosticResult as JSON).
CREATE TABLE device_diagnostics (
    task_id       text PRIMARY KEY,
    device_id     text NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    kind          text NOT NULL CHECK (kind IN ('ping', 'traceroute', 'download', 'upload', 'nslookup', 'udp_echo')),
    target        text NOT NULL DEFAULT '',
    success       boolean NOT NULL,
    status        text NOT NULL DEFAULT '',
    error_code    text NOT NULL DEFAULT '',
    error_message text NOT NULL DEFAULT '',
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz NOT NULL,
    result        jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX device_diagnostics_device_idx ON device_diagnostics (device_id, finished_at DESC, task_id DESC);
