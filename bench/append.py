"""Append throughput, events/s.

Two shapes of commit, on a fresh database per run:

* ``append``: one ``store.append`` per stream of 10 events (one AccountOpened and
  nine Deposited, ``expected_version=NO_STREAM``), by 1 client and by N
  concurrent clients (processes by default, each with its own store);
* ``append_many``: one ``store.append_many`` per 100 streams, 1,000 events a
  commit.

The events are built before the clock starts; the clock covers the appends
only (for several clients: from the moment all of them are released together
until the last one is done).

    python -m bench.append --backend both --accounts 10000 --repeat 2
"""

from __future__ import annotations

import argparse
import multiprocessing
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import stoic
from bench.workload import (
    ACCOUNTS,
    EVENTS_PER_ACCOUNT,
    account_events,
    account_id,
    add_common_arguments,
    apply_common_arguments,
    backends,
    drop,
    fmt_rate,
    fresh_url,
    measured,
    print_summary,
    summary,
)

STREAMS_PER_COMMIT = 100  #: streams per append_many commit (1,000 events)


def _work(mode: str, indexes: Sequence[int]) -> list[Any]:
    """The prepared commits of one client: one item per commit."""
    if mode == "append":
        return [(account_id(i), account_events(i)) for i in indexes]
    items = [(account_id(i), account_events(i), stoic.NO_STREAM) for i in indexes]
    return [items[k : k + STREAMS_PER_COMMIT] for k in range(0, len(items), STREAMS_PER_COMMIT)]


def _appender(store: stoic.Store, mode: str) -> Callable[[Any], None]:
    if mode == "append":
        return lambda commit: store.append(commit[0], commit[1], stoic.NO_STREAM)  # type: ignore[func-returns-value]
    return lambda commit: store.append_many(commit)  # type: ignore[func-returns-value]


def _client(url: str, mode: str, indexes: Sequence[int], barrier: Any, done: Any) -> None:
    """One client process: prepares its commits, waits for the start, appends."""
    store = stoic.connect(url)
    try:
        commits = _work(mode, indexes)
        append = _appender(store, mode)
        store.head()  # opens the connection before the clock starts
        barrier.wait()
        for commit in commits:
            append(commit)
        done.put(time.perf_counter())
    finally:
        store.close()


def _split(accounts: int, clients: int) -> list[list[int]]:
    """Shares of the accounts, dealt in blocks of 100 so append_many commits stay whole."""
    shares: list[list[int]] = [[] for _ in range(clients)]
    for n, first in enumerate(range(0, accounts, STREAMS_PER_COMMIT)):
        shares[n % clients].extend(range(first, min(first + STREAMS_PER_COMMIT, accounts)))
    return shares


def run_append(
    backend: str, mode: str = "append", clients: int = 1, accounts: int = ACCOUNTS, use: str = "process"
) -> dict[str, Any]:
    """Runs one append benchmark on a fresh database; returns its figures."""
    url = fresh_url(backend)
    store = stoic.connect(url)  # creates the schema before the clients start
    try:
        shares = _split(accounts, clients)
        if clients == 1:
            commits = _work(mode, shares[0])
            append = _appender(store, mode)
            store.head()
            started = time.perf_counter()
            for commit in commits:
                append(commit)
            seconds = time.perf_counter() - started
        elif use == "thread":
            seconds = _run_threads(store, mode, shares)
        else:
            seconds = _run_processes(url, mode, shares)
        events = store.head()
        if events != accounts * EVENTS_PER_ACCOUNT:
            raise AssertionError(f"expected {accounts * EVENTS_PER_ACCOUNT} events, the head is {events}")
    finally:
        store.close()
        drop(url)
    commits_made = accounts if mode == "append" else -(-accounts // STREAMS_PER_COMMIT)
    return {
        "backend": backend,
        "mode": mode,
        "clients": clients,
        "use": use if clients > 1 else "-",
        "events": events,
        "commits": commits_made,
        "seconds": seconds,
        "events_per_s": events / seconds,
        "commits_per_s": commits_made / seconds,
    }


def _run_processes(url: str, mode: str, shares: list[list[int]]) -> float:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(shares) + 1)
    done = ctx.Queue()
    procs = [ctx.Process(target=_client, args=(url, mode, share, barrier, done)) for share in shares]
    for p in procs:
        p.start()
    barrier.wait(timeout=60)
    started = time.perf_counter()
    finished = [done.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"an appending process failed (exit code {p.exitcode})")
    return max(finished) - started


def _run_threads(store: stoic.Store, mode: str, shares: list[list[int]]) -> float:
    barrier = threading.Barrier(len(shares) + 1)
    finished: list[float] = []
    errors: list[BaseException] = []

    def client(share: list[int]) -> None:
        try:
            commits = _work(mode, share)
            append = _appender(store, mode)
            barrier.wait()
            for commit in commits:
                append(commit)
            finished.append(time.perf_counter())
        except BaseException as exc:
            errors.append(exc)
            raise

    threads = [threading.Thread(target=client, args=(share,)) for share in shares]
    for t in threads:
        t.start()
    barrier.wait(timeout=60)
    started = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return max(finished) - started


def bench(
    backend_names: list[str],
    accounts: int = ACCOUNTS,
    repeat: int = 2,
    *,
    clients: int = 4,
    use: str = "process",
    wait: bool = True,
) -> list[dict[str, Any]]:
    """Runs the append cases on each backend; returns one summary per case."""
    results = []
    for backend in backend_names:
        for mode, n in (("append", 1), ("append", clients), ("append_many", 1)):
            case = f"{mode} x{n} client{'s' if n > 1 else ''}"
            runs = measured(
                lambda b=backend, m=mode, n=n: run_append(b, m, n, accounts, use),
                repeat,
                wait=wait,
                label=f"{backend:8} {case}",
                show=lambda r: (
                    f"{fmt_rate(r['events_per_s'])} events/s "
                    f"({fmt_rate(r['commits_per_s'])} commits/s, {r['seconds']:.2f} s)"
                ),
            )
            results.append(summary("append", backend, case, "events/s", "events_per_s", runs))
            print_summary(results[-1])
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.append", description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", type=int, default=ACCOUNTS, help="streams of 10 events")
    parser.add_argument("--clients", type=int, default=4, help="clients of the concurrent case")
    parser.add_argument(
        "--use",
        choices=["process", "thread"],
        default="process",
        help="concurrent clients are processes (default) or threads sharing one store",
    )
    add_common_arguments(parser, repeat=2)
    args = parser.parse_args(argv)
    apply_common_arguments(args)
    print(f"append throughput: {args.accounts:,} streams x {EVENTS_PER_ACCOUNT} events, {args.repeat} runs each")
    bench(
        backends(args.backend),
        args.accounts,
        args.repeat,
        clients=args.clients,
        use=args.use,
        wait=not args.no_wait,
    )


if __name__ == "__main__":
    main()
