"""A failure survives a SIGKILL of its worker: a ``stoic worker`` subprocess records
a poison event's failure and parks its stream, is killed before the background
retry, the fix is "deployed" (a flag file the app checks), and a restarted worker
retries the failure on schedule, resolves it and applies the parked events once,
in order."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from tests.apps import Processes, applied_order, check_applied, check_exactly_once, wait_until

import stoic
from stoic.store import FailureStatus, Resolution

from ._support import append_each, checkpoint, ev, only_failure, poison, wait_failure

NAME = "poisoned"  # the projection of tests.apps:make_poison_app
RETRY_DELAY = 2.0  # seconds between background retries: long enough to kill before the first


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_failure_recorded_before_a_sigkill_is_retried_after_restart(shared_url: str, tmp_path: Path) -> None:
    store = stoic.connect(shared_url)
    fixed = tmp_path / "fix-deployed"
    options = {
        "app": "tests.apps:make_poison_app",
        "lease_ttl": 0.6,
        "claim_interval": 0.2,
        "env": {"STOIC_TEST_FIXED_FLAG": str(fixed), "STOIC_TEST_RETRY_DELAY": str(RETRY_DELAY)},
    }
    a1, b1, a2, b2, a3, b3, a4 = append_each(store, [
        ("A", ev(1)), ("B", ev(2)), ("A", poison(3)), ("B", ev(4)), ("A", ev(5)), ("B", ev(6)), ("A", ev(7))])

    with Processes(tmp_path) as procs:
        first = procs.worker(shared_url, **options)  # type: ignore[arg-type]
        failure = wait_failure(store, NAME, timeout=30, parked=2)
        wait_until(lambda: checkpoint(store, NAME) == a4, 10, "the first worker to reach the head")
        assert first.running, first.log_text()[-2000:]
        first.send(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL

        # What the dead worker left: the failure, its schedule and the parked stream.
        left = only_failure(store, NAME)
        assert (left.status, left.attempts, left.parked, left.position) == (FailureStatus.RETRYING, 1, 2, a2)
        assert left.next_retry_at is not None and left.blocking
        assert applied_order(store, NAME) == [a1, b1, b2, b3]
        assert not any(r.get("action") == "failure_released" for r in first.records())

        fixed.touch()  # the fix is deployed while no worker runs
        a5, b4 = append_each(store, [("A", ev(8)), ("B", ev(9))])
        second = procs.worker(shared_url, **options)  # type: ignore[arg-type]
        done = wait_failure(store, NAME, timeout=30, status=FailureStatus.RESOLVED)
        wait_until(lambda: len(applied_order(store, NAME)) == 9, 10, "every event applied")
        second.send(signal.SIGTERM)
        assert second.wait(15) == 0, second.log_text()[-3000:]

    released = [r for r in second.records() if r.get("action") == "failure_released"]
    assert [r.get("failure_id") for r in released] == [failure.id], released
    assert (done.resolution, done.attempts, done.parked, done.blocking) == (Resolution.AUTO_RETRY, 1, 3, False)
    order = applied_order(store, NAME)
    assert [p for p in order if p in (a1, a2, a3, a4, a5)] == [a1, a2, a3, a4, a5]
    assert [p for p in order if p in (b1, b2, b3, b4)] == [b1, b2, b3, b4]
    check_applied(store, NAME)
    check_exactly_once(store, [NAME], upto=b4)
    store.close()
