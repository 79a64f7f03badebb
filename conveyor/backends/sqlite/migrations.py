"""What opening a SQLite file does to its schema, as SQL that can be printed.

The backend creates or upgrades its schema when it opens a file (`open`
runs `schema_statements` in one write transaction). `conveyor migrate
--dry-run` prints the same statements without touching the file (it reads a
file that exists, read-only, and never creates one); `conveyor migrate`
opens the file, which applies them.
"""

from __future__ import annotations

import os
import sqlite3
from typing import TYPE_CHECKING, Final

from conveyor.backends.sqlite.sql import (
    COLUMN_ADDITIONS,
    SCHEMA,
    SCHEMA_ADDITIONS,
    SCHEMA_VERSION,
    UPGRADES,
)
from conveyor.job import BackendUnavailableError

META: Final = "CREATE TABLE IF NOT EXISTS conveyor_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
_SET_VERSION: Final = (
    f"UPDATE conveyor_meta SET value = '{SCHEMA_VERSION}' WHERE key = 'schema_version'"
)


def schema_statements(version: int) -> list[str]:
    """The statements that bring a file whose schema is at `version` (0: no
    schema) to SCHEMA_VERSION, after META. The additions (IF NOT EXISTS)
    come last, every time."""
    if version == 0:
        statements = [s.strip() for s in SCHEMA.split(";") if s.strip()]
        statements.append(
            f"INSERT INTO conveyor_meta (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}')"
        )
    elif version < SCHEMA_VERSION:
        statements = [s for step in UPGRADES[version - 1 :] for s in step]
        statements.append(_SET_VERSION)
    else:
        statements = []
    return statements + list(SCHEMA_ADDITIONS)


def column_statements(conn: sqlite3.Connection) -> list[str]:
    """The ALTER TABLE statements that add COLUMN_ADDITIONS to the tables of
    `conn`'s file that exist without them (one made now has them)."""
    statements = []
    for table, column, definition in COLUMN_ADDITIONS:
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if present and column not in present:
            statements.append(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    return statements


def _read_only(path: str) -> sqlite3.Connection:
    """A read-only connection to the (existing) file at `path`."""
    try:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise BackendUnavailableError(f"cannot read SQLite database {path}: {exc}") from exc


def stored_columns(path: str) -> list[str]:
    """`column_statements` of the file at `path`, read-only (none: no file)."""
    if not os.path.exists(path):
        return []
    conn = _read_only(path)
    try:
        return column_statements(conn)
    finally:
        conn.close()


def stored_version(path: str) -> int:
    """The schema version of the file at `path`, read-only (0: no file, or
    no conveyor schema in it yet)."""
    if not os.path.exists(path):
        return 0
    conn = _read_only(path)
    try:
        row = conn.execute("SELECT value FROM conveyor_meta WHERE key = 'schema_version'")
        found = row.fetchone()
    except sqlite3.OperationalError:
        return 0  # no conveyor_meta table: a file with no conveyor schema yet
    except sqlite3.Error as exc:
        raise BackendUnavailableError(f"cannot read SQLite database {path}: {exc}") from exc
    finally:
        conn.close()
    return 0 if found is None else int(found[0])


class SQLiteMigrations:
    """The `Migrations` protocol for `SQLiteBackend` (`conveyor migrate`)."""

    path: str

    if TYPE_CHECKING:  # SQLiteConnection's, which comes before this class

        async def open(self) -> None: ...

    async def schema_version(self) -> int:
        return stored_version(self.path)

    async def pending_sql(self) -> list[tuple[int, str, list[str]]]:
        """What opening the file would run, or nothing when it is up to date.
        A file of a newer schema than this code knows is refused."""
        version = stored_version(self.path)
        if version > SCHEMA_VERSION:
            raise BackendUnavailableError(
                f"SQLite database {self.path}: schema version {version} was written by a "
                f"newer conveyor; this one knows version {SCHEMA_VERSION}"
            )
        columns = stored_columns(self.path)
        if version == SCHEMA_VERSION and not columns:
            return []
        if version == 0:
            what = "the whole schema"
        elif version < SCHEMA_VERSION:
            what = f"upgrade from version {version}"
        else:
            what = "columns added since"
        return [(SCHEMA_VERSION, what, [META, *schema_statements(version), *columns])]

    async def migrate(self) -> list[int]:
        before = stored_version(self.path)
        await self.open()  # creates or upgrades the schema
        return [SCHEMA_VERSION] if before < SCHEMA_VERSION else []
