-- Stoic queries for SQLite. Parameters use the qmark style; times are unix seconds (REAL).

-- name: head
-- Returns the last committed global position.
SELECT coalesce(max(position), 0) FROM stoic_events;

-- name: stream_version
-- Returns a stream's current version (0 when it does not exist).
SELECT coalesce(max(version), 0) FROM stoic_events WHERE stream_id = ?;

-- name: insert_event
-- Inserts one event at a position computed under the write lock.
INSERT INTO stoic_events (position, stream_id, version, event_id, type, data, metadata, recorded_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?);

-- name: read_all
-- Reads committed events after a position, in global order.
SELECT position, stream_id, version, type, event_id, data, metadata, recorded_at
FROM stoic_events WHERE position > ? ORDER BY position LIMIT ?;

-- name: read_stream
-- Reads a stream's events from a version on.
SELECT position, stream_id, version, type, event_id, data, metadata, recorded_at
FROM stoic_events WHERE stream_id = ? AND version >= ? ORDER BY version LIMIT ?;

-- name: ensure_projection
-- Creates a projection's row at position 0 if it is missing.
INSERT INTO stoic_projections (name, created_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING;

-- name: claim_projection
-- Takes a projection that nobody live holds, bumping the fencing epoch.
UPDATE stoic_projections
SET holder = :worker, epoch = epoch + 1, held_since = :now
WHERE name = :name
  AND (holder IS NULL
       OR holder = :worker
       OR NOT EXISTS (SELECT 1 FROM stoic_workers w
                      WHERE w.worker_id = stoic_projections.holder AND w.expires_at > :now))
RETURNING epoch, position;

-- name: release_projection
-- Frees a projection if this lease still holds it.
UPDATE stoic_projections SET holder = NULL, held_since = NULL
WHERE name = ? AND holder = ? AND epoch = ?;

-- name: advance_checkpoint
-- Moves the checkpoint, fenced: only from the expected position, only under the current lease.
UPDATE stoic_projections
SET position = :end, events_processed = events_processed + :count, updated_at = :now
WHERE name = :name AND position = :start AND holder = :worker AND epoch = :epoch;

-- name: checkpoint
-- Returns a projection's committed checkpoint.
SELECT position FROM stoic_projections WHERE name = ?;

-- name: projections
-- Lists projections with their holder's liveness.
SELECT p.name, p.position, p.events_processed, p.holder,
       (w.expires_at IS NOT NULL AND w.expires_at > ?) AS holder_alive, p.epoch, p.updated_at
FROM stoic_projections p LEFT JOIN stoic_workers w ON w.worker_id = p.holder
ORDER BY p.name;

-- name: register_worker
-- Records a worker as alive until expires_at.
INSERT INTO stoic_workers (worker_id, hostname, pid, started_at, heartbeat_at, expires_at)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at;

-- name: heartbeat
-- Extends a worker's life.
UPDATE stoic_workers SET heartbeat_at = ?, expires_at = ? WHERE worker_id = ?;

-- name: unregister_worker
-- Removes a worker.
DELETE FROM stoic_workers WHERE worker_id = ?;

-- name: release_worker_projections
-- Frees every projection a worker holds.
UPDATE stoic_projections SET holder = NULL, held_since = NULL WHERE holder = ?;

-- name: workers
-- Lists registered workers.
SELECT worker_id, hostname, pid, started_at, heartbeat_at, expires_at FROM stoic_workers ORDER BY started_at;

-- name: forget_dead_workers
-- Deletes workers whose heartbeat expired long ago.
DELETE FROM stoic_workers WHERE expires_at < ?;

-- name: schema_version
-- Returns the highest applied migration.
SELECT coalesce(max(version), 0) FROM stoic_schema_migrations;

-- name: record_migration
-- Records an applied migration.
INSERT INTO stoic_schema_migrations (version, name, applied_at) VALUES (?, ?, ?);

-- name: events_by_id
-- Looks up stored events by id (a JSON array), to recognise a retried append.
SELECT event_id, stream_id, version, position FROM stoic_events
WHERE event_id IN (SELECT value FROM json_each(?));

-- name: insert_failure
-- Records a failure of one event.
INSERT INTO stoic_failures (projection, position, event_id, stream_id, event_type, policy, error_class,
    message, traceback, attempts, first_failed_at, last_failed_at, next_retry_at, status, resolution,
    blocking, updated_at)
VALUES (:projection, :position, :event_id, :stream_id, :event_type, :policy, :error_class,
    :message, :traceback, 1, :now, :now, :next_retry_at, :status, :resolution, :blocking, :now)
ON CONFLICT (projection, event_id) DO UPDATE SET
    attempts = stoic_failures.attempts + 1, last_failed_at = excluded.last_failed_at,
    error_class = excluded.error_class, message = excluded.message, traceback = excluded.traceback,
    next_retry_at = excluded.next_retry_at, status = excluded.status, resolution = excluded.resolution,
    blocking = excluded.blocking, retry_requested = 0, updated_at = excluded.updated_at
RETURNING id;

-- name: record_retry_failure
-- Counts one more failed attempt.
UPDATE stoic_failures SET attempts = attempts + 1, last_failed_at = :now, status = :status,
    next_retry_at = :next_retry_at, error_class = :error_class, message = :message,
    traceback = :traceback, retry_requested = 0, updated_at = :now
WHERE id = :id;

-- name: close_failure
-- Unblocks a failure; an open one becomes resolved with the given resolution.
UPDATE stoic_failures SET blocking = 0, parked = parked + :parked, next_retry_at = NULL,
    resolution = CASE WHEN status IN ('retrying', 'dead') THEN :resolution ELSE resolution END,
    status = CASE WHEN status IN ('retrying', 'dead') THEN 'resolved' ELSE status END,
    retry_requested = 0, updated_at = :now
WHERE id = :id;

-- name: add_parked
-- Counts events parked behind a failure.
UPDATE stoic_failures SET parked = parked + ?, updated_at = ? WHERE id = ?;

-- name: fence
-- Touches the projection row only if the lease still holds it (fencing for retry transactions).
UPDATE stoic_projections SET updated_at = updated_at WHERE name = ? AND holder = ? AND epoch = ?;

-- name: blocking_failures
-- A projection's failures that still block.
SELECT * FROM stoic_failures WHERE projection = ? AND blocking = 1 ORDER BY position;

-- name: failure
-- One failure by id.
SELECT * FROM stoic_failures WHERE id = ?;

-- name: read_at
-- Events at given positions (a JSON array).
SELECT position, stream_id, version, type, event_id, data, metadata, recorded_at
FROM stoic_events WHERE position IN (SELECT value FROM json_each(?)) ORDER BY position;

-- name: read_stream_range
-- A stream's events in a position range.
SELECT position, stream_id, version, type, event_id, data, metadata, recorded_at
FROM stoic_events WHERE stream_id = ? AND position > ? AND position <= ? ORDER BY position;

-- name: breaker
-- A projection's circuit breaker.
SELECT breaker_state, breaker_failures, breaker_opened_at, breaker_reason FROM stoic_projections WHERE name = ?;

-- name: set_breaker
-- Stores a projection's circuit breaker.
UPDATE stoic_projections SET breaker_state = :state, breaker_failures = :failures, breaker_reason = :reason,
    breaker_opened_at = CASE WHEN :state = 'open' AND breaker_state <> 'open' THEN :now
                             WHEN :state = 'closed' THEN NULL ELSE breaker_opened_at END
WHERE name = :name;

-- name: paused
-- Whether an operator paused a projection.
SELECT paused_at IS NOT NULL FROM stoic_projections WHERE name = ?;
