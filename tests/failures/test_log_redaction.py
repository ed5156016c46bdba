"""Logs never carry what an event's data may hold unless debug logging is on: a
failing handler's error message (which often quotes the data) is withheld from
the ``event_failed`` line, and stays readable in the failure record."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import stoic

SECRET = "card 4111-1111-1111-1111 of bob@example.com"


class Leaky(stoic.Projection):
    name = "leaky"

    @stoic.handles("Paid")
    def paid(self, event: Any, tx: Any) -> None:
        raise ValueError(f"gateway refused {event.data['card']}")


@pytest.mark.parametrize(("level", "shown"), [(logging.INFO, False), (logging.DEBUG, True)])
def test_a_failing_handlers_message_is_logged_only_with_debug_on(
    caplog: pytest.LogCaptureFixture, level: int, shown: bool
) -> None:
    store = stoic.connect("sqlite:///:memory:")
    try:
        store.append("order-1", [stoic.NewEvent("Paid", {"card": SECRET})])
        with caplog.at_level(level, logger="stoic"):
            stoic.Runner(store, stoic.App([Leaky()])).run_until_caught_up()
        lines = [r for r in caplog.records if getattr(r, "action", None) == "event_failed"]
        assert len(lines) == 1
        assert (SECRET in lines[0].getMessage()) is shown
        assert "ValueError" in lines[0].getMessage()
        [failure] = stoic.Operations(store).failures("leaky")
        assert SECRET in failure.message  # operators still see it, through the admin surface
    finally:
        store.close()
