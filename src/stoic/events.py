"""Event value types: what a caller appends and what the store gives back.

A :class:`RecordedEvent` is built for every event a projection reads, so it is
cheap to construct: the JSON payload, the UUID and the timestamp are decoded
only when a handler asks for them.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Final

from stoic.errors import EventTooLarge, InvalidEvent

MAX_EVENT_BYTES: Final = 1024 * 1024  #: default size limit of one event's data + metadata, bytes
MAX_STREAM_ID_CHARS: Final = 200  #: longest stream id accepted
MAX_TYPE_CHARS: Final = 200  #: longest event type accepted
MAX_INT64: Final = 2**63 - 1  #: largest version or position a backend can store
# A JSON \u0000 escape (an odd run of backslashes before u0000): PostgreSQL cannot store NUL.
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


class ExpectedVersion(Enum):
    """Special values of ``expected_version``."""

    NO_STREAM = "no_stream"  #: the stream must not exist yet
    ANY = "any"  #: append whatever the stream's version


NO_STREAM: Final = ExpectedVersion.NO_STREAM
ANY: Final = ExpectedVersion.ANY

Expected = int | ExpectedVersion


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append: its type, JSON-object data and optional metadata.

    ``event_id`` defaults to a fresh UUID; pass your own to make a retried
    append idempotent (the store returns the stored result instead of writing
    the events twice).
    """

    type: str
    data: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] | None = None
    event_id: uuid.UUID | None = None


class RecordedEvent:
    """An event as stored: its global ``position``, stream, version and payload.

    ``position`` increases in the order projections must apply events; pass it
    as ``after`` to :meth:`Store.read_all` to continue reading.
    """

    __slots__ = (
        "_data",
        "_event_id",
        "_metadata",
        "_recorded_at",
        "position",
        "stream_id",
        "type",
        "version",
    )

    position: int
    stream_id: str
    version: int
    type: str

    def __init__(
        self,
        position: int,
        stream_id: str,
        version: int,
        type: str,
        event_id: uuid.UUID | str,
        data: Mapping[str, Any] | str,
        metadata: Mapping[str, Any] | str | None,
        recorded_at: datetime | float,
    ) -> None:
        self.position = position
        self.stream_id = stream_id
        self.version = version
        self.type = type
        self._event_id = event_id
        self._data = data
        self._metadata = metadata
        self._recorded_at = recorded_at

    @property
    def event_id(self) -> uuid.UUID:
        """The event's unique id (also its idempotency key for outside effects)."""
        value = self._event_id
        if not isinstance(value, uuid.UUID):
            value = self._event_id = uuid.UUID(value)
        return value

    @property
    def data(self) -> dict[str, Any]:
        """The event's payload, decoded on first access."""
        value = self._data
        if isinstance(value, str):
            value = self._data = json.loads(value)
        return value  # type: ignore[return-value]

    @property
    def metadata(self) -> dict[str, Any]:
        """The event's metadata (an empty dict when none was given)."""
        value = self._metadata
        if value is None:
            value = self._metadata = {}
        elif isinstance(value, str):
            value = self._metadata = json.loads(value)
        return value  # type: ignore[return-value]

    @property
    def recorded_at(self) -> datetime:
        """When the store recorded the event (UTC)."""
        value = self._recorded_at
        if not isinstance(value, datetime):
            value = self._recorded_at = datetime.fromtimestamp(value, tz=UTC)
        return value

    def _key(self) -> tuple[object, ...]:
        return (self.position, self.stream_id, self.version, self.type, self.event_id, self.data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RecordedEvent):
            return NotImplemented
        return self._key() == other._key() and self.metadata == other.metadata

    def __hash__(self) -> int:
        return hash((self.position, self.event_id))

    def __repr__(self) -> str:
        return (
            f"RecordedEvent(position={self.position}, stream_id={self.stream_id!r}, "
            f"version={self.version}, type={self.type!r}, event_id={self.event_id})"
        )


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What an append wrote (or had already written): the stream's new version
    and the global positions of the events, in order."""

    stream_id: str
    version: int
    positions: tuple[int, ...]

    @property
    def first_position(self) -> int | None:
        return self.positions[0] if self.positions else None

    @property
    def last_position(self) -> int | None:
        return self.positions[-1] if self.positions else None


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """A validated event, encoded for the database (internal to the stores)."""

    event_id: str
    type: str
    data: str
    metadata: str | None
    client_supplied_id: bool


def _encode_json(value: object, what: str, where: str) -> str:
    if not isinstance(value, Mapping):
        raise InvalidEvent(
            f"{where}: {what} must be a JSON object (a dict), got {type(value).__name__}",
            where=where,
        )
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidEvent(f"{where}: {what} is not JSON-serialisable: {exc}", where=where) from exc
    if "\\u0000" in text and _JSON_NUL.search(text):
        raise InvalidEvent(f"{where}: {what} contains a NUL character (\\u0000), which cannot be stored",
                           where=where)
    _check_text(text, what, where)
    return text


def _utf8_size(text: str) -> int:
    """Bytes of ``text`` in UTF-8, without encoding it when it is ASCII."""
    return len(text) if text.isascii() else len(text.encode())


def _check_text(value: str, what: str, where: str) -> None:
    """Rejects strings no backend can store the same way: NUL, lone surrogates."""
    if "\x00" in value:
        raise InvalidEvent(f"{where}: {what} contains a NUL character, which cannot be stored", where=where)
    if value.isascii():
        return  # no surrogates possible: skip the encode on the hot path
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise InvalidEvent(f"{where}: {what} is not valid Unicode: {exc}", where=where) from exc


def validate_stream_id(stream_id: object, where: str = "append") -> str:
    """Returns the stream id if it is a non-empty string of acceptable length."""
    if not isinstance(stream_id, str) or not stream_id:
        raise InvalidEvent(f"{where}: stream id must be a non-empty string, got {stream_id!r}", where=where)
    if len(stream_id) > MAX_STREAM_ID_CHARS:
        raise InvalidEvent(
            f"{where}: stream id is {len(stream_id)} characters long, the limit is {MAX_STREAM_ID_CHARS}",
            where=where,
        )
    _check_text(stream_id, "stream id", where)
    return stream_id


def validate_expected(expected: object, where: str) -> Expected:
    """Returns ``expected`` if it is a version (int >= 0), NO_STREAM or ANY."""
    if isinstance(expected, ExpectedVersion):
        return expected
    if isinstance(expected, bool) or not isinstance(expected, int) or not 0 <= expected <= MAX_INT64:
        raise InvalidEvent(
            f"{where}: expected_version must be an int >= 0, stoic.NO_STREAM or stoic.ANY, got {expected!r}",
            where=where,
        )
    return expected


def encode_events(
    stream_id: str, events: object, max_event_bytes: int = MAX_EVENT_BYTES
) -> list[EncodedEvent]:
    """Validates and encodes a stream's events; raises before anything is written."""
    where = f"stream {stream_id!r}"
    if isinstance(events, NewEvent) or not isinstance(events, list | tuple):
        raise InvalidEvent(f"{where}: events must be a list of stoic.NewEvent", where=where)
    encoded: list[EncodedEvent] = []
    for index, event in enumerate(events):
        at = f"{where}, event {index}"
        if not isinstance(event, NewEvent):
            raise InvalidEvent(f"{at}: expected stoic.NewEvent, got {type(event).__name__}", where=at)
        if not isinstance(event.type, str) or not event.type:
            raise InvalidEvent(f"{at}: event type must be a non-empty string, got {event.type!r}", where=at)
        if len(event.type) > MAX_TYPE_CHARS:
            raise InvalidEvent(
                f"{at}: event type is {len(event.type)} characters long, the limit is {MAX_TYPE_CHARS}",
                where=at,
            )
        _check_text(event.type, "event type", at)
        at = f"{at} ({event.type})"
        data = _encode_json(event.data, "data", at)
        metadata = None if event.metadata is None else _encode_json(event.metadata, "metadata", at)
        size = _utf8_size(data) + (_utf8_size(metadata) if metadata else 0)
        if size > max_event_bytes:
            raise EventTooLarge(
                f"{at}: encoded size {size} bytes is over the limit of {max_event_bytes} bytes",
                where=at,
                size=size,
                limit=max_event_bytes,
            )
        if event.event_id is None:
            encoded.append(EncodedEvent(str(uuid.uuid4()), event.type, data, metadata, False))
        elif isinstance(event.event_id, uuid.UUID):
            encoded.append(EncodedEvent(str(event.event_id), event.type, data, metadata, True))
        else:
            raise InvalidEvent(f"{at}: event_id must be a uuid.UUID, got {event.event_id!r}", where=at)
    ids = [e.event_id for e in encoded]
    if len(set(ids)) != len(ids):
        raise InvalidEvent(f"{where}: the same event_id appears twice in one append", where=where)
    return encoded
