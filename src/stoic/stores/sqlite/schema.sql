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
    created_at       REAL    NOT NULL
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
