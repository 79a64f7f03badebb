"""`postgresql://` (also `postgres://`): jobs in PostgreSQL. See backend.py."""

from conveyor.backends.postgres.backend import PostgresBackend

__all__ = ["PostgresBackend"]
