"""Property: for random account events, random batch sizes and a random point at
which the runner catches up in between, the read model equals a fold of the
events and every event is applied exactly once."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stoic

from ._helpers import Balances, fold_balances, read_balances

ACCOUNTS = ("acc-1", "acc-2", "acc-3", "acc-4")

operations = st.lists(
    st.tuples(
        st.sampled_from(ACCOUNTS),
        st.sampled_from(["Deposited", "Withdrawn"]),
        st.integers(1, 1_000),
        st.integers(1, 3),  # how many events this append carries
    ),
    max_size=30,
)


def expected_balances(ops: list[tuple[str, str, int, int]]) -> dict[str, tuple[int, int]]:
    """The read model computed from the generated operations alone."""
    model: dict[str, tuple[int, int]] = {}
    for account, kind, amount, repeat in ops:
        balance, movements = model.get(account, (0, 0))
        sign = 1 if kind == "Deposited" else -1
        model[account] = (balance + sign * amount * repeat, movements + repeat)
    return model


def append_ops(store: stoic.Store, ops: list[tuple[str, str, int, int]]) -> None:
    for account, kind, amount, repeat in ops:
        events = [stoic.NewEvent(kind, {"amount": amount}) for _ in range(repeat)]
        if store.stream_version(account) == 0:
            events.insert(0, stoic.NewEvent("Opened", {"owner": account}))
        store.append(account, events)


def check_fold(make_store: Callable[[], stoic.Store], max_examples: int) -> None:
    @settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(ops=operations, batch_size=st.integers(1, 8), split=st.integers(0, 30))
    def run(ops: list[tuple[str, str, int, int]], batch_size: int, split: int) -> None:
        store = make_store()
        try:
            projection = Balances()
            app = stoic.App([projection])

            append_ops(store, ops[:split])
            stoic.Runner(store, app, batch_size=batch_size).run_until_caught_up()
            assert read_balances(store) == fold_balances(store.read_all(0, 10_000))
            assert read_balances(store) == expected_balances(ops[:split])

            append_ops(store, ops[split:])
            positions = stoic.Runner(store, app, batch_size=batch_size).run_until_caught_up()
            events = store.read_all(0, 10_000)
            assert positions == {"balances": store.head()}
            assert read_balances(store) == fold_balances(events)
            assert read_balances(store) == expected_balances(ops)
            # exactly once: every event handled once, in global order, across both runs
            assert projection.seen == [e.position for e in events]
        finally:
            store.close()

    run()


def test_read_model_equals_fold_on_sqlite_memory() -> None:
    check_fold(lambda: stoic.connect("sqlite://:memory:"), max_examples=60)


def test_read_model_equals_fold_on_postgres(make_url: Callable[[str], str]) -> None:
    make_url("postgres")  # skips when PostgreSQL is unavailable
    check_fold(lambda: stoic.connect(make_url("postgres")), max_examples=8)


@pytest.mark.parametrize("backend", ["sqlite-file"])
def test_read_model_equals_fold_on_a_sqlite_file(backend: str, make_url: Callable[[str], str]) -> None:
    check_fold(lambda: stoic.connect(make_url(backend)), max_examples=8)
