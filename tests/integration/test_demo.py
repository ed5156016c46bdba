"""``stoic demo`` end to end, as a user runs it: a subprocess on a fresh SQLite
file serves the API while the workload runs, and exits 0 after reconciling the
balances with the events."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_the_demo_serves_the_dashboard_and_checks_the_balances(tmp_path: Path) -> None:
    port = free_port()
    db = f"sqlite:///{tmp_path}/demo.db"
    process = subprocess.Popen(
        [sys.executable, "-m", "stoic", "demo", "--db", db, "--port", str(port), "--accounts", "40",
         "--clients", "2", "--duration", "6"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )
    try:
        names: set[str] = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                names = {p["name"] for p in get(f"http://127.0.0.1:{port}/health/projections")}  # type: ignore[union-attr]
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
                if len(names) >= 4:
                    break
            except OSError:
                time.sleep(0.2)
        assert {"billing_balances", "billing_transactions", "billing_daily_totals", "billing_notifier"} <= names
        assert "<title" in page
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output
    text = " ".join(output.split())
    assert "WARNING: admin actions are open to anyone on this machine" in text
    assert "check passed: 40 of 40 account balances equal the fold of their events" in text
    assert "accounting equation holds" in text
