-- Stoic schema 3 for SQLite: operator requests (reset, replay) carried out by
-- the projection's holder, and what a projection declares about itself.

ALTER TABLE stoic_projections ADD COLUMN request TEXT;
ALTER TABLE stoic_projections ADD COLUMN request_position INTEGER;
ALTER TABLE stoic_projections ADD COLUMN request_streams TEXT;
ALTER TABLE stoic_projections ADD COLUMN request_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE stoic_projections ADD COLUMN requested_at REAL;
ALTER TABLE stoic_projections ADD COLUMN requested_by TEXT;
ALTER TABLE stoic_projections ADD COLUMN request_reason TEXT;
ALTER TABLE stoic_projections ADD COLUMN idempotent INTEGER NOT NULL DEFAULT 0;
ALTER TABLE stoic_projections ADD COLUMN resettable INTEGER NOT NULL DEFAULT 0;

-- The last continuous reconciliation: when, how many streams, which drifted.
ALTER TABLE stoic_projections ADD COLUMN drift_checked_at REAL;
ALTER TABLE stoic_projections ADD COLUMN drift_checked INTEGER NOT NULL DEFAULT 0;
ALTER TABLE stoic_projections ADD COLUMN drift_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE stoic_projections ADD COLUMN drift_streams TEXT;

-- Versioned read models (rebuild without read downtime): the generation whose
-- tables the views show, the one before it (for a rollback), and a build's note.
ALTER TABLE stoic_projections ADD COLUMN version INTEGER;
ALTER TABLE stoic_projections ADD COLUMN generation INTEGER;
ALTER TABLE stoic_projections ADD COLUMN previous_version INTEGER;
ALTER TABLE stoic_projections ADD COLUMN previous_generation INTEGER;
ALTER TABLE stoic_projections ADD COLUMN previous_position INTEGER;
ALTER TABLE stoic_projections ADD COLUMN switched_at REAL;
ALTER TABLE stoic_projections ADD COLUMN build_note TEXT;

-- Segmented projections: a segment row's segment count (its index is in its name).
ALTER TABLE stoic_projections ADD COLUMN segments INTEGER;
