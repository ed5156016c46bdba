-- Stoic schema 3 for PostgreSQL: operator requests (reset, replay) carried out
-- by the projection's holder, and what a projection declares about itself.

ALTER TABLE stoic_projections
    ADD COLUMN request          TEXT,
    ADD COLUMN request_position BIGINT,
    ADD COLUMN request_streams  JSONB,
    ADD COLUMN request_seq      BIGINT      NOT NULL DEFAULT 0,
    ADD COLUMN requested_at     TIMESTAMPTZ,
    ADD COLUMN requested_by     TEXT,
    ADD COLUMN request_reason   TEXT,
    ADD COLUMN idempotent       BOOLEAN     NOT NULL DEFAULT false,
    ADD COLUMN resettable       BOOLEAN     NOT NULL DEFAULT false,
    -- The last continuous reconciliation: when, how many streams, which drifted.
    ADD COLUMN drift_checked_at TIMESTAMPTZ,
    ADD COLUMN drift_checked    INTEGER     NOT NULL DEFAULT 0,
    ADD COLUMN drift_count      INTEGER     NOT NULL DEFAULT 0,
    ADD COLUMN drift_streams    JSONB,
    -- Versioned read models (rebuild without read downtime): the generation whose
    -- tables the views show, the one before it (for a rollback), and a build's note.
    ADD COLUMN version             INTEGER,
    ADD COLUMN generation          INTEGER,
    ADD COLUMN previous_version    INTEGER,
    ADD COLUMN previous_generation INTEGER,
    ADD COLUMN previous_position   BIGINT,
    ADD COLUMN switched_at         TIMESTAMPTZ,
    ADD COLUMN build_note          TEXT,
    -- Segmented projections: a segment row's segment count (its index is in its name).
    ADD COLUMN segments            INTEGER;
