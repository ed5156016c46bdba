-- Stoic schema 2 for PostgreSQL: failure records, circuit breaker, pause, audit log.

ALTER TABLE stoic_projections
    ADD COLUMN breaker_state     TEXT        NOT NULL DEFAULT 'closed',
    ADD COLUMN breaker_failures  INTEGER     NOT NULL DEFAULT 0,
    ADD COLUMN breaker_opened_at TIMESTAMPTZ,
    ADD COLUMN breaker_reason    TEXT,
    ADD COLUMN paused_at         TIMESTAMPTZ,
    ADD COLUMN paused_by         TEXT,
    ADD COLUMN paused_reason     TEXT,
    ADD COLUMN verified_at       TIMESTAMPTZ,
    ADD COLUMN verified_missing  BIGINT      NOT NULL DEFAULT 0;

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
