"""The PostgreSQL backend: several workers on several machines share one database."""

from stoic.stores.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
