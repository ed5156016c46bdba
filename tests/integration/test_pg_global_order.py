"""Guarantee 1, no skipped event, on PostgreSQL.

A reader that follows ``read_all(after=last)`` must see every committed event
exactly once and in the final order, even when transactions commit out of the
order in which they started. The tests slow commits down on purpose with a
DEFERRED constraint trigger on ``stoic_events``: it runs at COMMIT time, after
the row got its position, so it widens exactly the window in which a naive
sequence-ordered log lets a later transaction become visible first.
"""

from __future__ import annotations

import random
import threading
import time

import pytest
from tests.apps import pg_admin, pg_schema, random_event, wait_until

import stoic
from stoic import NewEvent

pytestmark = pytest.mark.postgres

GATE_KEY2 = 7  #: second half of the two-int advisory key the gate trigger waits on

# Runs at COMMIT (deferred): an event whose data has "gate": K waits until the test
# releases advisory lock (K, 7); a quarter of the other rows sleep up to 10 ms.
SLOW_COMMIT_TRIGGER = """
CREATE FUNCTION {schema}.test_slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.data ? 'gate' THEN
        PERFORM pg_advisory_xact_lock_shared((NEW.data ->> 'gate')::int, 7);
    ELSIF random() < 0.25 THEN
        PERFORM pg_sleep(random() * 0.01);
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER test_slow_commit AFTER INSERT ON {schema}.{table}
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {schema}.test_slow_commit();
"""


def install_slow_commit_trigger(schema: str, table: str) -> None:
    with pg_admin() as conn:
        conn.execute(SLOW_COMMIT_TRIGGER.format(schema=schema, table=table))  # type: ignore[arg-type]


def gate_waiters(conn: object, gate: int) -> int:
    """How many transactions are blocked on the gate lock right now."""
    row = conn.execute(  # type: ignore[attr-defined]
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
        "AND classid = %s AND objid = %s AND objsubid = 2",
        (gate, GATE_KEY2),
    ).fetchone()
    return int(row[0])


class Follower(threading.Thread):
    """Follows the log with ``read_all(after=last)`` (random page sizes) until told to
    finish and then caught up with the head; records every event it saw, in order."""

    def __init__(self, url: str, seed: int, use_wait: bool = False) -> None:
        super().__init__(name=f"follower-{seed}", daemon=True)
        self.url = url
        self.rng = random.Random(seed)
        self.use_wait = use_wait
        self.seen: list[tuple[int, str]] = []
        self.finish = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        store = stoic.connect(self.url)
        try:
            last = 0
            while True:
                batch = store.read_all(after=last, limit=self.rng.randint(1, 50))
                for event in batch:
                    if event.position <= last:
                        raise AssertionError(f"position {event.position} after {last}: not increasing")
                    self.seen.append((event.position, str(event.event_id)))
                    last = event.position
                if batch:
                    continue
                if self.finish.is_set() and last == store.head():
                    return
                if self.use_wait:
                    store.wait_for_append(last, 0.2)
                else:
                    time.sleep(self.rng.uniform(0, 0.002))
        except BaseException as exc:  # re-raised by the test
            self.error = exc
        finally:
            store.close()


@pytest.mark.timeout(90)
def test_concurrent_appenders_with_slow_commits_reader_sees_every_event_once(make_url) -> None:
    url = make_url("postgres")
    store = stoic.connect(url)
    install_slow_commit_trigger(pg_schema(url), "stoic_events")
    appenders, appends_each = 8, 50
    start = threading.Event()
    results: dict[int, list[stoic.AppendResult]] = {i: [] for i in range(appenders)}
    errors: list[BaseException] = []

    def appender(index: int) -> None:
        rng = random.Random(index)
        own = stoic.connect(url)  # its own store: its own pool and connections
        versions: dict[str, int] = {}
        try:
            start.wait(10)
            for _ in range(appends_each):
                time.sleep(rng.uniform(0, 0.004))
                choice = rng.random()
                events = [random_event(rng) for _ in range(rng.randint(1, 4))]
                if choice < 0.2:
                    # A stream every appender writes to: versions are contended.
                    results[index].append(own.append("hot", events))
                elif choice < 0.35:
                    # Two of its own streams in one transaction.
                    a, b = f"w{index}-{rng.randrange(3)}", f"w{index}-{3 + rng.randrange(3)}"
                    out = own.append_many(
                        [
                            (a, events, versions.get(a, 0)),
                            (b, [random_event(rng)], versions.get(b, 0)),
                        ]
                    )
                    for r in out:
                        versions[r.stream_id] = r.version
                    results[index].extend(out)
                else:
                    stream = f"w{index}-{rng.randrange(6)}"
                    r = own.append(stream, events, expected_version=versions.get(stream, 0))
                    versions[stream] = r.version
                    results[index].append(r)
        except BaseException as exc:
            errors.append(exc)
        finally:
            own.close()

    followers = [Follower(url, seed=100), Follower(url, seed=101, use_wait=True)]
    for f in followers:
        f.start()
    threads = [threading.Thread(target=appender, args=(i,)) for i in range(appenders)]
    for t in threads:
        t.start()
    started = time.monotonic()
    start.set()  # release every appender at once
    for t in threads:
        t.join(60)
    append_seconds = time.monotonic() - started
    for f in followers:
        f.finish.set()
    for f in followers:
        f.join(30)

    assert not errors, errors
    for f in followers:
        assert f.error is None, f.error
        assert not f.is_alive()
    final = [(e.position, str(e.event_id)) for e in store.iter_all(batch_size=1000)]
    store.close()
    written = sorted(p for rs in results.values() for r in rs for p in r.positions)
    assert [p for p, _ in final] == list(range(1, len(final) + 1)), "positions are not gap-free"
    assert written == [p for p, _ in final], "an acknowledged append is missing from read_all, or extra"
    for f in followers:
        missed = sorted({p for p, _ in final} - {p for p, _ in f.seen})
        assert f.seen == final, f"{f.name} differs from the final order; missed positions {missed[:20]}"
    print(
        f"\n{len(final)} events by {appenders} appenders in {append_seconds:.2f} s; "
        f"both followers saw all of them exactly once, in order"
    )


@pytest.mark.timeout(30)
def test_earlier_transaction_committing_later_is_not_skipped(make_url) -> None:
    """A's append gets its position and then stalls in COMMIT; B starts later. The
    reader must not see B before A: B waits for A, and A keeps the lower position."""
    url = make_url("postgres")
    store = stoic.connect(url)
    install_slow_commit_trigger(pg_schema(url), "stoic_events")
    gate = random.randint(1, 2**30)
    reader = Follower(url, seed=1)
    out: dict[str, stoic.AppendResult] = {}
    with pg_admin() as admin:
        admin.execute("SELECT pg_advisory_lock(%s, %s)", (gate, GATE_KEY2))
        reader.start()
        a = threading.Thread(
            target=lambda: out.__setitem__(
                "a", store.append("stream-a", [NewEvent("Deposited", {"amount": 1, "gate": gate})])
            )
        )
        a.start()
        wait_until(lambda: gate_waiters(admin, gate) == 1, 10, "A to stall in its COMMIT")
        b = threading.Thread(
            target=lambda: out.__setitem__("b", store.append("stream-b", [NewEvent("Deposited", {"amount": 2})]))
        )
        b.start()
        time.sleep(0.5)
        # A is inserted but not committed; B started after A and must not overtake it.
        assert a.is_alive() and b.is_alive(), "B committed while the earlier A was still open"
        assert reader.seen == [], "the reader saw an event before the lower position committed"
        admin.execute("SELECT pg_advisory_unlock(%s, %s)", (gate, GATE_KEY2))
        a.join(10)
        b.join(10)
    reader.finish.set()
    reader.join(10)
    assert reader.error is None, reader.error
    assert out["a"].positions == (1,) and out["b"].positions == (2,)
    final = [(e.position, str(e.event_id)) for e in store.read_all(after=0)]
    assert reader.seen == final and [p for p, _ in final] == [1, 2]
    store.close()


@pytest.mark.timeout(30)
def test_naive_sequence_ordered_log_does_skip(make_url) -> None:
    """The control experiment: the same choreography on a table ordered by a
    sequence makes a position-following reader skip an event for good. This is the
    failure the tests above would catch, and the reason Stoic serialises appends."""
    url = make_url("postgres")
    schema = pg_schema(url)
    stoic.connect(url).close()  # creates the schema
    with pg_admin() as admin:
        admin.execute(f"CREATE TABLE {schema}.naive_log (id BIGSERIAL PRIMARY KEY, data JSONB NOT NULL)")
    install_slow_commit_trigger(schema, "naive_log")
    gate = random.randint(1, 2**30)
    with pg_admin() as admin, pg_admin() as reader:
        admin.execute("SELECT pg_advisory_lock(%s, %s)", (gate, GATE_KEY2))

        def insert(data: str) -> None:
            with pg_admin() as conn:
                conn.execute(f"INSERT INTO {schema}.naive_log (data) VALUES (%s::jsonb)", (data,))

        a = threading.Thread(target=insert, args=(f'{{"gate": {gate}}}',))
        a.start()
        wait_until(lambda: gate_waiters(admin, gate) == 1, 10, "A to stall in its COMMIT")
        insert('{"b": 1}')  # B: started later, commits at once with the higher id
        follow = f"SELECT id FROM {schema}.naive_log WHERE id > %s ORDER BY id"
        seen = [row[0] for row in reader.execute(follow, (0,)).fetchall()]
        admin.execute("SELECT pg_advisory_unlock(%s, %s)", (gate, GATE_KEY2))
        a.join(10)
        seen += [row[0] for row in reader.execute(follow, (seen[-1],)).fetchall()]
        final = [row[0] for row in reader.execute(follow, (0,)).fetchall()]
    assert final == [1, 2]
    assert seen == [2], "expected the naive reader to skip id 1"
