"""`sqlite:///path.db`: the embedded default backend (see backend.py).

Modules: `backend` (the job operations, and the design), `stores`
(schedules, locks, cache, worker presence), `connection` (URL, opening,
the connection thread, fork hooks), `queries` (functions run on the
connection thread), `sql` (schema, upgrades, statements), `rows` (rows to
`Job` records), `writer` (the connection thread and the write lock).
"""

from conveyor.backends.sqlite.backend import SCHEMA_VERSION, SQLiteBackend

__all__ = ["SCHEMA_VERSION", "SQLiteBackend"]
