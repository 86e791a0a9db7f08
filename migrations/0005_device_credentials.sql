-- Per-device CPE credentials for the CWMP adapter's per-device auth mode
-- (issue 5 §6). A leaked table reveals no password:
--   * the CPE→ACS password is kept only as the Digest HA1,
--     MD5(username ":" realm ":" password), which is what the ACS needs to
--     verify Digest (and Basic) and nothing more;
--   * the connection-request password, which Duet must present to the CPE,
--     is AES-256-GCM ciphertext (12-byte random nonce || ciphertext || tag)
--     under DUET_CREDENTIALS_KEY, with the device ID as additional data so
--     a ciphertext copied to another row does not decrypt.
-- No foreign key to devices: credentials are set before a per-device CPE
-- can ever register (it cannot authenticate without them).
CREATE TABLE device_credentials (
    device_id                 text PRIMARY KEY,
    username                  text NOT NULL,
    realm                     text NOT NULL,
    digest_ha1                text NOT NULL,
    conn_req_username         text NOT NULL,
    conn_req_password_sealed  bytea NOT NULL,
    updated_at                timestamptz NOT NULL DEFAULT now()
);
