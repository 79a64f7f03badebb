"""`sqlite:///path.db`: the embedded default backend (see backend.py)."""

from conveyor.backends.sqlite.backend import SCHEMA_VERSION, SQLiteBackend

__all__ = ["SCHEMA_VERSION", "SQLiteBackend"]
