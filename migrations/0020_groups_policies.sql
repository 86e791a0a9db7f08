-- Groups, policies and the audit log (issue 6). Numbered 0020 so it never
-- collides with the task-engine migrations being written in parallel.

-- Operator-assigned device labels; group filters see them as `tags`.
CREATE TABLE device_tags (
    device_id text NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    tag       text NOT NULL CHECK (tag <> '' AND length(tag) <= 128),
    PRIMARY KEY (device_id, tag)
);
CREATE INDEX device_tags_tag_idx ON device_tags (tag, device_id);

-- A group is a name and a CEL filter over device facts (controller/policy
-- checks the filter before it is stored).
CREATE TABLE groups (
    id         text PRIMARY KEY,
    name       text NOT NULL UNIQUE CHECK (name <> ''),
    filter     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- A policy is desired state for a group's devices. A group with policies
-- cannot be deleted (RESTRICT): dropping the group would silently orphan
-- the configuration its devices are held to.
CREATE TABLE policies (
    id         text PRIMARY KEY,
    group_id   text NOT NULL REFERENCES groups (id) ON DELETE RESTRICT,
    name       text NOT NULL CHECK (name <> ''),
    priority   integer NOT NULL DEFAULT 0,
    kind       text NOT NULL,
    spec       jsonb NOT NULL,
    enabled    boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (group_id, name)
);
CREATE INDEX policies_group_idx ON policies (group_id, priority DESC, id);

-- Who changed what, when, with the object before and after (NULL for a
-- create's before and a delete's after). Written in the same transaction
-- as the change it records.
CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    action      text NOT NULL,
    object_type text NOT NULL,
    object_id   text NOT NULL,
    before      jsonb,
    after       jsonb
);
CREATE INDEX audit_log_object_idx ON audit_log (object_type, object_id, id DESC);
