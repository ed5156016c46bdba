"""Property-based tests of every operation in the OpenAPI schema (schemathesis):
valid and invalid inputs, with the admin token so that the admin routes run, on
one populated SQLite store. No input may cause a 500.

Path parameters are sometimes swapped for the names and failure ids the store
has, so that the fuzzer reaches real rows, not only 404s. (schemathesis' own
pytest integration, ``schema.parametrize()``, fails under pytest 9 in the
installed version, so each operation runs a Hypothesis test over the
operation's strategy.)"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

import stoic
from stoic.api.app import create_app

from ._support import ADMIN, NAMES, STREAM_A, Broken, append_world, make_app, make_client

#: examples per operation and mode (about 25 operations x 2 modes); STOIC_FUZZ_EXAMPLES=500 for a deeper hunt
EXAMPLES = int(os.environ.get("STOIC_FUZZ_EXAMPLES", "15"))
KNOWN: dict[str, list[Any]] = {"name": NAMES, "failure_id": [1, 2, 3, 4], "stream_id": [STREAM_A]}


def operations() -> list[str]:
    """``METHOD path`` of every operation (the schema does not depend on the store)."""
    paths = create_app(None).openapi()["paths"]  # type: ignore[arg-type]
    return [f"{method.upper()} {path}" for path, methods in paths.items() for method in methods]


def known_values(path_parameters: dict[str, Any] | None) -> Any:
    if not path_parameters:
        return st.just(path_parameters)
    return st.fixed_dictionaries({
        key: st.one_of(st.just(value), st.sampled_from(KNOWN[key])) if key in KNOWN else st.just(value)
        for key, value in path_parameters.items()
    })


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[Any]:
    """One populated SQLite store for every operation (what the fuzzer changes stays: more states)."""
    store = stoic.connect("sqlite://:memory:")
    app = make_app(Broken())
    append_world(store)
    stoic.Runner(store, app).run_until_caught_up(timeout=30)
    with make_client(store, app) as client:
        yield schemathesis.openapi.from_asgi("/openapi.json", client.app)
    store.close()


@pytest.mark.parametrize("operation", operations())
def test_no_input_is_a_server_error(fuzzed: Any, operation: str) -> None:
    method, path = operation.split(" ", 1)
    api_operation = fuzzed[path][method]
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    cases = st.one_of(*(api_operation.as_strategy(generation_mode=mode) for mode in modes))
    cases = cases.flatmap(lambda case: known_values(case.path_parameters).map(
        lambda params: _with_path(case, params)))

    @given(case=cases)
    @settings(max_examples=2 * EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        response = case.call_and_validate(headers=ADMIN, checks=[not_a_server_error])
        statuses[response.status_code] += 1

    statuses: Counter[int] = Counter()
    check()
    if os.environ.get("STOIC_FUZZ_REPORT"):
        print(f"\n{operation}: {dict(sorted(statuses.items()))}")
    assert set(statuses) - {401, 403}, f"{operation}: the token did not get through: {statuses}"


def _with_path(case: Any, params: dict[str, Any] | None) -> Any:
    if params is not None:
        case.path_parameters = params
    return case
