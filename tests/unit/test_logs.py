"""stoic.logs: one JSON object per line with the ``action`` extra; text with key=value."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from datetime import datetime

import pytest

from stoic.logs import JsonFormatter, TextFormatter, configure_logging


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger(f"stoic.test.{uuid.uuid4().hex[:8]}")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream, handler
    logger.handlers.clear()


def test_json_is_one_object_per_line_with_the_action(
    capture: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, handler = capture
    handler.setFormatter(JsonFormatter())
    event_id = uuid.uuid4()

    logger.info(
        "projection acquired", extra={"action": "lease_acquired", "projection": "balances", "epoch": 3}
    )
    logger.warning("two\nlines", extra={"action": "odd", "event_id": event_id, "obj": object()})
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("batch failed", extra={"action": "batch_failed", "position": 17})

    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    first, second, third = records
    assert first["action"] == "lease_acquired"
    assert (first["projection"], first["epoch"]) == ("balances", 3)
    assert (first["level"], first["logger"], first["message"]) == ("info", logger.name, "projection acquired")
    assert datetime.fromisoformat(first["time"]).tzinfo is not None
    assert second["message"] == "two\nlines"
    assert second["event_id"] == str(event_id)  # not JSON-serialisable values become strings
    assert second["level"] == "warning"
    assert third["action"] == "batch_failed" and third["position"] == 17
    assert "ValueError: boom" in third["traceback"]
    for record in records:
        assert not {"args", "msg", "levelno", "pathname", "exc_info"} & set(record)


def test_text_has_the_extras_as_key_value(
    capture: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, handler = capture
    handler.setFormatter(TextFormatter())

    logger.info("worker started", extra={"action": "worker_started", "worker": "w-1"})
    logger.info("plain")

    first, second = stream.getvalue().splitlines()
    assert "worker started" in first
    assert first.endswith("[action=worker_started worker=w-1]")
    assert second.endswith("plain")


def test_configure_logging_sends_json_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    # configure_logging changes process-wide loggers: put them back afterwards.
    loggers = [logging.getLogger(name) for name in ("stoic", "psycopg")]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    try:
        configure_logging("json", "info")
        logging.getLogger("stoic.runner").info("hello", extra={"action": "test_action"})
        logging.getLogger("stoic.runner").debug("hidden", extra={"action": "too_low"})
        lines = capsys.readouterr().err.splitlines()
    finally:
        for lg, (handlers, level, propagate) in zip(loggers, saved, strict=True):
            lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate
    assert [json.loads(line)["action"] for line in lines] == ["test_action"]
