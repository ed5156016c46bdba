"""stoic.projection: @handles registration, Projection validation, App and load_app."""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import pytest

import stoic
from stoic.projection import DEFAULT_BATCH_SIZE


class Balances(stoic.Projection):
    name = "balances"

    @stoic.handles("Opened")
    def opened(self, event: stoic.RecordedEvent, tx: stoic.Transaction) -> None: ...

    @stoic.handles("Deposited", "Withdrawn")
    def moved(self, event: stoic.RecordedEvent, tx: stoic.Transaction) -> None: ...


class Counter(stoic.Projection):
    name = "counter"

    @stoic.handles_all
    def any_event(self, event: stoic.RecordedEvent, tx: stoic.Transaction) -> None: ...


# -- @handles -----------------------------------------------------------------------------


def test_handles_registers_every_listed_type() -> None:
    projection = Balances()
    handlers, catch_all = projection.handlers()
    assert set(handlers) == {"Opened", "Deposited", "Withdrawn"}
    assert handlers["Opened"] == projection.opened
    assert handlers["Deposited"] == handlers["Withdrawn"] == projection.moved
    assert catch_all is None
    assert projection.handled_types() == frozenset({"Opened", "Deposited", "Withdrawn"})


def test_stacked_decorators_add_up() -> None:
    class Stacked(stoic.Projection):
        name = "stacked"

        @stoic.handles("A")
        @stoic.handles("B", "C")
        def on_abc(self, event: stoic.RecordedEvent, tx: stoic.Transaction) -> None: ...

    assert Stacked().handled_types() == frozenset({"A", "B", "C"})


@pytest.mark.parametrize("decorator", [stoic.handles_all, stoic.handles("*"), stoic.handles(stoic.ALL)])
def test_catch_all_handlers(decorator: object) -> None:
    class CatchAll(stoic.Projection):
        name = "catch_all"

        @stoic.handles("Opened")
        def opened(self, event: stoic.RecordedEvent, tx: stoic.Transaction) -> None: ...

        @decorator  # type: ignore[misc, operator]
        def other(self, event: stoic.RecordedEvent, tx: stoic.Transaction) -> None: ...

    projection = CatchAll()
    handlers, catch_all = projection.handlers()
    assert set(handlers) == {"Opened"}
    assert catch_all == projection.other
    assert "*" in projection.handled_types()


@pytest.mark.parametrize("args", [(), ("",), ("A", ""), (1,), (None,)])
def test_handles_needs_event_type_names(args: tuple[object, ...]) -> None:
    with pytest.raises(stoic.ConfigurationError, match="handles"):
        stoic.handles(*args)  # type: ignore[arg-type]


def test_two_handlers_for_one_type_are_refused() -> None:
    with pytest.raises(stoic.ConfigurationError) as info:

        class Twice(stoic.Projection):
            name = "twice"

            @stoic.handles("Deposited")
            def first(self, event: stoic.RecordedEvent, tx: stoic.Transaction) -> None: ...

            @stoic.handles("Opened", "Deposited")
            def second(self, event: stoic.RecordedEvent, tx: stoic.Transaction) -> None: ...

    message = str(info.value)
    for fragment in ("Twice", "'Deposited'", "first", "second"):
        assert fragment in message


def test_two_catch_alls_are_refused() -> None:
    with pytest.raises(stoic.ConfigurationError, match="'\\*'"):

        class TwoCatchAlls(stoic.Projection):
            name = "two"

            @stoic.handles_all
            def one(self, event: stoic.RecordedEvent, tx: stoic.Transaction) -> None: ...

            @stoic.handles("*")
            def two(self, event: stoic.RecordedEvent, tx: stoic.Transaction) -> None: ...


def test_a_subclass_may_override_an_inherited_handler() -> None:
    class Audited(Balances):
        name = "audited"

        @stoic.handles("Deposited")
        def deposited(self, event: stoic.RecordedEvent, tx: stoic.Transaction) -> None: ...

    handlers, _ = Audited().handlers()
    assert handlers["Deposited"].__name__ == "deposited"
    assert handlers["Withdrawn"].__name__ == "moved"
    assert handlers["Opened"].__name__ == "opened"
    assert Balances().handlers()[0]["Deposited"].__name__ == "moved"  # the base is unchanged


def test_projection_defaults() -> None:
    assert Balances.batch_size == DEFAULT_BATCH_SIZE
    assert repr(Balances()) == "<Balances 'balances'>"


# -- App ----------------------------------------------------------------------------------


def test_app_instantiates_classes_and_keeps_instances() -> None:
    counter = Counter()
    app = stoic.App([Balances, counter], name="billing")
    assert [p.name for p in app.projections] == ["balances", "counter"]
    assert app.projection("counter") is counter
    assert isinstance(app.projection("balances"), Balances)
    assert app.name == "billing"
    assert "balances" in repr(app) and "counter" in repr(app)


def test_app_refuses_two_projections_with_one_name() -> None:
    class OtherBalances(Counter):
        name = "balances"

    with pytest.raises(stoic.ConfigurationError, match="two projections are named 'balances'"):
        stoic.App([Balances, OtherBalances])
    app = stoic.App([Balances])
    with pytest.raises(stoic.ConfigurationError):
        app.add(Balances())
    assert [p.name for p in app.projections] == ["balances"]


def test_an_unknown_projection_names_the_known_ones() -> None:
    app = stoic.App([Counter, Balances])
    with pytest.raises(stoic.UnknownProjection) as info:
        app.projection("balance")
    assert str(info.value) == "no projection named 'balance' (known: balances, counter)"
    assert info.value.name == "balance"  # type: ignore[attr-defined]
    assert isinstance(info.value, stoic.PermanentError)
    with pytest.raises(stoic.UnknownProjection, match=r"\(known: none\)"):
        stoic.App().projection("x")


def test_runner_refuses_an_unknown_projection() -> None:
    with pytest.raises(stoic.UnknownProjection, match="known: balances"):
        stoic.Runner(None, stoic.App([Balances]), projections=["nope"])  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "has space", "x" * 101, "-leading-dash", "semi;colon", 7, None])
def test_projection_names_are_checked(name: object) -> None:
    class Named(Counter):
        pass

    Named.name = name  # type: ignore[assignment]
    with pytest.raises(stoic.ConfigurationError, match="name must be"):
        stoic.App([Named])


def test_a_projection_without_name_is_refused() -> None:
    class Nameless(stoic.Projection):
        @stoic.handles("A")
        def a(self, event: stoic.RecordedEvent, tx: stoic.Transaction) -> None: ...

    with pytest.raises(stoic.ConfigurationError, match="Nameless: name must be"):
        stoic.App([Nameless])


def test_a_projection_without_handlers_is_refused() -> None:
    class Idle(stoic.Projection):
        name = "idle"

    with pytest.raises(stoic.ConfigurationError, match="'idle' has no @handles methods"):
        stoic.App([Idle])


@pytest.mark.parametrize("thing", [object(), "balances", Balances.opened, int])
def test_only_projections_are_accepted(thing: object) -> None:
    with pytest.raises(stoic.ConfigurationError, match=r"not a stoic\.Projection"):
        stoic.App([thing])  # type: ignore[list-item]


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, "10"])
def test_batch_size_is_checked(batch_size: object) -> None:
    class Sized(Counter):
        pass

    Sized.batch_size = batch_size  # type: ignore[assignment]
    with pytest.raises(stoic.ConfigurationError, match="batch_size"):
        stoic.App([Sized])


def test_on_error_is_checked() -> None:
    class Sloppy(Counter):
        on_error = "ignore"

    with pytest.raises(stoic.ConfigurationError, match="on_error must be one of"):
        stoic.App([Sloppy])


# -- load_app -----------------------------------------------------------------------------


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on sys.path for throwaway app modules; sys.path is restored after."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def write_module(directory: Path, body: str) -> str:
    name = f"stoic_test_app_{uuid.uuid4().hex[:8]}"
    (directory / f"{name}.py").write_text(textwrap.dedent(body))
    return name


APP_MODULE = """
    import stoic

    class Counter(stoic.Projection):
        name = "counter"

        @stoic.handles_all
        def any_event(self, event, tx): ...

    app = stoic.App([Counter], name="loaded")

    def make_app():
        return stoic.App([Counter], name="made")

    not_an_app = 42

    def makes_nothing():
        return None
"""


def test_load_app_imports_module_attribute(module_dir: Path) -> None:
    module = write_module(module_dir, APP_MODULE)
    app = stoic.load_app(f"{module}:app")
    assert app.name == "loaded"
    assert [p.name for p in app.projections] == ["counter"]


def test_load_app_calls_a_factory(module_dir: Path) -> None:
    module = write_module(module_dir, APP_MODULE)
    assert stoic.load_app(f"{module}:make_app").name == "made"


@pytest.mark.parametrize("reference", ["no_colon", ":app", "module:", ""])
def test_load_app_needs_module_colon_attribute(reference: str) -> None:
    with pytest.raises(stoic.ConfigurationError, match="module:attribute"):
        stoic.load_app(reference)


def test_load_app_reports_a_missing_module(module_dir: Path) -> None:
    with pytest.raises(stoic.ConfigurationError, match="cannot import 'no_such_module_xyz'"):
        stoic.load_app("no_such_module_xyz:app")


def test_load_app_reports_a_module_that_fails_to_import(module_dir: Path) -> None:
    module = write_module(module_dir, "import no_such_dependency_xyz\n")
    with pytest.raises(stoic.ConfigurationError, match="no_such_dependency_xyz"):
        stoic.load_app(f"{module}:app")


@pytest.mark.parametrize(
    ("attribute", "got"), [("not_an_app", "int"), ("missing", "NoneType"), ("makes_nothing", "NoneType")]
)
def test_load_app_refuses_what_is_not_an_app(module_dir: Path, attribute: str, got: str) -> None:
    module = write_module(module_dir, APP_MODULE)
    with pytest.raises(stoic.ConfigurationError) as info:
        stoic.load_app(f"{module}:{attribute}")
    assert str(info.value) == f"{module}:{attribute} is not a stoic.App (got {got})"
