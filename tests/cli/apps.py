"""The app of the CLI tests: a ledger per stream whose handler refuses events
marked ``poison`` while :data:`BROKEN` is on (the "deployed fix" turns it off)."""

from __future__ import annotations

from typing import Any

import stoic
from stoic import Transaction


class Broken:
    on = True


BROKEN = Broken()


class Ledger(stoic.Projection):
    name = "ledger"
    retry_schedule = stoic.RetrySchedule(first_delay=3600, max_attempts=5)

    def setup(self, tx: Transaction) -> None:
        tx.execute("CREATE TABLE IF NOT EXISTS cli_ledger (stream TEXT PRIMARY KEY, total BIGINT NOT NULL)")

    def reset(self, tx: Transaction) -> None:
        tx.execute("DELETE FROM cli_ledger")

    @stoic.handles("Deposited")
    def deposited(self, event: Any, tx: Transaction) -> None:
        if event.data.get("poison") and BROKEN.on:
            raise ValueError(f"poison at {event.position}")
        updated = tx.execute("UPDATE cli_ledger SET total = total + ? WHERE stream = ?",
                             (event.data["amount"], event.stream_id))
        if updated.rowcount == 0:
            tx.execute("INSERT INTO cli_ledger VALUES (?, ?)", (event.stream_id, event.data["amount"]))


    # Reconciliation: the total per stream is the sum of its deposits.
    def expected_state(self, stream_id: str, events: list[Any]) -> dict[str, Any] | None:
        amounts = [e.data["amount"] for e in events if e.type == "Deposited"]
        return {"total": sum(amounts)} if amounts else None

    def actual_state(self, stream_id: str, tx: Transaction) -> dict[str, Any] | None:
        row = tx.execute("SELECT total FROM cli_ledger WHERE stream = ?", (stream_id,)).fetchone()
        return None if row is None else {"total": int(row[0])}

    def forget(self, stream_id: str, tx: Transaction) -> None:
        tx.execute("DELETE FROM cli_ledger WHERE stream = ?", (stream_id,))

    def checks(self, snapshot: Any) -> list[stoic.CheckResult]:
        negative = snapshot.execute("SELECT COUNT(*) FROM cli_ledger WHERE total < 0").fetchone()[0]
        return [stoic.CheckResult("no negative totals", negative == 0, f"{negative} negative totals")]


app = stoic.App([Ledger], name="cli-tests")
