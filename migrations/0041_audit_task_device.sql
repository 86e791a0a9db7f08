-- GET /api/v1/audit?device=…: "who did what to this box" reads a device's
-- task entries by the device ID they record (its tags and credentials
-- entries have it as object_id, audit_log_object_idx).
CREATE INDEX audit_log_task_device_idx ON audit_log ((after ->> 'device_id'), id DESC) WHERE object_type = 'task';
