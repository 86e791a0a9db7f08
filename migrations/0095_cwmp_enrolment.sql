-- Automatic per-device CWMP credentials (issue 15 §6, docs/guide-cwmp.md
-- "Enrolment"). One row per device Duet tried to enrol:
--   pending  : new credentials were generated and a SetParameterValues of
--              ManagementServer.Password / ConnectionRequestPassword is
--              queued or was accepted (set_at); the CPE's old (shared)
--              credentials stay accepted, and so do the new ones;
--   enrolled : the CPE authenticated with the new ones; they moved to
--              device_credentials and the shared ones are refused for it;
--   failed   : the Set faulted, or the CPE kept using its old credentials
--              after accepting the Set; the pending ones were discarded
--              (reason says why) and the device stays on shared.
-- As in device_credentials, no password is kept in clear: the CPE's ACS
-- password as its Digest HA1, and, only until the CPE has answered the Set,
-- sealed with DUET_CREDENTIALS_KEY (password_sealed) so the Set can be sent
-- (or sent again); the connection-request password sealed.
CREATE TABLE cwmp_enrolments (
    device_id                 text PRIMARY KEY,
    state                     text NOT NULL CHECK (state IN ('pending', 'enrolled', 'failed')),
    reason                    text NOT NULL DEFAULT '',
    username                  text NOT NULL DEFAULT '',
    realm                     text NOT NULL DEFAULT '',
    digest_ha1                text NOT NULL DEFAULT '',
    password_sealed           bytea,
    conn_req_username         text NOT NULL DEFAULT '',
    conn_req_password_sealed  bytea,
    task_id                   text,
    set_at                    timestamptz,
    old_sessions              integer NOT NULL DEFAULT 0,
    attempts                  integer NOT NULL DEFAULT 0,
    updated_at                timestamptz NOT NULL DEFAULT now()
);
