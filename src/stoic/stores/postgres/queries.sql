-- Stoic queries for PostgreSQL. Parameters use psycopg's %s / %(name)s style; the
-- connection's search_path selects the schema.

-- name: append_lock
-- Serialises appends until commit, so positions follow commit order (see the schema).
SELECT pg_advisory_xact_lock(%s);

-- name: append
-- Appends the events of one or more streams if every expected version matches, all or
-- nothing. Returns one (0, stream ordinal, version before) row per stream and one
-- (1, first position, events inserted) row.
WITH input AS (
    SELECT s.ord, s.value ->> 0 AS stream_id, (s.value ->> 1)::bigint AS expected
    FROM json_array_elements(%(streams)s::json) WITH ORDINALITY AS s(value, ord)
), cur AS (
    SELECT i.ord, i.stream_id, i.expected,
           coalesce((SELECT max(e.version) FROM stoic_events e WHERE e.stream_id = i.stream_id), 0) AS version
    FROM input i
), head AS (
    SELECT coalesce(max(position), 0) AS position FROM stoic_events
), ins AS (
    INSERT INTO stoic_events (position, stream_id, version, event_id, type, data, metadata, recorded_at)
    SELECT head.position + ev.ord, cur.stream_id, cur.version + (ev.value ->> 1)::bigint,
           (ev.value ->> 2)::uuid, ev.value ->> 3, (ev.value -> 4)::jsonb,
           nullif((ev.value -> 5)::jsonb, 'null'::jsonb), statement_timestamp()
    FROM json_array_elements(%(events)s::json) WITH ORDINALITY AS ev(value, ord)
    JOIN cur ON cur.ord = (ev.value ->> 0)::bigint
    CROSS JOIN head
    WHERE NOT EXISTS (SELECT 1 FROM cur WHERE cur.expected >= 0 AND cur.expected <> cur.version)
    RETURNING position
)
SELECT 0 AS kind, ord, version FROM cur
UNION ALL
SELECT 1, coalesce(min(position), 0), count(*) FROM ins;

-- name: notify
-- Wakes listening runners; the payload is the new head.
SELECT pg_notify(%s, (SELECT coalesce(max(position), 0) FROM stoic_events)::text);

-- name: head
-- Returns the last committed global position.
SELECT coalesce(max(position), 0) FROM stoic_events;

-- name: stream_version
-- Returns a stream's current version (0 when it does not exist).
SELECT coalesce(max(version), 0) FROM stoic_events WHERE stream_id = %s;

-- name: read_all
-- Reads committed events after a position, in global order. Payloads stay text: decoded lazily.
SELECT position, stream_id, version, type, event_id::text, data::text, metadata::text,
       extract(epoch FROM recorded_at)::float8
FROM stoic_events WHERE position > %s ORDER BY position LIMIT %s;

-- name: read_stream
-- Reads a stream's events from a version on.
SELECT position, stream_id, version, type, event_id::text, data::text, metadata::text,
       extract(epoch FROM recorded_at)::float8
FROM stoic_events WHERE stream_id = %s AND version >= %s ORDER BY version LIMIT %s;

-- name: events_by_id
-- Looks up stored events by id, to recognise a retried append.
SELECT event_id::text, stream_id, version, position FROM stoic_events WHERE event_id = ANY(%s::uuid[]);

-- name: ensure_projection
-- Creates a projection's row at position 0 if it is missing; records what it declares.
INSERT INTO stoic_projections AS p (name, idempotent, resettable, segments) VALUES (%s, %s, %s, %s)
ON CONFLICT (name) DO UPDATE SET idempotent = excluded.idempotent, resettable = excluded.resettable
WHERE p.idempotent <> excluded.idempotent OR p.resettable <> excluded.resettable;

-- name: setup_lock
-- Lets one process at a time run a projection's setup (CREATE TABLE IF NOT EXISTS races).
SELECT pg_advisory_xact_lock(%s);

-- name: claim_projection
-- Takes a projection that nobody live holds, bumping the fencing epoch.
UPDATE stoic_projections p
SET holder = %(worker)s, epoch = p.epoch + 1, held_since = now()
WHERE p.name = %(name)s
  AND (p.holder IS NULL
       OR p.holder = %(worker)s
       OR NOT EXISTS (SELECT 1 FROM stoic_workers w WHERE w.worker_id = p.holder AND w.expires_at > now()))
RETURNING p.epoch, p.position;

-- name: release_projection
-- Frees a projection if this lease still holds it.
UPDATE stoic_projections SET holder = NULL, held_since = NULL
WHERE name = %s AND holder = %s AND epoch = %s;

-- name: advance_checkpoint
-- Moves the checkpoint, fenced: only from the expected position, only under the current lease.
UPDATE stoic_projections
SET position = %(end)s, events_processed = events_processed + %(count)s, updated_at = now()
WHERE name = %(name)s AND position = %(start)s AND holder = %(worker)s AND epoch = %(epoch)s
  AND (request IS NULL OR request <> 'drain' OR %(end)s <= request_position);

-- name: checkpoint
-- Returns a projection's committed checkpoint.
SELECT position FROM stoic_projections WHERE name = %s;

-- name: projections
-- Lists projections with their holder's liveness.
SELECT p.name, p.position, p.events_processed, p.holder,
       coalesce(w.expires_at > now(), false) AS holder_alive, p.epoch, p.updated_at, p.segments
FROM stoic_projections p LEFT JOIN stoic_workers w ON w.worker_id = p.holder
ORDER BY p.name;

-- name: register_worker
-- Records a worker as alive for a number of seconds; forgets workers dead for an hour.
WITH forget AS (DELETE FROM stoic_workers WHERE expires_at < now() - interval '1 hour')
INSERT INTO stoic_workers (worker_id, hostname, pid, started_at, heartbeat_at, expires_at)
VALUES (%s, %s, %s, now(), now(), now() + make_interval(secs => %s))
ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at;

-- name: heartbeat
-- Extends a worker's life.
UPDATE stoic_workers SET heartbeat_at = now(), expires_at = now() + make_interval(secs => %s)
WHERE worker_id = %s;

-- name: release_worker_projections
-- Frees every projection a worker holds.
UPDATE stoic_projections SET holder = NULL, held_since = NULL WHERE holder = %s;

-- name: unregister_worker
-- Removes a worker.
DELETE FROM stoic_workers WHERE worker_id = %s;

-- name: workers
-- Lists registered workers.
SELECT worker_id, hostname, pid, started_at, heartbeat_at, expires_at, expires_at > now()
FROM stoic_workers ORDER BY started_at;

-- name: migrate_lock
-- Lets one process at a time migrate the schema.
SELECT pg_advisory_xact_lock(%s);

-- name: schema_version
-- Returns the highest applied migration.
SELECT coalesce(max(version), 0) FROM stoic_schema_migrations;

-- name: record_migration
-- Records an applied migration.
INSERT INTO stoic_schema_migrations (version, name, applied_at) VALUES (%s, %s, now());

-- name: insert_failure
-- Records a failure of one event; the same event failing again (after a reset, a replay or a
-- rebuild closed its record) starts the record over: a new occurrence, with a fresh schedule.
INSERT INTO stoic_failures (projection, position, event_id, stream_id, event_type, policy, error_class,
    message, traceback, attempts, first_failed_at, last_failed_at, next_retry_at, status, resolution,
    blocking, updated_at)
VALUES (%(projection)s, %(position)s, %(event_id)s, %(stream_id)s, %(event_type)s, %(policy)s,
    %(error_class)s, %(message)s, %(traceback)s, 1, now(), now(), %(next_retry_at)s, %(status)s,
    %(resolution)s, %(blocking)s, now())
ON CONFLICT (projection, event_id) DO UPDATE SET
    attempts = 1, first_failed_at = excluded.first_failed_at, last_failed_at = excluded.last_failed_at,
    error_class = excluded.error_class, message = excluded.message, traceback = excluded.traceback,
    next_retry_at = excluded.next_retry_at, status = excluded.status, resolution = excluded.resolution,
    blocking = excluded.blocking, retry_requested = false, updated_at = excluded.updated_at,
    parked = 0, actor = NULL, note = NULL
RETURNING id;

-- name: record_retry_failure
-- Counts one more failed attempt.
UPDATE stoic_failures SET attempts = attempts + 1, last_failed_at = now(), status = %(status)s,
    next_retry_at = %(next_retry_at)s, error_class = %(error_class)s, message = %(message)s,
    traceback = %(traceback)s, retry_requested = false, updated_at = now()
WHERE id = %(id)s;

-- name: close_failure
-- Unblocks a failure; an open one becomes resolved with the given resolution.
UPDATE stoic_failures SET blocking = false, parked = parked + %(parked)s, next_retry_at = NULL,
    resolution = CASE WHEN status IN ('retrying', 'dead') THEN %(resolution)s ELSE resolution END,
    status = CASE WHEN status IN ('retrying', 'dead') THEN 'resolved' ELSE status END,
    retry_requested = false, updated_at = now()
WHERE id = %(id)s;

-- name: add_parked
-- Counts events parked behind a failure.
UPDATE stoic_failures SET parked = parked + %s, updated_at = now() WHERE id = %s;

-- name: fence
-- Locks the projection row only if the lease still holds it (fencing for retry transactions).
SELECT 1 FROM stoic_projections WHERE name = %s AND holder = %s AND epoch = %s FOR UPDATE;

-- name: blocking_failures
-- A projection's failures that still block.
SELECT id, projection, position, event_id::text, stream_id, event_type, policy, error_class, message,
       traceback, attempts, first_failed_at, last_failed_at, next_retry_at, status, resolution, actor,
       note, blocking, retry_requested, parked, updated_at
FROM stoic_failures WHERE projection = %s AND blocking ORDER BY position;

-- name: read_at
-- Events at given positions.
SELECT position, stream_id, version, type, event_id::text, data::text, metadata::text,
       extract(epoch FROM recorded_at)::float8
FROM stoic_events WHERE position = ANY(%s::bigint[]) ORDER BY position;

-- name: read_stream_range
-- A stream's events in a position range. Ordered by version (the same order within a stream) so
-- the (stream_id, version) index serves it: by position, the planner may walk the whole log.
SELECT position, stream_id, version, type, event_id::text, data::text, metadata::text,
       extract(epoch FROM recorded_at)::float8
FROM stoic_events WHERE stream_id = %s AND position > %s AND position <= %s ORDER BY version;

-- name: breaker
-- A projection's circuit breaker.
SELECT breaker_state, breaker_failures, breaker_opened_at, breaker_reason FROM stoic_projections WHERE name = %s;

-- name: set_breaker
-- Stores a projection's circuit breaker.
UPDATE stoic_projections SET breaker_state = %(state)s, breaker_failures = %(failures)s,
    breaker_reason = %(reason)s,
    breaker_opened_at = CASE WHEN %(state)s = 'open' AND breaker_state <> 'open' THEN now()
                             WHEN %(state)s = 'closed' THEN NULL ELSE breaker_opened_at END
WHERE name = %(name)s;

-- name: control
-- What an operator asked of a projection: paused, and a pending reset or replay.
SELECT paused_at IS NOT NULL, request, request_position, request_seq, request_streams
FROM stoic_projections WHERE name = %s;

-- name: request_rewind
-- Records an operator's reset or replay request for the holder to carry out.
UPDATE stoic_projections SET request = %(request)s, request_position = %(position)s, request_streams = %(streams)s,
    request_seq = request_seq + 1, requested_at = now(), requested_by = %(actor)s, request_reason = %(reason)s
WHERE name = %(name)s
RETURNING request_seq;

-- name: finish_request
-- Clears a carried-out request; a reset also restarts the count and closes the breaker.
UPDATE stoic_projections SET request = NULL, request_position = NULL, request_streams = NULL,
    events_processed = CASE WHEN %(reset)s THEN 0 ELSE events_processed END,
    breaker_state = 'closed', breaker_failures = 0, breaker_opened_at = NULL, breaker_reason = NULL
WHERE name = %(name)s AND request_seq = %(seq)s;

-- name: close_rewound_failures
-- Unblocks the failures a rewind goes back over: their events are processed again.
UPDATE stoic_failures SET blocking = false, next_retry_at = NULL, retry_requested = false, updated_at = now(),
    resolution = CASE WHEN status IN ('retrying', 'dead') THEN %(resolution)s ELSE resolution END,
    status = CASE WHEN status IN ('retrying', 'dead') THEN 'resolved' ELSE status END
WHERE projection = %(name)s AND blocking AND position > %(position)s;

-- name: statement_timeout
-- Bounds every statement of the batch transaction.
SELECT set_config('statement_timeout', %s, true);

-- name: transition_failure
-- Applies an operator's action to a failure if its status allows it.
UPDATE stoic_failures SET status = %(status)s, resolution = %(resolution)s, actor = %(actor)s,
    note = %(note)s, retry_requested = %(retry_requested)s,
    next_retry_at = CASE WHEN %(retry_now)s THEN now() ELSE next_retry_at END,
    attempts = CASE WHEN %(reset_attempts)s THEN 0 ELSE attempts END,
    updated_at = now()
WHERE id = %(id)s AND status = ANY(%(allowed)s)
RETURNING id, projection, position, event_id::text, stream_id, event_type, policy, error_class, message,
          traceback, attempts, first_failed_at, last_failed_at, next_retry_at, status, resolution, actor,
          note, blocking, retry_requested, parked, updated_at;

-- name: failure
-- One failure by id.
SELECT id, projection, position, event_id::text, stream_id, event_type, policy, error_class, message,
       traceback, attempts, first_failed_at, last_failed_at, next_retry_at, status, resolution, actor,
       note, blocking, retry_requested, parked, updated_at
FROM stoic_failures WHERE id = %s;

-- name: list_failures
-- Failures, newest first, filtered by projection, status and stream (NULL = any).
SELECT id, projection, position, event_id::text, stream_id, event_type, policy, error_class, message,
       traceback, attempts, first_failed_at, last_failed_at, next_retry_at, status, resolution, actor,
       note, blocking, retry_requested, parked, updated_at
FROM stoic_failures
WHERE (%(projection)s::text IS NULL OR projection = %(projection)s)
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(stream_id)s::text IS NULL OR stream_id = %(stream_id)s)
ORDER BY id DESC LIMIT %(limit)s OFFSET %(offset)s;

-- name: failure_counts
-- Failures by projection and status, with blocked streams and parked events.
SELECT projection, status, count(*), count(*) FILTER (WHERE blocking AND policy = 'park'),
       coalesce(sum(parked) FILTER (WHERE blocking), 0),
       min(position) FILTER (WHERE blocking AND policy = 'halt')
FROM stoic_failures GROUP BY projection, status;

-- name: insert_audit
-- Records an admin action.
INSERT INTO stoic_audit (actor, action, target, reason, outcome, details) VALUES (%s, %s, %s, %s, %s, %s);

-- name: audit_log
-- Admin actions, newest first.
SELECT id, at, actor, action, target, reason, outcome, details FROM stoic_audit
WHERE (%(action)s::text IS NULL OR action = %(action)s) ORDER BY id DESC LIMIT %(limit)s OFFSET %(offset)s;

-- name: set_paused
-- Pauses (or resumes, with NULLs) a projection.
UPDATE stoic_projections SET paused_at = CASE WHEN %s THEN now() END, paused_by = %s, paused_reason = %s
WHERE name = %s;

-- name: oldest_unprocessed
-- When the first event after a checkpoint was recorded.
SELECT recorded_at FROM stoic_events WHERE position > %s ORDER BY position LIMIT 1;

-- name: count_upto
-- How many events are at or below a position.
SELECT count(*) FROM stoic_events WHERE position <= %s;

-- name: record_verification
-- Stores the result of the late-arrival self-check.
UPDATE stoic_projections SET verified_at = now(), verified_missing = %s WHERE name = %s;

-- name: record_drift
-- Stores the result of a continuous reconciliation.
UPDATE stoic_projections SET drift_checked_at = now(), drift_checked = %s, drift_count = %s, drift_streams = %s
WHERE name = %s;

-- name: projection_details
-- Everything health needs about projections.
SELECT p.name, p.position, p.events_processed, p.holder, coalesce(w.expires_at > now(), false),
       p.epoch, p.updated_at, p.held_since, w.heartbeat_at, p.breaker_state, p.breaker_failures,
       p.breaker_opened_at, p.breaker_reason, p.paused_at, p.paused_by, p.paused_reason,
       p.verified_at, p.verified_missing, p.request, p.request_position, p.requested_at, p.requested_by,
       p.request_reason, p.idempotent, p.resettable, p.drift_checked_at, p.drift_checked, p.drift_count,
       p.drift_streams, p.version, p.generation, p.previous_generation, p.switched_at, p.build_note
FROM stoic_projections p LEFT JOIN stoic_workers w ON w.worker_id = p.holder
ORDER BY p.name;

-- name: now
-- The database's clock.
SELECT now();

-- name: check_late_arrivals
-- The late-arrival self-check: events at or below the checkpoint minus events processed.
SELECT (SELECT count(*) FROM stoic_events e WHERE e.position <= p.position) - p.events_processed
FROM stoic_projections p WHERE p.name = %s;

-- name: lock_failure
-- Locks a failure for the transaction that retries or releases it, so that an
-- operator's concurrent skip or resolve waits for it (and is then refused) or wins first.
SELECT status FROM stoic_failures WHERE id = %s FOR UPDATE;

-- name: stream_ids
-- Streams with events at or below a position (of some types; NULL = any), in id order, a page at a time.
SELECT DISTINCT stream_id FROM stoic_events
WHERE position <= %(upto)s AND stream_id > %(after)s
  AND (%(types)s::text[] IS NULL OR type = ANY(%(types)s::text[]))
ORDER BY stream_id LIMIT %(limit)s;

-- name: stream_at
-- The stream of the event at a position (for sampling streams by random positions).
SELECT stream_id, type FROM stoic_events WHERE position = %s;

-- name: versioning
-- A projection row's read-model generation, the previous one and a build's note.
SELECT version, generation, previous_version, previous_generation, previous_position, switched_at, build_note,
       position, events_processed
FROM stoic_projections WHERE name = %s;

-- name: set_version
-- Records which version and generation a row serves (first activation).
UPDATE stoic_projections SET version = %(version)s, generation = %(generation)s WHERE name = %(name)s;

-- name: restart_build
-- Starts a build row over for a new generation: from position 0, with no failures.
UPDATE stoic_projections SET version = %(version)s, generation = %(generation)s, position = 0,
    events_processed = 0, build_note = NULL, breaker_state = 'closed', breaker_failures = 0,
    breaker_opened_at = NULL, breaker_reason = NULL, request = NULL, request_position = NULL, request_streams = NULL
WHERE name = %(name)s;

-- name: delete_failures
-- Removes a row's failure records (a build that starts over).
DELETE FROM stoic_failures WHERE projection = %s;

-- name: switch_version
-- The atomic switch: the main row takes the build's version, generation and checkpoint; the
-- old ones are kept for a rollback; the current holder is fenced out (epoch + 1).
UPDATE stoic_projections m SET
    previous_version = m.version, previous_generation = m.generation, previous_position = m.position,
    version = b.version, generation = b.generation, position = b.position,
    events_processed = b.events_processed, switched_at = now(), epoch = m.epoch + 1, holder = NULL,
    breaker_state = 'closed', breaker_failures = 0, breaker_opened_at = NULL, breaker_reason = NULL,
    request = CASE WHEN m.request = 'rebuild' THEN NULL ELSE m.request END, build_note = NULL
FROM stoic_projections b
WHERE m.name = %(main)s AND b.name = %(build)s;

-- name: supersede_failures
-- The old generation's failures: those the build hit again are replaced by the build's record,
-- the other open ones are closed (the old read model no longer serves).
DELETE FROM stoic_failures WHERE projection = %(main)s
  AND event_id IN (SELECT event_id FROM stoic_failures WHERE projection = %(build)s);

-- name: close_superseded_failures
UPDATE stoic_failures SET blocking = false, next_retry_at = NULL, retry_requested = false, updated_at = now(),
    resolution = CASE WHEN status IN ('retrying', 'dead') THEN 'rebuilt' ELSE resolution END,
    status = CASE WHEN status IN ('retrying', 'dead') THEN 'resolved' ELSE status END
WHERE projection = %(main)s AND blocking;

-- name: adopt_failures
UPDATE stoic_failures SET projection = %(main)s WHERE projection = %(build)s;

-- name: delete_projection
DELETE FROM stoic_projections WHERE name = %s;

-- name: rollback_version
-- Back to the previous generation (its tables still exist); the holder is fenced out.
UPDATE stoic_projections SET version = previous_version, generation = previous_generation,
    position = previous_position, previous_version = NULL, previous_generation = NULL,
    previous_position = NULL, switched_at = now(), epoch = epoch + 1, holder = NULL
WHERE name = %(name)s AND previous_generation IS NOT NULL;

-- name: forget_previous
UPDATE stoic_projections SET previous_version = NULL, previous_generation = NULL, previous_position = NULL
WHERE name = %s;

-- name: build_note
UPDATE stoic_projections SET build_note = %s WHERE name = %s;

-- name: relation_kind
-- Whether a name is a table or a view in this schema ('table', 'view' or nothing).
SELECT CASE c.relkind WHEN 'v' THEN 'view' ELSE 'table' END
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relname = %s AND c.relkind IN ('r', 'v', 'p');

-- name: segment_count
-- The segment count of a segmented projection's rows (named <base>#<index>), NULL when it has none.
SELECT max(segments) FROM stoic_projections WHERE starts_with(name, %(prefix)s) AND segments IS NOT NULL;

-- name: segment_rows
-- A segmented projection's rows: name, position, request, request position.
SELECT name, position, request, request_position, segments FROM stoic_projections
WHERE starts_with(name, %(prefix)s) AND segments IS NOT NULL ORDER BY name;

-- name: cancel_request
-- Drops a pending request (a resegmentation that gave up).
UPDATE stoic_projections SET request = NULL, request_position = NULL, request_streams = NULL WHERE name = %s;

-- name: move_failure
UPDATE stoic_failures SET projection = %s WHERE id = %s;

-- name: failures_of
SELECT id, stream_id FROM stoic_failures WHERE projection = %s;

-- name: insert_segment
-- A new segment row covers every event up to the barrier (the late-arrival self-check counts them).
INSERT INTO stoic_projections (name, segments, position, events_processed) VALUES (%(name)s, %(segments)s, %(position)s, %(position)s);

-- name: abandon_build
-- An operator restarts a build: its row forgets its version (the next holder starts it over)
-- and its holder is fenced out.
UPDATE stoic_projections SET version = NULL, epoch = epoch + 1, holder = NULL, build_note = NULL WHERE name = %s;
