-- The current full Stoic schema for sqlite: what all migrations together create.
-- Kept in step with migrations/ by a test; read this file, change migrations/.

CREATE TABLE stoic_schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL,
    applied_at REAL NOT NULL
);

-- position is the rowid: appends are serialised by SQLite's single writer
-- (BEGIN IMMEDIATE), so positions are assigned in commit order, without gaps.
CREATE TABLE stoic_events (
    position    INTEGER PRIMARY KEY,
    stream_id   TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    event_id    TEXT    NOT NULL,
    type        TEXT    NOT NULL,
    data        TEXT    NOT NULL,
    metadata    TEXT,
    recorded_at REAL    NOT NULL
);
CREATE UNIQUE INDEX stoic_events_stream_version ON stoic_events (stream_id, version);
CREATE UNIQUE INDEX stoic_events_event_id ON stoic_events (event_id);

-- One row per projection: its checkpoint and its lease (holder + fencing epoch).
CREATE TABLE stoic_projections (
    name             TEXT    PRIMARY KEY,
    position         INTEGER NOT NULL DEFAULT 0,
    events_processed INTEGER NOT NULL DEFAULT 0,
    holder           TEXT,
    epoch            INTEGER NOT NULL DEFAULT 0,
    held_since       REAL,
    updated_at       REAL,
    created_at       REAL    NOT NULL,
    breaker_state     TEXT    NOT NULL DEFAULT 'closed',
    breaker_failures  INTEGER NOT NULL DEFAULT 0,
    breaker_opened_at REAL,
    breaker_reason    TEXT,
    paused_at         REAL,
    paused_by         TEXT,
    paused_reason     TEXT,
    verified_at       REAL,
    verified_missing  INTEGER NOT NULL DEFAULT 0,
    request           TEXT,
    request_position  INTEGER,
    request_streams   TEXT,
    request_seq       INTEGER NOT NULL DEFAULT 0,
    requested_at      REAL,
    requested_by      TEXT,
    request_reason    TEXT,
    idempotent        INTEGER NOT NULL DEFAULT 0,
    resettable        INTEGER NOT NULL DEFAULT 0,
    drift_checked_at  REAL,
    drift_checked     INTEGER NOT NULL DEFAULT 0,
    drift_count       INTEGER NOT NULL DEFAULT 0,
    drift_streams     TEXT,
    version             INTEGER,
    generation          INTEGER,
    previous_version    INTEGER,
    previous_generation INTEGER,
    previous_position   INTEGER,
    switched_at         REAL,
    build_note          TEXT,
    segments            INTEGER
);

-- Worker processes; a worker is alive while expires_at is in the future.
CREATE TABLE stoic_workers (
    worker_id    TEXT    PRIMARY KEY,
    hostname     TEXT    NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   REAL    NOT NULL,
    heartbeat_at REAL    NOT NULL,
    expires_at   REAL    NOT NULL
);

-- A failed event of a projection. While `blocking`, later events of its stream
-- (policy park) or of the whole projection (policy halt) wait behind it.
CREATE TABLE stoic_failures (
    id              INTEGER PRIMARY KEY,
    projection      TEXT    NOT NULL,
    position        INTEGER NOT NULL,
    event_id        TEXT    NOT NULL,
    stream_id       TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    policy          TEXT    NOT NULL,
    error_class     TEXT    NOT NULL,
    message         TEXT    NOT NULL,
    traceback       TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    first_failed_at REAL    NOT NULL,
    last_failed_at  REAL    NOT NULL,
    next_retry_at   REAL,
    status          TEXT    NOT NULL,
    resolution      TEXT,
    actor           TEXT,
    note            TEXT,
    blocking        INTEGER NOT NULL,
    retry_requested INTEGER NOT NULL DEFAULT 0,
    parked          INTEGER NOT NULL DEFAULT 0,
    updated_at      REAL    NOT NULL
);
CREATE UNIQUE INDEX stoic_failures_event ON stoic_failures (projection, event_id);
CREATE INDEX stoic_failures_status ON stoic_failures (projection, status);

-- Every admin action: who, what, on what, why, when, and how it ended.
CREATE TABLE stoic_audit (
    id      INTEGER PRIMARY KEY,
    at      REAL    NOT NULL,
    actor   TEXT    NOT NULL,
    action  TEXT    NOT NULL,
    target  TEXT    NOT NULL,
    reason  TEXT,
    outcome TEXT    NOT NULL,
    details TEXT
);
