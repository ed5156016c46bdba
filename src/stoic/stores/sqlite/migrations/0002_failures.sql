-- Stoic schema 2 for SQLite: failure records, circuit breaker, pause, audit log.

ALTER TABLE stoic_projections ADD COLUMN breaker_state TEXT NOT NULL DEFAULT 'closed';
ALTER TABLE stoic_projections ADD COLUMN breaker_failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE stoic_projections ADD COLUMN breaker_opened_at REAL;
ALTER TABLE stoic_projections ADD COLUMN breaker_reason TEXT;
ALTER TABLE stoic_projections ADD COLUMN paused_at REAL;
ALTER TABLE stoic_projections ADD COLUMN paused_by TEXT;
ALTER TABLE stoic_projections ADD COLUMN paused_reason TEXT;
ALTER TABLE stoic_projections ADD COLUMN verified_at REAL;
ALTER TABLE stoic_projections ADD COLUMN verified_missing INTEGER NOT NULL DEFAULT 0;

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
