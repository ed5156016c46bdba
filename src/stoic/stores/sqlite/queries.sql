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
-- Creates a projection's row at position 0 if it is missing; records what it declares.
INSERT INTO stoic_projections (name, created_at, idempotent, resettable, segments) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (name) DO UPDATE SET idempotent = excluded.idempotent, resettable = excluded.resettable
WHERE idempotent <> excluded.idempotent OR resettable <> excluded.resettable;

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
WHERE name = :name AND position = :start AND holder = :worker AND epoch = :epoch
  AND (request IS NULL OR request <> 'drain' OR :end <= request_position);

-- name: checkpoint
-- Returns a projection's committed checkpoint.
SELECT position FROM stoic_projections WHERE name = ?;

-- name: projections
-- Lists projections with their holder's liveness.
SELECT p.name, p.position, p.events_processed, p.holder,
       (w.expires_at IS NOT NULL AND w.expires_at > ?) AS holder_alive, p.epoch, p.updated_at, p.segments
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
-- Records a failure of one event; the same event failing again (after a reset, a replay or a
-- rebuild closed its record) starts the record over: a new occurrence, with a fresh schedule.
INSERT INTO stoic_failures (projection, position, event_id, stream_id, event_type, policy, error_class,
    message, traceback, attempts, first_failed_at, last_failed_at, next_retry_at, status, resolution,
    blocking, updated_at)
VALUES (:projection, :position, :event_id, :stream_id, :event_type, :policy, :error_class,
    :message, :traceback, 1, :now, :now, :next_retry_at, :status, :resolution, :blocking, :now)
ON CONFLICT (projection, event_id) DO UPDATE SET
    attempts = 1, first_failed_at = excluded.first_failed_at, last_failed_at = excluded.last_failed_at,
    error_class = excluded.error_class, message = excluded.message, traceback = excluded.traceback,
    next_retry_at = excluded.next_retry_at, status = excluded.status, resolution = excluded.resolution,
    blocking = excluded.blocking, retry_requested = 0, updated_at = excluded.updated_at,
    parked = 0, actor = NULL, note = NULL
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
-- A stream's events in a position range. Ordered by version (the same order within a stream) so
-- the (stream_id, version) index serves it: by position, the planner may walk the whole log.
SELECT position, stream_id, version, type, event_id, data, metadata, recorded_at
FROM stoic_events WHERE stream_id = ? AND position > ? AND position <= ? ORDER BY version;

-- name: breaker
-- A projection's circuit breaker.
SELECT breaker_state, breaker_failures, breaker_opened_at, breaker_reason FROM stoic_projections WHERE name = ?;

-- name: set_breaker
-- Stores a projection's circuit breaker.
UPDATE stoic_projections SET breaker_state = :state, breaker_failures = :failures, breaker_reason = :reason,
    breaker_opened_at = CASE WHEN :state = 'open' AND breaker_state <> 'open' THEN :now
                             WHEN :state = 'closed' THEN NULL ELSE breaker_opened_at END
WHERE name = :name;

-- name: control
-- What an operator asked of a projection: paused, and a pending reset or replay.
SELECT paused_at IS NOT NULL, request, request_position, request_seq, request_streams
FROM stoic_projections WHERE name = ?;

-- name: request_rewind
-- Records an operator's reset or replay request for the holder to carry out.
UPDATE stoic_projections SET request = :request, request_position = :position, request_streams = :streams,
    request_seq = request_seq + 1,
    requested_at = :now, requested_by = :actor, request_reason = :reason
WHERE name = :name
RETURNING request_seq;

-- name: finish_request
-- Clears a carried-out request; a reset also restarts the count and closes the breaker.
UPDATE stoic_projections SET request = NULL, request_position = NULL, request_streams = NULL,
    events_processed = CASE WHEN :reset THEN 0 ELSE events_processed END,
    breaker_state = 'closed', breaker_failures = 0, breaker_opened_at = NULL, breaker_reason = NULL
WHERE name = :name AND request_seq = :seq;

-- name: close_rewound_failures
-- Unblocks the failures a rewind goes back over: their events are processed again.
UPDATE stoic_failures SET blocking = 0, next_retry_at = NULL, retry_requested = 0, updated_at = :now,
    resolution = CASE WHEN status IN ('retrying', 'dead') THEN :resolution ELSE resolution END,
    status = CASE WHEN status IN ('retrying', 'dead') THEN 'resolved' ELSE status END
WHERE projection = :name AND blocking = 1 AND position > :position;

-- name: transition_failure
-- Applies an operator's action to a failure if its status allows it.
UPDATE stoic_failures SET status = :status, resolution = :resolution, actor = :actor, note = :note,
    retry_requested = :retry_requested,
    next_retry_at = CASE WHEN :retry_now THEN :now ELSE next_retry_at END,
    attempts = CASE WHEN :reset_attempts THEN 0 ELSE attempts END,
    updated_at = :now
WHERE id = :id AND status IN (SELECT value FROM json_each(:allowed))
RETURNING *;

-- name: list_failures
-- Failures, newest first, filtered by projection, status and stream (NULL = any).
SELECT * FROM stoic_failures
WHERE (:projection IS NULL OR projection = :projection)
  AND (:status IS NULL OR status = :status)
  AND (:stream_id IS NULL OR stream_id = :stream_id)
ORDER BY id DESC LIMIT :limit OFFSET :offset;

-- name: failure_counts
-- Failures by projection and status, with blocked streams and parked events.
SELECT projection, status, count(*), sum(CASE WHEN blocking = 1 AND policy = 'park' THEN 1 ELSE 0 END),
       sum(CASE WHEN blocking = 1 THEN parked ELSE 0 END),
       min(CASE WHEN blocking = 1 AND policy = 'halt' THEN position END)
FROM stoic_failures GROUP BY projection, status;

-- name: insert_audit
-- Records an admin action.
INSERT INTO stoic_audit (at, actor, action, target, reason, outcome, details) VALUES (?, ?, ?, ?, ?, ?, ?);

-- name: audit_log
-- Admin actions, newest first.
SELECT id, at, actor, action, target, reason, outcome, details FROM stoic_audit
WHERE (:action IS NULL OR action = :action) ORDER BY id DESC LIMIT :limit OFFSET :offset;

-- name: set_paused
-- Pauses (or resumes, with NULLs) a projection.
UPDATE stoic_projections SET paused_at = ?, paused_by = ?, paused_reason = ? WHERE name = ?;

-- name: oldest_unprocessed
-- When the first event after a checkpoint was recorded.
SELECT recorded_at FROM stoic_events WHERE position > ? ORDER BY position LIMIT 1;

-- name: count_upto
-- How many events are at or below a position.
SELECT count(*) FROM stoic_events WHERE position <= ?;

-- name: record_verification
-- Stores the result of the late-arrival self-check.
UPDATE stoic_projections SET verified_at = ?, verified_missing = ? WHERE name = ?;

-- name: record_drift
-- Stores the result of a continuous reconciliation.
UPDATE stoic_projections SET drift_checked_at = ?, drift_checked = ?, drift_count = ?, drift_streams = ?
WHERE name = ?;

-- name: projection_details
-- Everything health needs about projections.
SELECT p.name, p.position, p.events_processed, p.holder,
       (w.expires_at IS NOT NULL AND w.expires_at > :now) AS holder_alive, p.epoch, p.updated_at,
       p.held_since, w.heartbeat_at, p.breaker_state, p.breaker_failures, p.breaker_opened_at,
       p.breaker_reason, p.paused_at, p.paused_by, p.paused_reason, p.verified_at, p.verified_missing,
       p.request, p.request_position, p.requested_at, p.requested_by, p.request_reason, p.idempotent,
       p.resettable, p.drift_checked_at, p.drift_checked, p.drift_count, p.drift_streams, p.version, p.generation,
       p.previous_generation, p.switched_at, p.build_note
FROM stoic_projections p LEFT JOIN stoic_workers w ON w.worker_id = p.holder
ORDER BY p.name;

-- name: check_late_arrivals
-- The late-arrival self-check: events at or below the checkpoint minus events processed.
SELECT (SELECT count(*) FROM stoic_events e WHERE e.position <= p.position) - p.events_processed
FROM stoic_projections p WHERE p.name = ?;

-- name: batch_heartbeat
-- Renews a worker's life by its own ttl when one of its batches commits.
UPDATE stoic_workers SET expires_at = ?1 + (expires_at - heartbeat_at), heartbeat_at = ?1
WHERE worker_id = ?2 AND expires_at > ?1;

-- name: lock_failure
-- A failure's current status, read inside the transaction that retries or releases it.
SELECT status FROM stoic_failures WHERE id = ?;

-- name: stream_ids
-- Streams with events at or below a position (of some types; NULL = any), in id order, a page at a time.
SELECT DISTINCT stream_id FROM stoic_events
WHERE position <= :upto AND stream_id > :after
  AND (:types IS NULL OR type IN (SELECT value FROM json_each(:types)))
ORDER BY stream_id LIMIT :limit;

-- name: stream_at
-- The stream of the event at a position (for sampling streams by random positions).
SELECT stream_id, type FROM stoic_events WHERE position = ?;

-- name: versioning
-- A projection row's read-model generation, the previous one and a build's note.
SELECT version, generation, previous_version, previous_generation, previous_position, switched_at, build_note,
       position, events_processed
FROM stoic_projections WHERE name = ?;

-- name: set_version
-- Records which version and generation a row serves (first activation).
UPDATE stoic_projections SET version = :version, generation = :generation WHERE name = :name;

-- name: restart_build
-- Starts a build row over for a new generation: from position 0, with no failures.
UPDATE stoic_projections SET version = :version, generation = :generation, position = 0, events_processed = 0,
    build_note = NULL, breaker_state = 'closed', breaker_failures = 0, breaker_opened_at = NULL,
    breaker_reason = NULL, request = NULL, request_position = NULL, request_streams = NULL
WHERE name = :name;

-- name: delete_failures
-- Removes a row's failure records (a build that starts over).
DELETE FROM stoic_failures WHERE projection = ?;

-- name: switch_version
-- The atomic switch: the main row takes the build's version, generation and checkpoint; the
-- old ones are kept for a rollback; the current holder is fenced out (epoch + 1).
UPDATE stoic_projections SET
    previous_version = version, previous_generation = generation, previous_position = position,
    version = (SELECT b.version FROM stoic_projections b WHERE b.name = :build),
    generation = (SELECT b.generation FROM stoic_projections b WHERE b.name = :build),
    position = (SELECT b.position FROM stoic_projections b WHERE b.name = :build),
    events_processed = (SELECT b.events_processed FROM stoic_projections b WHERE b.name = :build),
    switched_at = :now, epoch = epoch + 1, holder = NULL,
    breaker_state = 'closed', breaker_failures = 0, breaker_opened_at = NULL, breaker_reason = NULL,
    request = CASE WHEN request = 'rebuild' THEN NULL ELSE request END, build_note = NULL
WHERE name = :main;

-- name: supersede_failures
-- The old generation's failures: those the build hit again are replaced by the build's record,
-- the other open ones are closed (the old read model no longer serves).
DELETE FROM stoic_failures WHERE projection = :main
  AND event_id IN (SELECT event_id FROM stoic_failures WHERE projection = :build);

-- name: close_superseded_failures
UPDATE stoic_failures SET blocking = 0, next_retry_at = NULL, retry_requested = 0, updated_at = :now,
    resolution = CASE WHEN status IN ('retrying', 'dead') THEN 'rebuilt' ELSE resolution END,
    status = CASE WHEN status IN ('retrying', 'dead') THEN 'resolved' ELSE status END
WHERE projection = :main AND blocking = 1;

-- name: adopt_failures
UPDATE stoic_failures SET projection = :main WHERE projection = :build;

-- name: delete_projection
DELETE FROM stoic_projections WHERE name = ?;

-- name: rollback_version
-- Back to the previous generation (its tables still exist); the holder is fenced out.
UPDATE stoic_projections SET version = previous_version, generation = previous_generation,
    position = previous_position, previous_version = NULL, previous_generation = NULL,
    previous_position = NULL, switched_at = :now, epoch = epoch + 1, holder = NULL
WHERE name = :name AND previous_generation IS NOT NULL;

-- name: forget_previous
UPDATE stoic_projections SET previous_version = NULL, previous_generation = NULL, previous_position = NULL
WHERE name = ?;

-- name: build_note
UPDATE stoic_projections SET build_note = ? WHERE name = ?;

-- name: relation_kind
-- Whether a name is a table or a view in this database ('table', 'view' or nothing).
SELECT type FROM sqlite_master WHERE name = ? AND type IN ('table', 'view');

-- name: segment_count
-- The segment count of a segmented projection's rows (named <base>#<index>), NULL when it has none.
SELECT max(segments) FROM stoic_projections WHERE substr(name, 1, length(:prefix)) = :prefix AND segments IS NOT NULL;

-- name: segment_rows
-- A segmented projection's rows: name, position, request, request position.
SELECT name, position, request, request_position, segments FROM stoic_projections
WHERE substr(name, 1, length(:prefix)) = :prefix AND segments IS NOT NULL ORDER BY name;

-- name: cancel_request
-- Drops a pending request (a resegmentation that gave up).
UPDATE stoic_projections SET request = NULL, request_position = NULL, request_streams = NULL WHERE name = ?;

-- name: move_failure
UPDATE stoic_failures SET projection = ? WHERE id = ?;

-- name: failures_of
SELECT id, stream_id FROM stoic_failures WHERE projection = ?;

-- name: insert_segment
-- A new segment row covers every event up to the barrier (the late-arrival self-check counts them).
INSERT INTO stoic_projections (name, created_at, segments, position, events_processed) VALUES (:name, :now, :segments, :position, :position);

-- name: abandon_build
-- An operator restarts a build: its row forgets its version (the next holder starts it over)
-- and its holder is fenced out.
UPDATE stoic_projections SET version = NULL, epoch = epoch + 1, holder = NULL, build_note = NULL WHERE name = ?;
