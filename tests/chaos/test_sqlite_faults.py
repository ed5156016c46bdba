"""SQLite under faults of the file it lives in, while ``stoic worker`` processes and
appenders run:

* the write lock held by another process (``BEGIN EXCLUSIVE``) for a few seconds,
  and that process then killed without committing: writers wait (an impatient
  client gets ``LockNotAvailable``), nothing is half-written, everybody goes on;
* the database file turned read-only (``chattr +i`` — plain file modes do not stop
  root): appends raise ``StoreUnavailable``, the worker retries without exiting, and
  when the file is writable again everything resumes;
* a full disk (the database on a small tmpfs, filled up): appends raise
  ``StoreUnavailable`` saying the disk is full, nothing is half-written, and when
  space is freed the worker resumes.

Each ends with every event applied exactly once to every projection. The last two
need root (``chattr``, ``mount``): like PostgreSQL, they are skipped without it,
and fail with CI=true.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.apps import (
    AppenderThread,
    Processes,
    WorkerProcess,
    append_bulk,
    calls_spanning,
    check_exactly_once,
    checkpoints,
    projection_names,
    require_root,
    wait_until,
)

import stoic
from stoic.stores.sqlite.store import SQLiteStore, parse_sqlite_url

NAMES = projection_names(2)
BULK = 2000  #: events appended before the workers start

LOCKER = """
import random, sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0)
while True:  # ask as often as the store's writers do, or they would starve us
    try:
        conn.execute("BEGIN EXCLUSIVE")
        break
    except sqlite3.OperationalError:
        time.sleep(random.uniform(0, 0.001))
conn.execute("INSERT INTO lock_scratch VALUES (1)")
print("locked", flush=True)
time.sleep(120)
"""


def sqlite_path(url: str) -> str:
    return parse_sqlite_url(url)[0]


def no_errors(worker: WorkerProcess) -> None:
    bad = [r for r in worker.records() if r.get("level") in ("error", "critical") or "raw" in r]
    assert not bad, bad[:5]


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_write_lock_held_by_another_process(make_url, tmp_path: Path) -> None:
    # synchronous=normal: no fsync per commit, so that the writers sharing one lock get
    # through their work quickly on a slow disk (the lock is the subject here).
    url = make_url("sqlite-file") + "?synchronous=normal"
    path = sqlite_path(url)
    store = stoic.connect(url)
    append_bulk(store, BULK, seed=61, streams=40)
    store.query("CREATE TABLE lock_scratch (x INTEGER)")
    hold_s = 3.0
    appenders = [AppenderThread(url, f"app{k}", seed=k, pause=(0.002, 0.01)) for k in range(2)]
    impatient = SQLiteStore(url, busy_timeout=0.3)  # a client that will not wait long
    with Processes(tmp_path) as procs:
        workers = [procs.worker(url, lease_ttl=3, claim_interval=0.2, batch_size=50,
                                env={"STOIC_TEST_PROJECTIONS": str(len(NAMES))})
                   for _ in range(2)]
        wait_until(lambda: sum(checkpoints(store).values()) >= 500, 30, "the catch-up to start")
        for a in appenders:
            a.start()
        wait_until(lambda: store.head() > BULK + 100, 20, "the appenders to be running")
        locker = procs.python("-c", LOCKER, path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert locker.stdout is not None
        assert locker.stdout.readline().strip() == b"locked", locker.stderr.read() if locker.stderr else ""
        locked_at = time.monotonic()
        head, cps = store.head(), checkpoints(store)
        # The impatient client gets a clear, typed error after its busy timeout, and writes nothing.
        with pytest.raises(stoic.LockNotAvailable, match="locked") as caught:
            impatient.append("impatient", [stoic.NewEvent("Deposited", {"amount": 1})])
        waited = time.monotonic() - locked_at
        assert 0.25 <= waited < 2.0, waited
        # Everybody else waits: nothing commits while the lock is held (reads go on).
        while time.monotonic() - locked_at < hold_s:
            assert store.head() == head and checkpoints(store) == cps, "a write committed under another's lock"
            time.sleep(0.05)
        assert all(w.running for w in workers) and all(a.is_alive() for a in appenders)
        # The lock holder dies without committing: its write vanishes, the lock is free.
        locker.kill()
        locker.wait(10)
        wait_until(lambda: store.head() > head + 50, 10, "the appenders to go on after the lock is gone")
        for a in appenders:
            a.finish()
        final = store.head()
        wait_until(lambda: all(checkpoints(store).get(n) == final for n in NAMES), 60, "the catch-up")
        for w in workers:
            w.send(signal.SIGTERM)
        codes = [w.wait(15) for w in workers]

    assert codes == [0, 0], [w.log_text()[-2000:] for w in workers]
    # Each appender was in the middle of a call while the lock was held: it waited, then succeeded.
    blocked = calls_spanning(appenders, locked_at + hold_s / 2)
    assert len(blocked) == len(appenders), blocked
    assert all(min(positions) > head for _, _, positions in blocked)
    written = sorted(p for a in appenders for p in a.positions)
    assert written == list(range(BULK + 1, final + 1)), "an acknowledged append is missing, or extra"
    for a in appenders:
        a.check_streams(store)
    assert store.query("SELECT count(*) FROM lock_scratch") == [(0,)], "the killed holder's write survived"
    assert store.read_stream("impatient") == []
    impatient.close()
    check_exactly_once(store, NAMES, upto=final)
    assert store.list_failures() == []
    for w in workers:
        no_errors(w)
    store.close()
    print(f"\nwrite lock held {hold_s} s by another process at head {head}: impatient client got "
          f"{type(caught.value).__name__} after {waited:.2f} s ({caught.value}); appenders waited "
          f"{sorted(round(end - locked_at, 2) for _, end, _ in blocked)} s; final head {final}")


def chattr(flag: str, *paths: str) -> None:
    subprocess.run(["chattr", flag, *paths], check=True, capture_output=True)


def require_chattr(tmp_path: Path) -> None:
    require_root("making a file immutable (chattr +i)")
    probe = tmp_path / "chattr-probe"
    probe.write_text("x")
    try:
        if shutil.which("chattr") is None:
            raise OSError("chattr not installed")
        chattr("+i", str(probe))
        chattr("-i", str(probe))
    except (OSError, subprocess.CalledProcessError) as exc:
        reason = f"cannot make files immutable here: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    finally:
        probe.unlink()


def append_retrying(store: stoic.Store, stream: str, amount: int) -> int:
    """Appends one event, retrying StoreUnavailable (transient) up to twice; returns the retries."""
    for retries in range(3):
        try:
            store.append(stream, [stoic.NewEvent("Deposited", {"amount": amount})])
            return retries
        except stoic.StoreUnavailable:
            if retries == 2:
                raise
    raise AssertionError("unreachable")


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_database_file_turns_read_only(make_url, tmp_path: Path) -> None:
    require_chattr(tmp_path)
    url = make_url("sqlite-file")
    path = sqlite_path(url)
    store = stoic.connect(url)
    events = 6000
    append_bulk(store, events, seed=62, streams=40)
    fault_s = 2.5
    with Processes(tmp_path) as procs:
        worker = procs.worker(url, lease_ttl=2, claim_interval=0.2, batch_size=50,
                              env={"STOIC_TEST_PROJECTIONS": str(len(NAMES)), "STOIC_TEST_SLOW_MS": "0.5"})
        wait_until(lambda: sum(checkpoints(store).values()) >= 800, 30, "the catch-up to start")
        # The main file and the WAL (where commits go); not the -shm index, which is
        # memory-mapped: SQLite would die of SIGBUS, which is no test of Stoic.
        files = [path, path + "-wal"]
        chattr("+i", *files)
        try:
            started = time.monotonic()
            head = store.head()
            with pytest.raises(stoic.StoreUnavailable) as existing:
                store.append("during-ro", [stoic.NewEvent("Deposited", {"amount": 1})])
            late = stoic.connect(url)  # a client that connects while the file is read-only
            with pytest.raises(stoic.StoreUnavailable, match="read-only") as fresh:
                late.append("during-ro", [stoic.NewEvent("Deposited", {"amount": 2})])
            time.sleep(0.5)
            frozen = checkpoints(store)
            while time.monotonic() - started < fault_s:
                assert checkpoints(store) == frozen and store.head() == head, "a write went through"
                time.sleep(0.05)
            assert worker.running, worker.log_text()[-2000:]
        finally:
            chattr("-i", *files)
        assert store.read_stream("during-ro") == [] and store.head() == head
        # Writable again: the worker resumes; both clients can append again (a client
        # whose connection was opened during the fault may get one more StoreUnavailable,
        # a transient error: retried, it succeeds).
        wait_until(lambda: sum(checkpoints(store).values()) > sum(frozen.values()), 15, "the worker to resume")
        retries = [append_retrying(client, "after-ro", amount) for amount, client in ((3, store), (4, late))]
        assert retries[1] <= 1 and retries[0] <= 1, retries
        late.close()
        final = store.head()
        assert final == events + 2
        wait_until(lambda: all(checkpoints(store).get(n) == final for n in NAMES), 60, "the catch-up")
        worker.send(signal.SIGTERM)
        code = worker.wait(15)

    assert code == 0, worker.log_text()[-3000:]
    check_exactly_once(store, NAMES, upto=final)
    assert store.list_failures() == [], "a read-only file was recorded as an event failure"
    actions = [r.get("action") for r in worker.records()]
    assert "reconnect" in actions, actions
    no_errors(worker)
    store.close()
    print(f"\nread-only for {fault_s} s mid catch-up at {frozen}: existing connection got "
          f"StoreUnavailable({existing.value}); a new one StoreUnavailable({fresh.value}); worker "
          f"reconnected {actions.count('reconnect')} times and finished; client retries after the fault {retries}")


@contextlib.contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    """Mounts a tmpfs of ``size`` at ``where`` (skips without root; fails with CI=true)."""
    require_root("mounting a small tmpfs")
    where.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        reason = f"cannot mount a tmpfs: {result.stderr.strip()}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(path: Path) -> int:
    """Writes zeros to ``path`` until the disk is full; returns the bytes written."""
    written = 0
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                written += f.write(chunk)
        except OSError as exc:
            assert exc.errno == 28, exc  # ENOSPC
    with contextlib.suppress(OSError), open(path, "ab", buffering=0) as f:
        while f.write(b"\0" * 512):  # the last partial chunk
            pass
    return written


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_disk_full(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "32m") as disk:
        url = f"sqlite:///{disk / 'stoic.db'}"
        store = stoic.connect(url)
        events = 6000
        append_bulk(store, events, seed=63, streams=40)
        with Processes(tmp_path) as procs:
            worker = procs.worker(url, lease_ttl=2, claim_interval=0.2, batch_size=50,
                                  env={"STOIC_TEST_PROJECTIONS": str(len(NAMES)), "STOIC_TEST_SLOW_MS": "0.5"})
            wait_until(lambda: sum(checkpoints(store).values()) >= 800, 30, "the catch-up to start")
            filler = disk / "filler"
            filled = fill(filler)
            try:
                # Appends fail with a typed error once the WAL needs room (at once, or
                # after the little room left in it is used up), and write nothing.
                error, attempts = None, 0
                while error is None and attempts < 50:
                    attempts += 1
                    head = store.head()
                    stream = f"full-{attempts}"
                    try:
                        store.append_many([(f"{stream}-{j}", [stoic.NewEvent("Deposited", {"amount": 1,
                                           "pad": "x" * 2000})], stoic.NO_STREAM) for j in range(50)])
                    except stoic.StoreUnavailable as exc:
                        error = exc
                        assert store.head() == head
                        assert all(store.read_stream(f"{stream}-{j}") == [] for j in range(50))
                assert error is not None, f"{attempts} appends of 100 kB succeeded on a full disk"
                assert "disk is full" in str(error), error
                # The worker cannot commit either; it backs off and stays up.
                wait_until(lambda: any(r.get("action") == "reconnect" for r in worker.records()), 15,
                           "the worker to notice the full disk")
                stuck = checkpoints(store)
                time.sleep(1.0)
                assert checkpoints(store) == stuck and worker.running, worker.log_text()[-2000:]
            finally:
                filler.unlink()
            wait_until(lambda: sum(checkpoints(store).values()) > sum(stuck.values()), 15, "the worker to resume")
            store.append("after-full", [stoic.NewEvent("Deposited", {"amount": 5})])
            final = store.head()
            wait_until(lambda: all(checkpoints(store).get(n) == final for n in NAMES), 60, "the catch-up")
            worker.send(signal.SIGTERM)
            code = worker.wait(15)
        assert code == 0, worker.log_text()[-3000:]
        assert final == events + 50 * (attempts - 1) + 1
        check_exactly_once(store, NAMES, upto=final)
        assert store.list_failures() == [], "a full disk was recorded as an event failure"
        actions = [r.get("action") for r in worker.records()]
        no_errors(worker)
        store.close()
    print(f"\ndisk full ({filled // 1024} kB filler) mid catch-up at {stuck}: append {attempts} got "
          f"StoreUnavailable({error}); worker reconnected {actions.count('reconnect')} times and finished")
