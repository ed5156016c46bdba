-- The current full Stoic schema for postgres: what all migrations together create.
-- Kept in step with migrations/ by a test; read this file, change migrations/.

CREATE TABLE stoic_schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL
);

-- position is assigned as max(position) + n while the appending transaction
-- holds a transaction-level advisory lock until it commits, so positions are
-- gap-free and follow commit order: a reader never skips an event (docs/ordering.md).
CREATE TABLE stoic_events (
    position    BIGINT      PRIMARY KEY,
    stream_id   TEXT        NOT NULL,
    version     BIGINT      NOT NULL,
    event_id    UUID        NOT NULL,
    type        TEXT        NOT NULL,
    data        JSONB       NOT NULL,
    metadata    JSONB,
    recorded_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT stoic_events_stream_version UNIQUE (stream_id, version),
    CONSTRAINT stoic_events_event_id UNIQUE (event_id)
);

-- One row per projection: its checkpoint and its lease (holder + fencing epoch).
CREATE TABLE stoic_projections (
    name             TEXT        PRIMARY KEY,
    position         BIGINT      NOT NULL DEFAULT 0,
    events_processed BIGINT      NOT NULL DEFAULT 0,
    holder           TEXT,
    epoch            BIGINT      NOT NULL DEFAULT 0,
    held_since       TIMESTAMPTZ,
    updated_at       TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    breaker_state     TEXT        NOT NULL DEFAULT 'closed',
    breaker_failures  INTEGER     NOT NULL DEFAULT 0,
    breaker_opened_at TIMESTAMPTZ,
    breaker_reason    TEXT,
    paused_at         TIMESTAMPTZ,
    paused_by         TEXT,
    paused_reason     TEXT,
    verified_at       TIMESTAMPTZ,
    verified_missing  BIGINT      NOT NULL DEFAULT 0,
    request           TEXT,
    request_position  BIGINT,
    request_streams   JSONB,
    request_seq       BIGINT      NOT NULL DEFAULT 0,
    requested_at      TIMESTAMPTZ,
    requested_by      TEXT,
    request_reason    TEXT,
    idempotent        BOOLEAN     NOT NULL DEFAULT false,
    resettable        BOOLEAN     NOT NULL DEFAULT false,
    drift_checked_at  TIMESTAMPTZ,
    drift_checked     INTEGER     NOT NULL DEFAULT 0,
    drift_count       INTEGER     NOT NULL DEFAULT 0,
    drift_streams     JSONB,
    version             INTEGER,
    generation          INTEGER,
    previous_version    INTEGER,
    previous_generation INTEGER,
    previous_position   BIGINT,
    switched_at         TIMESTAMPTZ,
    build_note          TEXT,
    segments            INTEGER
);

-- Worker processes; a worker is alive while expires_at is in the future
-- (the database's clock decides, so workers on several machines agree).
CREATE TABLE stoic_workers (
    worker_id    TEXT        PRIMARY KEY,
    hostname     TEXT        NOT NULL,
    pid          INTEGER     NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL
);

-- A failed event of a projection. While `blocking`, later events of its stream
-- (policy park) or of the whole projection (policy halt) wait behind it.
CREATE TABLE stoic_failures (
    id              BIGSERIAL   PRIMARY KEY,
    projection      TEXT        NOT NULL,
    position        BIGINT      NOT NULL,
    event_id        UUID        NOT NULL,
    stream_id       TEXT        NOT NULL,
    event_type      TEXT        NOT NULL,
    policy          TEXT        NOT NULL,
    error_class     TEXT        NOT NULL,
    message         TEXT        NOT NULL,
    traceback       TEXT        NOT NULL,
    attempts        INTEGER     NOT NULL,
    first_failed_at TIMESTAMPTZ NOT NULL,
    last_failed_at  TIMESTAMPTZ NOT NULL,
    next_retry_at   TIMESTAMPTZ,
    status          TEXT        NOT NULL,
    resolution      TEXT,
    actor           TEXT,
    note            TEXT,
    blocking        BOOLEAN     NOT NULL,
    retry_requested BOOLEAN     NOT NULL DEFAULT false,
    parked          BIGINT      NOT NULL DEFAULT 0,
    updated_at      TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX stoic_failures_event ON stoic_failures (projection, event_id);
CREATE INDEX stoic_failures_status ON stoic_failures (projection, status);

-- Every admin action: who, what, on what, why, when, and how it ended.
CREATE TABLE stoic_audit (
    id      BIGSERIAL   PRIMARY KEY,
    at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor   TEXT        NOT NULL,
    action  TEXT        NOT NULL,
    target  TEXT        NOT NULL,
    reason  TEXT,
    outcome TEXT        NOT NULL,
    details JSONB
);
