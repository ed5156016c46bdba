"""The SQLite backend: embedded, no server, one writer at a time."""

from stoic.stores.sqlite.store import SQLiteStore

__all__ = ["SQLiteStore"]
