"""Runs every benchmark with modest sizes and prints one table with the targets.

    python -m bench.all                      # both backends, about 3 minutes on a quiet machine
    python -m bench.all --backend sqlite --repeat 2 --json results.json

The full-size commands (100,000 events) are ``python -m bench.append``,
``python -m bench.catchup`` and ``python -m bench.latency``; docs/benchmarks.md
records their results. Each run waits for the machine to be quiet first and is
flagged (and repeated) when other processes competed for the CPU meanwhile.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from bench import append, catchup, latency
from bench.workload import add_common_arguments, apply_common_arguments, backends, machine

# (bench, case prefix) -> {backend: (comparison, target)}; "ge" for rates, "le" for times.
TARGETS: dict[tuple[str, str], dict[str, tuple[str, float]]] = {
    ("catch-up", "stoic Runner"): {"sqlite": ("ge", 100_000), "postgres": ("ge", 20_000)},
    ("append", "append x"): {"sqlite": ("ge", 25_000), "postgres": ("ge", 9_000)},
    ("append", "append_many"): {"sqlite": ("ge", 50_000), "postgres": ("ge", 25_000)},
    ("latency", "live latency p99 (commit"): {"sqlite": ("le", 5.0), "postgres": ("le", 3.0)},
    ("latency", "worker CPU while idle"): {"sqlite": ("le", 10.0), "postgres": ("le", 10.0)},
}

# The eventsourcing library 9.5 on a machine like this one (from the issue).
REFERENCE: dict[tuple[str, str], dict[str, str]] = {
    ("catch-up", "stoic Runner"): {"sqlite": "3,600", "postgres": "1,100"},
    ("append", "append x1"): {"sqlite": "18,600", "postgres": "4,800"},
    ("append", "append_many"): {"sqlite": "42,000", "postgres": "22,000"},
    ("latency", "live latency p99 (commit"): {"sqlite": "1.9", "postgres": "2.9"},
}


def _lookup(table: dict[tuple[str, str], dict[str, Any]], s: dict[str, Any]) -> Any:
    for (bench, prefix), per_backend in table.items():
        if s["bench"] == bench and s["case"].startswith(prefix):
            return per_backend.get(s["backend"])
    return None


def verdict(s: dict[str, Any]) -> tuple[str, str]:
    """Returns (target text, 'met' / 'MISSED' / '') for a summary."""
    target = _lookup(TARGETS, s)
    if target is None:
        return "", ""
    comparison, value = target
    met = s["median"] >= value if comparison == "ge" else s["median"] <= value
    text = f"{'>=' if comparison == 'ge' else '<='} {value:,.0f}" if value >= 100 else f"<= {value:g}"
    return text, "met" if met else "MISSED"


def print_table(summaries: list[dict[str, Any]]) -> None:
    header = ("backend", "benchmark", "median", "min-max", "unit", "target", "", "eventsourcing 9.5")
    rows = [header]
    for s in summaries:
        digits = 0 if s["median"] >= 100 else 2 if s["unit"] == "ms" else 1
        f = f"{{:,.{digits}f}}"
        target, ok = verdict(s)
        if ok and s["disturbed"]:
            ok += " (disturbed)"
        rows.append(
            (
                s["backend"],
                f"{s['bench']}: {s['case']}",
                f.format(s["median"]),
                f"{f.format(s['min'])}-{f.format(s['max'])}",
                s["unit"],
                target,
                ok,
                _lookup(REFERENCE, s) or "",
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    for n, r in enumerate(rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.all", description=__doc__.split("\n")[0])
    add_common_arguments(parser, repeat=1)
    parser.add_argument("--accounts", type=int, default=3_000, help="streams of 10 events (default 3,000)")
    parser.add_argument("--samples", type=int, default=500, help="latency samples (default 500)")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--json", metavar="FILE", help="also write every run's figures to FILE")
    args = parser.parse_args(argv)
    apply_common_arguments(args)
    names = backends(args.backend)
    wait = not args.no_wait
    info = machine()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    started = time.monotonic()
    summaries: list[dict[str, Any]] = []
    print(f"\n== catch-up: {args.accounts * 10:,} events")
    summaries += catchup.bench(names, args.accounts, args.repeat, wait=wait)
    print(f"\n== append: {args.accounts * 10:,} events")
    summaries += append.bench(names, args.accounts, args.repeat, wait=wait)
    print(f"\n== live latency across processes: {args.samples} samples")
    summaries += latency.bench(names, args.samples, args.repeat, idle_seconds=args.idle_seconds, wait=wait)
    print(f"\n== summary ({time.monotonic() - started:.0f} s)\n")
    print_table(summaries)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "results": summaries}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
