"""Test applications and a small process harness for the integration and chaos suites.

The projections here keep a per-event LEDGER (position PRIMARY KEY, with an
``applied`` counter bumped on conflict, so a second application of an event is
counted instead of hidden) and a BALANCE table (the read model). At the end of a
test :func:`check_exactly_once` proves: every event applied exactly once to every
projection, the checkpoint agrees with the ledger, and the read model equals the
fold of the events.

Worker subprocesses import this module (``--app tests.apps:make_app``) with
``PYTHONPATH`` set to the repository root; ``python -m tests.apps`` runs the
appender processes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import stoic
from stoic import App, NewEvent, Projection, RecordedEvent, Transaction, handles_all

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("STOIC_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")

# -- the projection ------------------------------------------------------------------


class LedgerProjection(Projection):
    """Records every event it applies in ``<name>_ledger`` and folds amounts per
    stream into ``<name>_balance``.

    ``slow_s`` sleeps after each event (to keep a batch's transaction open a while);
    ``hook(event)`` runs before each event is applied (tests use it as a gate).
    """

    def __init__(self, name: str, slow_s: float = 0.0, hook: Callable[[RecordedEvent], None] | None = None) -> None:
        self.name = name  # type: ignore[misc]
        self.slow_s = slow_s
        self.hook = hook
        self.ledger = f"{name}_ledger"
        self.balance = f"{name}_balance"
        self._insert_ledger = (
            f"INSERT INTO {self.ledger} (position, event_id, stream_id, applied, pid) VALUES (?, ?, ?, 1, ?) "
            f"ON CONFLICT (position) DO UPDATE SET applied = {self.ledger}.applied + 1"
        )
        self._upsert_balance = (
            f"INSERT INTO {self.balance} (account, balance, events) VALUES (?, ?, 1) "
            f"ON CONFLICT (account) DO UPDATE SET balance = {self.balance}.balance + excluded.balance, "
            f"events = {self.balance}.events + 1"
        )

    def setup(self, tx: Transaction) -> None:
        tx.execute(
            f"CREATE TABLE IF NOT EXISTS {self.ledger} (position BIGINT PRIMARY KEY, event_id TEXT NOT NULL, "
            "stream_id TEXT NOT NULL, applied INTEGER NOT NULL, pid INTEGER NOT NULL)"
        )
        tx.execute(
            f"CREATE TABLE IF NOT EXISTS {self.balance} (account TEXT PRIMARY KEY, balance BIGINT NOT NULL, "
            "events BIGINT NOT NULL)"
        )

    def reset(self, tx: Transaction) -> None:
        tx.execute(f"DELETE FROM {self.ledger}")
        tx.execute(f"DELETE FROM {self.balance}")

    @handles_all
    def apply(self, event: RecordedEvent, tx: Transaction) -> None:
        if self.hook is not None:
            self.hook(event)
        tx.execute(self._insert_ledger, (event.position, str(event.event_id), event.stream_id, os.getpid()))
        tx.execute(self._upsert_balance, (event.stream_id, signed_amount(event)))
        if self.slow_s:
            time.sleep(self.slow_s)


def projection_names(count: int) -> list[str]:
    return [f"ledger_{chr(ord('a') + i)}" for i in range(count)]


def make_app() -> App:
    """The worker's app: ``STOIC_TEST_PROJECTIONS`` ledger projections (default 2),
    each sleeping ``STOIC_TEST_SLOW_MS`` milliseconds per event (default 0)."""
    count = int(os.environ.get("STOIC_TEST_PROJECTIONS", "2"))
    slow_s = float(os.environ.get("STOIC_TEST_SLOW_MS", "0")) / 1000
    return App([LedgerProjection(name, slow_s) for name in projection_names(count)], name="chaos")


# -- events and the fold -------------------------------------------------------------


def signed_amount(event: RecordedEvent) -> int:
    amount = int(event.data.get("amount", 0))
    return -amount if event.type == "Withdrawn" else amount


def random_event(rng: random.Random, **extra: Any) -> NewEvent:
    if rng.random() < 0.7:
        return NewEvent("Deposited", {"amount": rng.randint(1, 100), **extra})
    return NewEvent("Withdrawn", {"amount": rng.randint(1, 50), **extra})


def append_bulk(store: stoic.Store, count: int, seed: int = 0, streams: int = 200, chunk: int = 5000) -> None:
    """Appends ``count`` random events over ``streams`` streams, ``chunk`` per transaction."""
    rng = random.Random(seed)
    done = 0
    while done < count:
        size = min(chunk, count - done)
        per_stream: dict[str, list[NewEvent]] = defaultdict(list)
        for _ in range(size):
            per_stream[f"acct-{rng.randrange(streams)}"].append(random_event(rng))
        store.append_many([(stream, events, stoic.ANY) for stream, events in per_stream.items()])
        done += size


def fold(events: Iterable[RecordedEvent]) -> dict[str, tuple[int, int]]:
    """The read model a correct projection must hold: ``{stream: (balance, events)}``."""
    balances: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for event in events:
        entry = balances[event.stream_id]
        entry[0] += signed_amount(event)
        entry[1] += 1
    return {stream: (b, n) for stream, (b, n) in balances.items()}


def check_exactly_once(store: stoic.Store, names: Iterable[str], upto: int | None = None) -> dict[str, int]:
    """Asserts, for each projection, that every event up to its checkpoint (and, if
    ``upto`` is given, the checkpoint is ``upto``) was applied exactly once, none
    after it, and that the read model equals the fold. Returns the checkpoints."""
    events = list(store.iter_all(batch_size=10_000))
    positions = [e.position for e in events]
    assert positions == list(range(1, len(events) + 1)), "global positions are not 1..N without gaps"
    states = {s.name: s for s in store.projections()}
    checkpoints = {}
    for name in names:
        checkpoint = states[name].position
        checkpoints[name] = checkpoint
        if upto is not None:
            assert checkpoint == upto, f"{name}: checkpoint {checkpoint}, expected {upto}"
        repeated = store.query(
            f"SELECT position, applied FROM {name}_ledger WHERE applied <> 1 ORDER BY position LIMIT 20"
        )
        assert not repeated, f"{name}: events applied more than once (position, times): {repeated}"
        ledger = store.query(f"SELECT position, event_id FROM {name}_ledger ORDER BY position")
        expected = [(e.position, str(e.event_id)) for e in events[:checkpoint]]
        got = [(int(p), str(i)) for p, i in ledger]
        if got != expected:
            missing = sorted({p for p, _ in expected} - {p for p, _ in got})[:20]
            extra = sorted({p for p, _ in got} - {p for p, _ in expected})[:20]
            raise AssertionError(
                f"{name}: ledger does not match events 1..{checkpoint}: "
                f"{len(got)} rows; missing {missing}; beyond checkpoint or unknown {extra}"
            )
        model = {a: (int(b), int(n)) for a, b, n in store.query(f"SELECT account, balance, events FROM {name}_balance")}
        want = fold(events[:checkpoint])
        assert model == want, f"{name}: read model differs from the fold of events 1..{checkpoint}"
        assert states[name].events_processed == checkpoint, (
            f"{name}: events_processed {states[name].events_processed} != checkpoint {checkpoint}"
        )
    return checkpoints


def checkpoints(store: stoic.Store) -> dict[str, int]:
    return {s.name: s.position for s in store.projections()}


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    """Polls ``condition`` until it returns something truthy; fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# -- PostgreSQL helpers --------------------------------------------------------------


def pg_schema(url: str) -> str:
    return url.rsplit("schema=", 1)[1]


def pg_admin() -> Any:
    """An autocommit connection to the test database, outside any Stoic pool."""
    import psycopg

    return psycopg.connect(PG_ADMIN_URL, autocommit=True, application_name="stoic-test-admin")


# -- subprocesses --------------------------------------------------------------------


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def stoic_command() -> list[str]:
    script = Path(sys.executable).with_name("stoic")
    return [str(script)] if script.exists() else [sys.executable, "-m", "stoic"]


class WorkerProcess:
    """A ``stoic worker`` subprocess logging JSON lines to a file."""

    def __init__(
        self,
        url: str,
        log_path: Path,
        *,
        app: str = "tests.apps:make_app",
        lease_ttl: float = 1.0,
        claim_interval: float = 0.2,
        batch_size: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        args = [
            *stoic_command(),
            "worker",
            "--db",
            url,
            "--app",
            app,
            "--lease-ttl",
            str(lease_ttl),
            "--claim-interval",
            str(claim_interval),
            "--log-format",
            "json",
        ]
        if batch_size is not None:
            args += ["--batch-size", str(batch_size)]
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env=subprocess_env(**(env or {}))
        )
        self.pid = self.proc.pid

    def owns(self, holder: str | None) -> bool:
        """Whether a holder id (host-pid-suffix) is this process's worker."""
        return holder is not None and holder.rsplit("-", 2)[-2] == str(self.pid)

    def send(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(10)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.returncode is not None and not self._log.closed:
                self._log.close()

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def records(self) -> list[dict[str, Any]]:
        """The worker's JSON log records (lines that are not JSON come back as ``raw``)."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"raw": line})
        return out

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


class Processes:
    """Starts subprocesses and, on exit, kills and reaps whatever is still running."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.workers: list[WorkerProcess] = []
        self.others: list[subprocess.Popen[bytes]] = []

    def worker(self, url: str, **kwargs: Any) -> WorkerProcess:
        log_path = self.tmp_path / f"worker-{len(self.workers)}.log"
        worker = WorkerProcess(url, log_path, **kwargs)
        self.workers.append(worker)
        return worker

    def python(self, *args: str, **popen: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=subprocess_env(), **popen)
        self.others.append(proc)
        return proc

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        for worker in self.workers:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(signal.SIGCONT)
            worker.kill()
        for proc in self.others:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


class Sampler:
    """Samples the projections table every ``interval`` seconds in a thread:
    ``samples`` is a list of ``(monotonic time, {name: ProjectionState})``."""

    def __init__(self, store: stoic.Store, interval: float = 0.02) -> None:
        self.store = store
        self.interval = interval
        self.samples: list[tuple[float, dict[str, Any]]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                states = {s.name: s for s in self.store.projections()}
                self.samples.append((time.monotonic(), states))
            except stoic.StoicError as exc:  # recorded and asserted on by the test
                self.errors.append(exc)
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# -- appender processes (python -m tests.apps ...) ------------------------------------


def _append_main(args: argparse.Namespace) -> int:
    """Appends ``count`` events to streams this process owns, with exact expected
    versions and random small delays; prints a JSON summary."""
    rng = random.Random(args.seed)
    store = stoic.connect(args.db)
    versions: dict[str, int] = {}
    positions: list[int] = []
    errors: list[str] = []
    streams = [f"{args.prefix}-{i}" for i in range(args.streams)]
    try:
        while len(positions) < args.count:
            stream = rng.choice(streams)
            batch = [random_event(rng) for _ in range(min(rng.randint(1, 5), args.count - len(positions)))]
            expected = versions.get(stream, 0) or stoic.NO_STREAM
            try:
                result = store.append(stream, batch, expected_version=expected)
            except stoic.StoicError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                break
            versions[stream] = result.version
            positions.extend(result.positions)
            if args.max_delay_ms:
                time.sleep(rng.uniform(0, args.max_delay_ms) / 1000)
    finally:
        store.close()
    print(json.dumps({"positions": positions, "versions": versions, "errors": errors}))
    return 1 if errors else 0


def _live_main(args: argparse.Namespace) -> int:
    """Appends one event every ``interval`` seconds; prints ``{"position", "t"}`` per append."""
    store = stoic.connect(args.db)
    try:
        for i in range(args.count):
            time.sleep(args.interval)
            result = store.append(f"live-{uuid.uuid4().hex[:8]}", [NewEvent("Deposited", {"amount": i + 1})])
            print(json.dumps({"position": result.positions[0], "t": time.time()}), flush=True)
    finally:
        store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.apps")
    sub = parser.add_subparsers(dest="command", required=True)
    append = sub.add_parser("append")
    append.add_argument("--db", required=True)
    append.add_argument("--prefix", required=True)
    append.add_argument("--count", type=int, required=True)
    append.add_argument("--streams", type=int, default=20)
    append.add_argument("--seed", type=int, default=0)
    append.add_argument("--max-delay-ms", type=float, default=0.0)
    live = sub.add_parser("live")
    live.add_argument("--db", required=True)
    live.add_argument("--count", type=int, default=5)
    live.add_argument("--interval", type=float, default=0.2)
    args = parser.parse_args(argv)
    return _append_main(args) if args.command == "append" else _live_main(args)


if __name__ == "__main__":
    sys.exit(main())


# -- failure handling: a ledger projection that fails on purpose ---------------------
#
# Used by tests/failures. FaultyLedger is a LedgerProjection that calls ``fault(event,
# tx)`` before applying each event (the fault may raise, sleep, or run bad SQL through
# ``tx``) and records the order in which it applied events in ``<name>_order``, so a
# test can check per-stream (or global) order as well as exactly-once.

Fault = Callable[[RecordedEvent, Transaction], None]


class FaultyLedger(LedgerProjection):
    """A LedgerProjection with a fault hook, an application-order table and failure
    settings given per instance (``on_error``, ``retry_policy``, ``retry_schedule``,
    ``breaker_policy``, ``batch_timeout``, ``classifier``, ``batch_size``)."""

    def __init__(self, name: str, fault: Fault | None = None, **settings: Any) -> None:
        super().__init__(name)
        self.fault = fault
        self.order = f"{name}_order"
        known = {"on_error", "retry_policy", "retry_schedule", "breaker_policy", "batch_timeout",
                 "classifier", "batch_size"}
        unknown = set(settings) - known
        if unknown:
            raise TypeError(f"FaultyLedger: unknown settings {sorted(unknown)}")
        for key, value in settings.items():
            setattr(self, key, value)
        self._insert_order = (
            f"INSERT INTO {self.order} (seq, position, stream_id) "
            f"SELECT COALESCE(MAX(seq), 0) + 1, ?, ? FROM {self.order}"
        )

    def setup(self, tx: Transaction) -> None:
        super().setup(tx)
        tx.execute(
            f"CREATE TABLE IF NOT EXISTS {self.order} (seq BIGINT PRIMARY KEY, position BIGINT NOT NULL, "
            "stream_id TEXT NOT NULL)"
        )

    def reset(self, tx: Transaction) -> None:
        super().reset(tx)
        tx.execute(f"DELETE FROM {self.order}")

    @handles_all
    def apply(self, event: RecordedEvent, tx: Transaction) -> None:
        if self.fault is not None:
            self.fault(event, tx)
        super().apply(event, tx)
        tx.execute(self._insert_order, (event.position, event.stream_id))


def applied_order(store: stoic.Store, name: str) -> list[int]:
    """The positions a FaultyLedger applied, in the order it applied them (committed only)."""
    return [int(p) for (p,) in store.query(f"SELECT position FROM {name}_order ORDER BY seq")]


def check_applied(store: stoic.Store, name: str, not_applied: Iterable[int] = ()) -> list[RecordedEvent]:
    """Asserts that a FaultyLedger applied every event up to its checkpoint exactly once
    except the positions in ``not_applied`` (skipped or resolved by hand), each stream in
    order, and that its read model equals the fold of the applied events. Returns them."""
    excluded = set(not_applied)
    checkpoint = {s.name: s.position for s in store.projections()}[name]
    events = [e for e in store.iter_all(batch_size=10_000) if e.position <= checkpoint]
    applied = [e for e in events if e.position not in excluded]
    repeated = store.query(f"SELECT position, applied FROM {name}_ledger WHERE applied <> 1")
    assert not repeated, f"{name}: events applied more than once (position, times): {repeated}"
    ledger = sorted(int(p) for (p,) in store.query(f"SELECT position FROM {name}_ledger"))
    assert ledger == [e.position for e in applied], f"{name}: ledger {ledger} != applied events"
    order = applied_order(store, name)
    assert sorted(order) == ledger, f"{name}: order table {order} disagrees with the ledger {ledger}"
    streams: dict[str, list[int]] = defaultdict(list)
    stream_of = {e.position: e.stream_id for e in events}
    for position in order:
        streams[stream_of[position]].append(position)
    for stream, positions in streams.items():
        assert positions == sorted(positions), f"{name}: stream {stream} applied out of order: {positions}"
    model = {a: (int(b), int(n)) for a, b, n in store.query(f"SELECT account, balance, events FROM {name}_balance")}
    assert model == fold(applied), f"{name}: read model {model} != fold {fold(applied)}"
    return applied


def make_poison_app() -> App:
    """The worker app of tests/failures/test_sigkill_retry.py: one FaultyLedger
    ``poisoned`` whose handler raises ValueError on events with ``data["poison"]``
    until the file named by ``STOIC_TEST_FIXED_FLAG`` exists (the "deployed fix").
    Background retries every ``STOIC_TEST_RETRY_DELAY`` seconds (default 2)."""
    flag = Path(os.environ["STOIC_TEST_FIXED_FLAG"])
    delay = float(os.environ.get("STOIC_TEST_RETRY_DELAY", "2"))

    def fault(event: RecordedEvent, tx: Transaction) -> None:
        if event.data.get("poison") and not flag.exists():
            raise ValueError(f"poison event at position {event.position}")

    projection = FaultyLedger(
        "poisoned", fault, retry_schedule=stoic.RetrySchedule(first_delay=delay, multiplier=1, max_attempts=50))
    return App([projection], name="poison")


# -- chaos helpers: whose connections, frozen processes, privileged faults -------------


def backend_pids(admin: Any, pid: int) -> list[int]:
    """The PostgreSQL backends serving one local process, matched by its sockets' client
    ports (Linux /proc), so that a test kills its own workers' connections and nobody
    else's on a shared server."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    if not ports:
        return []
    rows = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE client_port = ANY(%s) AND client_addr IS NOT NULL", (ports,)
    ).fetchall()
    return [int(r[0]) for r in rows]


def process_state(pid: int) -> str:
    """The one-letter state of a process from /proc (``T``: stopped; ``?``: gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def require_root(what: str) -> None:
    """Skips (or, with CI=true, fails, like ``require_postgres``) a test that needs root
    for a fault (``chattr +i``, mounting a tmpfs)."""
    import pytest

    if os.geteuid() != 0:
        reason = f"{what} needs root"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


class FreezingLedger(LedgerProjection):
    """A LedgerProjection whose worker stops itself (SIGSTOP) in the middle of a batch:
    at the event at position ``freeze_at`` it applies the event, waits until the
    database has received the batch's writes so far (they are uncommitted, holding
    their row locks), writes ``flag`` (once) and freezes. SIGCONT resumes the batch."""

    def __init__(self, name: str, freeze_at: int, flag: Path) -> None:
        super().__init__(name)
        self.freeze_at = freeze_at
        self.flag = flag

    @handles_all
    def apply(self, event: RecordedEvent, tx: Transaction) -> None:
        super().apply(event, tx)
        if event.position == self.freeze_at and not self.flag.exists():
            # Reading rowcount waits for the pipelined statements to reach the server.
            tx.execute(f"SELECT count(*) FROM {self.ledger}").rowcount  # noqa: B018
            self.flag.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGSTOP)


def make_freeze_app() -> App:
    """One projection ``ledger_a``; with ``STOIC_TEST_FREEZE_AT`` (a position) and
    ``STOIC_TEST_FREEZE_FLAG`` (a file) set, it is a FreezingLedger."""
    freeze_at = os.environ.get("STOIC_TEST_FREEZE_AT")
    if not freeze_at:
        return App([LedgerProjection("ledger_a")], name="freeze")
    flag = Path(os.environ["STOIC_TEST_FREEZE_FLAG"])
    return App([FreezingLedger("ledger_a", int(freeze_at), flag)], name="freeze")


class AppenderThread(threading.Thread):
    """Appends 1..``max_events`` random events to its own streams (``<prefix>-<n>``) with
    exact expected versions, pausing ``pause`` seconds (a range) between calls, until
    stopped. Records every call as (started, finished, positions), monotonic times; an
    error ends the loop and is kept in ``error`` for the test to raise."""

    def __init__(self, url: str, prefix: str, seed: int, *, streams: int = 10, max_events: int = 3,
                 pause: tuple[float, float] = (0.002, 0.008)) -> None:
        super().__init__(name=f"appender-{prefix}", daemon=True)
        self.store = stoic.connect(url)
        self.prefix = prefix
        self.rng = random.Random(seed)
        self.streams = streams
        self.max_events = max_events
        self.pause = pause
        self.stop = threading.Event()
        self.calls: list[tuple[float, float, tuple[int, ...]]] = []
        self.versions: dict[str, int] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.wait(self.rng.uniform(*self.pause)):
                stream = f"{self.prefix}-{self.rng.randrange(self.streams)}"
                events = [random_event(self.rng) for _ in range(self.rng.randint(1, self.max_events))]
                started = time.monotonic()
                result = self.store.append(stream, events, expected_version=self.versions.get(stream, stoic.NO_STREAM))
                self.calls.append((started, time.monotonic(), result.positions))
                self.versions[stream] = result.version
        except BaseException as exc:  # re-raised by the test
            self.error = exc
        finally:
            self.store.close()

    def finish(self, timeout: float = 10) -> None:
        """Stops the loop, waits for it, and raises its error if it had one."""
        self.stop.set()
        self.join(timeout)
        assert not self.is_alive(), f"{self.name} did not stop"
        if self.error is not None:
            raise AssertionError(f"{self.name} failed: {self.error!r}") from self.error

    @property
    def positions(self) -> list[int]:
        return [p for *_, positions in self.calls for p in positions]

    def check_streams(self, store: stoic.Store) -> None:
        """Each of its streams holds versions 1..last, as acknowledged."""
        for stream, version in self.versions.items():
            assert [e.version for e in store.read_stream(stream)] == list(range(1, version + 1)), stream


def calls_spanning(appenders: Iterable[AppenderThread], moment: float) -> list[tuple[float, float, tuple[int, ...]]]:
    """The append calls that were in progress at ``moment`` (a monotonic time)."""
    return [c for a in appenders for c in a.calls if c[0] <= moment <= c[1]]
