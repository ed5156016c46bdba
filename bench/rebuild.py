"""Rebuilding the billing balances projection over a large store (default 1,000,000 events).

The store holds a billing history in the shape of ``stoic.examples.billing``:
20,000 accounts (``account-…`` streams), each an ``AccountOpened {owner,
currency, overdraft_limit, max_balance}`` followed by ``Deposited`` and
``Withdrawn {amount, currency}`` events (integer cents, the balance never
below zero), appended with ``store.append_many`` in chunks of 1,000 streams x
10 events (10,000 events per commit), so that the accounts interleave in the
global order as they would in production. Event ids are time-ordered UUIDs
(version 7 layout) supplied by the generator (``--random-ids``: the store's
default ``uuid4``), which keeps the generation fast (see "append" in
docs/benchmarks.md). On PostgreSQL ``ANALYZE stoic_events`` runs after the
generation, as autovacuum would have done on a store that has lived a while
(``--no-analyze``: stale statistics, which make the gate's per-stream reads slow).

Then, on that store, with ``stoic.examples.billing.Balances`` (versioned and
reconcilable):

a. **catch-up**: ``Runner(store, App([Balances])).run_until_caught_up()`` from
   position 0 (generation 1), events/s;
b. **rebuild without downtime**: the same projection with ``version = 2``, run
   by ``Runner(...).run_until_caught_up()``: the ``billing_balances@build`` unit
   builds generation 2 beside the serving one, then the verification gate
   (a sample of ``verify_sample`` = 1,000 accounts re-folded from their events,
   plus the accounting-equation check over every event), then the switch (the
   view and the serving checkpoint in one fenced transaction). Reported: build
   events/s, gate seconds, switch seconds, and the wall time of the whole call;
c. **reset in place** (``--no-reset`` to leave it out):
   ``Operations.reset`` then ``run_until_caught_up()``: the read model is
   cleared and refilled in the serving tables.

The phase boundaries inside ``run_until_caught_up`` are taken by a Runner whose
projection runners time ``acquire``, ``_verify_build``, ``_try_switch`` and
``_rewind`` (private methods, wrapped, not changed). A reader thread on its own
connection queries one account's balance through the ``billing_balances`` view
every 50 ms during b and c and checks it against the generator's fold: during
a rebuild every read must be right (no downtime), during a reset the read model
is incomplete until the catch-up ends. After each phase the read model's
row count, sum of balances and movements are checked against the fold.

    python -m bench.rebuild --backend both --events 1000000 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

import stoic
from bench.workload import (
    DISTURBED_CORES,
    SampledCpuMeter,
    add_common_arguments,
    apply_common_arguments,
    backends,
    fresh_store,
    print_summary,
    summary,
    wait_for_quiet,
)
from stoic.examples.billing.projections import Balances
from stoic.projection_runner import ProjectionRunner

ACCOUNTS = 20_000
EVENTS = 1_000_000
STREAMS_PER_COMMIT = 1_000
EVENTS_PER_WAVE = 10  #: events of one stream in one append_many item
CURRENCIES = ("EUR", "USD", "GBP", "CHF")
ACTOR = "bench-rebuild"
READ_INTERVAL_S = 0.05


class BalancesV2(Balances):
    """The same read model, version 2: a deploy that asks for a rebuild. Its global
    check (the accounting equation over every event) records how long it took."""

    version = 2
    check_seconds: ClassVar[list[float]] = []

    def checks(self, snapshot: Any) -> list[Any]:
        started = time.perf_counter()
        try:
            return super().checks(snapshot)
        finally:
            BalancesV2.check_seconds.append(time.perf_counter() - started)


# -- the billing history ----------------------------------------------------------------------


class History:
    """Generates the events and keeps their fold (balance and movements per account)."""

    def __init__(self, accounts: int, per_account: int, seed: int = 7, random_ids: bool = False) -> None:
        if per_account < 1:
            raise ValueError("at least one event per account")
        self.accounts = accounts
        self.per_account = per_account
        self.random_ids = random_ids
        self.rng = random.Random(seed)
        self.balance = [0] * accounts
        self.movements = [0] * accounts
        self._ms = int(time.time() * 1000)
        self._seq = 0

    @property
    def events(self) -> int:
        return self.accounts * self.per_account

    def _id(self) -> uuid.UUID | None:
        """A UUIDv7-layout id: 48-bit milliseconds, then a counter (ordered within a run)."""
        if self.random_ids:
            return None
        self._seq += 1
        value = (self._ms << 80) | (0x7 << 76) | (0b10 << 62) | self._seq
        return uuid.UUID(int=value)

    def _event(self, index: int, version: int) -> stoic.NewEvent:
        currency = CURRENCIES[index % len(CURRENCIES)]
        if version == 1:
            return stoic.NewEvent(
                "AccountOpened",
                {
                    "owner": f"Customer {index:06d}",
                    "currency": currency,
                    "overdraft_limit": 0,
                    "max_balance": 100_000_000,
                },
                event_id=self._id(),
            )
        self.movements[index] += 1
        balance = self.balance[index]
        if balance >= 1_000 and self.rng.random() < 0.4:
            amount = self.rng.randint(100, balance)
            self.balance[index] = balance - amount
            return stoic.NewEvent("Withdrawn", {"amount": amount, "currency": currency}, event_id=self._id())
        amount = self.rng.randint(100, 50_000)
        self.balance[index] = balance + amount
        return stoic.NewEvent("Deposited", {"amount": amount, "currency": currency}, event_id=self._id())

    def account(self, index: int) -> str:
        return f"account-{index:06d}"

    def append_to(self, store: stoic.Store) -> int:
        """Appends the whole history in waves (every account gets its next few events),
        ``STREAMS_PER_COMMIT`` streams per append_many call; returns the events written."""
        written = 0
        for first_version in range(1, self.per_account + 1, EVENTS_PER_WAVE):
            last_version = min(first_version + EVENTS_PER_WAVE - 1, self.per_account)
            expected: Any = stoic.NO_STREAM if first_version == 1 else first_version - 1
            for first in range(0, self.accounts, STREAMS_PER_COMMIT):
                items = [
                    (self.account(i), [self._event(i, v) for v in range(first_version, last_version + 1)], expected)
                    for i in range(first, min(first + STREAMS_PER_COMMIT, self.accounts))
                ]
                written += sum(len(r.positions) for r in store.append_many(items))
        return written

    def totals(self) -> tuple[int, int, int]:
        """(accounts, sum of balances, movements): what the read model must add up to."""
        return self.accounts, sum(self.balance), sum(self.movements)


def check_totals(store: stoic.Store, history: History, what: str) -> None:
    row = store.query("SELECT count(*), COALESCE(SUM(balance), 0), COALESCE(SUM(movements), 0) FROM billing_balances")
    got = tuple(int(v) for v in row[0])
    if got != history.totals():
        raise AssertionError(f"{what}: read model (rows, balance, movements) = {got}, expected {history.totals()}")


def served_generation(store: stoic.Store) -> tuple[int | None, int | None]:
    """(version, generation) the main row serves."""
    session = store.open_session()
    try:
        state = session.versioning(Balances.name)
        return (state.version, state.generation) if state else (None, None)
    finally:
        session.close()


# -- timing the phases inside run_until_caught_up ---------------------------------------------


class Marks:
    """Timestamps (perf_counter) of the steps inside one run_until_caught_up call."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.spans: dict[str, list[tuple[float, float]]] = {}

    def mark(self, key: str) -> None:
        self.times.setdefault(key, time.perf_counter())

    def span(self, key: str, started: float) -> None:
        self.spans.setdefault(key, []).append((started, time.perf_counter()))

    def seconds(self, key: str) -> float:
        return sum(end - start for start, end in self.spans.get(key, []))


def timed_runner(store: stoic.Store, app: stoic.App, marks: Marks, batch_size: int | None) -> stoic.Runner:
    """A Runner whose projection runners record when they acquired, verified, switched and rewound."""

    class TimedProjectionRunner(ProjectionRunner):
        def acquire(self) -> bool:
            started = time.perf_counter()
            ok = super().acquire()
            if ok:
                marks.span(f"acquire {self.name}", started)
                marks.mark(f"acquired {self.name}")
            return ok

        def _verify_build(self) -> str | None:
            started = time.perf_counter()
            try:
                return super()._verify_build()
            finally:
                marks.span("gate", started)

        def _try_switch(self) -> Any:
            started = time.perf_counter()
            marks.mark("build caught up")
            try:
                return super()._try_switch()
            finally:
                marks.span("try_switch", started)

        def _rewind(self, control: Any) -> None:
            started = time.perf_counter()
            try:
                super()._rewind(control)
            finally:
                marks.span("rewind", started)

    class TimedRunner(stoic.Runner):
        def _runner(self, projection: stoic.Projection) -> ProjectionRunner:
            return TimedProjectionRunner(
                self.store,
                projection,
                self.worker_id,
                self.batch_size,
                policy=projection.failure_policy(self.app.classifier),
            )

    return TimedRunner(store, app, batch_size=batch_size)


class Reader(threading.Thread):
    """Reads one random account's balance through the view every READ_INTERVAL_S and
    compares it with the fold; records latency, errors and wrong answers."""

    def __init__(self, url: str, history: History) -> None:
        super().__init__(name="reader", daemon=True)
        self.url, self.history = url, history
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.wrong = 0
        self.errors: list[str] = []

    def run(self) -> None:
        store = stoic.connect(self.url)
        rng = random.Random(3)
        try:
            while not self.stop.wait(READ_INTERVAL_S):
                index = rng.randrange(self.history.accounts)
                started = time.perf_counter()
                try:
                    rows = store.query(
                        "SELECT balance FROM billing_balances WHERE account = ?", (self.history.account(index),)
                    )
                except stoic.StoicError as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                self.latencies.append(time.perf_counter() - started)
                if not rows or int(rows[0][0]) != self.history.balance[index]:
                    self.wrong += 1
        finally:
            store.close()

    def finish(self) -> dict[str, Any]:
        self.stop.set()
        self.join(30)
        lat = sorted(self.latencies)
        return {
            "reads": len(lat),
            "wrong": self.wrong,
            "errors": len(self.errors),
            "read_p50_ms": statistics.median(lat) * 1000 if lat else float("nan"),
            "read_max_ms": lat[-1] * 1000 if lat else float("nan"),
            "first_error": self.errors[:1],
        }


def _phase(label: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    meter = SampledCpuMeter()
    load_before = os.getloadavg()[0]
    result = work()
    result["others_cores"] = meter.read()["others_cores"]
    result["load_before"] = load_before
    print(f"    {label}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in result.items()), flush=True)
    return result


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if value < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# -- one run ---------------------------------------------------------------------------------


def run_rebuild(
    backend: str,
    events: int = EVENTS,
    accounts: int = ACCOUNTS,
    *,
    reset: bool = True,
    random_ids: bool = False,
    batch_size: int | None = None,
    analyze: bool = True,
) -> dict[str, Any]:
    per_account = max(1, events // accounts)
    history = History(accounts, per_account, random_ids=random_ids)
    out: dict[str, Any] = {"backend": backend, "events": history.events}
    with fresh_store(backend) as (url, store):
        generated = _phase("generate", lambda: _generate(store, history))
        out["load_before"] = generated["load_before"]
        out.update(
            generate_s=generated["seconds"],
            generate_eps=generated["events_per_s"],
            generate_others=generated["others_cores"],
        )
        if analyze and backend == "postgres":
            started = time.perf_counter()
            store.query("ANALYZE stoic_events")
            out["analyze_s"] = time.perf_counter() - started

        catchup = _phase("catch-up", lambda: _catchup(store, history, batch_size))
        out.update(
            catchup_s=catchup["seconds"], catchup_eps=catchup["events_per_s"], catchup_others=catchup["others_cores"]
        )

        rebuilt = _phase("rebuild", lambda: _rebuild(store, url, history, batch_size))
        out.update({f"rebuild_{k}": v for k, v in rebuilt.items()})

        if reset:
            was_reset = _phase("reset", lambda: _reset(store, url, history, batch_size))
            out.update({f"reset_{k}": v for k, v in was_reset.items()})
    out["load_after"] = os.getloadavg()[0]
    return out


def _generate(store: stoic.Store, history: History) -> dict[str, Any]:
    started = time.perf_counter()
    written = history.append_to(store)
    seconds = time.perf_counter() - started
    assert written == history.events == store.head(), (written, history.events, store.head())
    return {"seconds": seconds, "events_per_s": written / seconds}


def _catchup(store: stoic.Store, history: History, batch_size: int | None) -> dict[str, Any]:
    runner = stoic.Runner(store, stoic.App([Balances]), batch_size=batch_size)
    started = time.perf_counter()
    positions = runner.run_until_caught_up()
    seconds = time.perf_counter() - started
    assert positions.get(Balances.name) == history.events, positions
    assert served_generation(store) == (1, 1), served_generation(store)
    check_totals(store, history, "catch-up")
    return {"seconds": seconds, "events_per_s": history.events / seconds}


def _rebuild(store: stoic.Store, url: str, history: History, batch_size: int | None) -> dict[str, Any]:
    marks = Marks()
    BalancesV2.check_seconds.clear()
    runner = timed_runner(store, stoic.App([BalancesV2]), marks, batch_size)
    reader = Reader(url, history)
    reader.start()
    time.sleep(0.2)
    started = time.perf_counter()
    positions = runner.run_until_caught_up()
    total = time.perf_counter() - started
    reads = reader.finish()
    if served_generation(store) != (2, 2):
        raise AssertionError(f"the rebuild did not switch: serving {served_generation(store)}, ran {positions}")
    check_totals(store, history, "rebuild")
    build_name = f"{Balances.name}@build"
    built_from = marks.times[f"acquired {build_name}"]
    caught_up = marks.times["build caught up"]
    gate = marks.seconds("gate")
    switch = marks.seconds("try_switch") - gate
    return {
        "total_s": total,
        "build_s": caught_up - built_from,
        "build_eps": history.events / (caught_up - built_from),
        "gate_s": gate,
        "gate_check_s": sum(BalancesV2.check_seconds),
        "switch_s": switch,
        "after_switch_s": total - (marks.spans["try_switch"][-1][1] - started),
        **reads,
    }


def _reset(store: stoic.Store, url: str, history: History, batch_size: int | None) -> dict[str, Any]:
    app = stoic.App([BalancesV2])
    marks = Marks()
    reader = Reader(url, history)
    reader.start()
    time.sleep(0.2)
    started = time.perf_counter()
    stoic.Operations(store, app=app).reset(Balances.name, ACTOR, "benchmark: reset in place")
    positions = timed_runner(store, app, marks, batch_size).run_until_caught_up()
    total = time.perf_counter() - started
    reads = reader.finish()
    assert positions.get(Balances.name) == history.events, positions
    check_totals(store, history, "reset")
    return {"total_s": total, "eps": history.events / total, "rewind_s": marks.seconds("rewind"), **reads}


# -- the command -----------------------------------------------------------------------------


FIGURES = (
    ("generate (append_many, 10,000 events/commit)", "generate_eps", "events/s"),
    ("generate, seconds", "generate_s", "s"),
    ("ANALYZE stoic_events, seconds", "analyze_s", "s"),
    ("a. catch-up from 0", "catchup_eps", "events/s"),
    ("b. rebuild: build generation 2", "rebuild_build_eps", "events/s"),
    ("b. rebuild: verification gate", "rebuild_gate_s", "s"),
    ("b. rebuild: gate, of which the accounting-equation check", "rebuild_gate_check_s", "s"),
    ("b. rebuild: switch", "rebuild_switch_s", "s"),
    ("b. rebuild: whole run_until_caught_up", "rebuild_total_s", "s"),
    ("b. rebuild: reads during it, wrong or failed", "rebuild_bad_reads", "reads"),
    ("b. rebuild: read latency max", "rebuild_read_max_ms", "ms"),
    ("c. reset in place + catch-up", "reset_eps", "events/s"),
    ("c. reset: reads during it, wrong or failed", "reset_bad_reads", "reads"),
)


def bench(
    backend_names: list[str],
    events: int,
    repeat: int,
    *,
    wait: bool = True,
    reset: bool = True,
    random_ids: bool = False,
    batch_size: int | None = None,
    analyze: bool = True,
) -> list[dict[str, Any]]:
    results = []
    for backend in backend_names:

        def one(b: str = backend) -> dict[str, Any]:
            r = run_rebuild(b, events, reset=reset, random_ids=random_ids, batch_size=batch_size, analyze=analyze)
            r["rebuild_bad_reads"] = r["rebuild_wrong"] + r["rebuild_errors"]
            if reset:
                r["reset_bad_reads"] = r["reset_wrong"] + r["reset_errors"]
            return r

        # A run is disturbed when other processes used more than DISTURBED_CORES during any
        # of its phases (each phase is metered on its own, by sampling /proc).
        runs: list[dict[str, Any]] = []
        attempts = 0
        while sum(not r["disturbed"] for r in runs) < repeat and attempts < 2 * repeat:
            attempts += 1
            if wait:
                wait_for_quiet()
            r = one()
            r["others_cores"] = max(v for k, v in r.items() if k.endswith("others") or k.endswith("others_cores"))
            r["disturbed"] = r["others_cores"] > DISTURBED_CORES
            runs.append(r)
            print(
                f"  {backend:8} rebuild run {attempts}: catch-up {r['catchup_eps']:,.0f} ev/s, build "
                f"{r['rebuild_build_eps']:,.0f} ev/s, gate {r['rebuild_gate_s']:.2f} s, switch "
                f"{r['rebuild_switch_s'] * 1000:.0f} ms; load {r['load_before']:.2f}-{r['load_after']:.2f} "
                f"[others, busiest phase: {r['others_cores']:.2f} cores]{'  DISTURBED' if r['disturbed'] else ''}",
                flush=True,
            )
        clean = [r for r in runs if not r["disturbed"]]
        runs = clean if len(clean) >= repeat else runs
        for case, key, unit in FIGURES:
            if all(key in r for r in runs):
                results.append(summary("rebuild", backend, case, unit, key, runs))
                print_summary(results[-1], digits=3 if unit == "s" else 1 if unit == "ms" else 0)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rebuild", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=EVENTS, help=f"events in the store (default {EVENTS:,})")
    parser.add_argument("--batch-size", type=int, default=None, help="events per transaction (default 500)")
    parser.add_argument("--no-reset", action="store_true", help="leave out the reset-in-place phase")
    parser.add_argument("--random-ids", action="store_true", help="let the store draw uuid4 event ids")
    parser.add_argument(
        "--no-analyze",
        action="store_true",
        help="PostgreSQL: do not ANALYZE stoic_events after generating (stale planner statistics)",
    )
    add_common_arguments(parser, repeat=1)
    args = parser.parse_args(argv)
    apply_common_arguments(args)
    print(
        f"rebuild of {Balances.name} over {args.events:,} events ({ACCOUNTS:,} accounts), "
        f"{args.repeat} undisturbed run(s) per backend; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    bench(
        backends(args.backend),
        args.events,
        args.repeat,
        wait=not args.no_wait,
        reset=not args.no_reset,
        random_ids=args.random_ids,
        batch_size=args.batch_size,
        analyze=not args.no_analyze,
    )


if __name__ == "__main__":
    main()
