"""The PostgreSQL schema and its migrations.

* Applying every migration in order gives exactly the current schema: the
  catalog of a migrated schema (columns, types, defaults, constraints,
  indexes, triggers, functions, table persistence) equals the snapshot in
  `postgres_schema.txt`. A migration added without updating the snapshot,
  or an old migration edited, fails here. Update it with
  `python tests/unit/test_postgres_schema.py > tests/unit/postgres_schema.txt`
  and read the diff.
* The SQL `conveyor migrate --dry-run` prints is complete: a DBA who runs it
  by hand gets the same schema, and the backend then opens it without
  migrating (with `migrate=false`).
* `migrate=false` refuses a schema that is behind; a schema newer than the
  code is refused; several processes migrating at once apply each
  migration once.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.backends.postgres.migrations import LATEST, MIGRATIONS
from conveyor.job import BackendUnavailableError

SNAPSHOT = Path(__file__).with_name("postgres_schema.txt")

pytestmark = pytest.mark.postgres


def catalog(conn: object, schema: str) -> str:
    """The schema's catalog as sorted lines, its name replaced by <schema>."""
    queries = [
        # tables and their persistence (u = UNLOGGED)
        "SELECT 'table ' || c.relname || ' persistence=' || c.relpersistence::text FROM pg_class c"
        " WHERE c.relnamespace = %(s)s::regnamespace AND c.relkind = 'r'",
        "SELECT 'column ' || c.relname || '.' || a.attname || ' #' || a.attnum || ' '"
        " || format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null'"
        " ELSE '' END || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')"
        " || CASE WHEN a.attidentity <> '' THEN ' identity ' || a.attidentity::text ELSE '' END"
        " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
        " LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
        " WHERE c.relnamespace = %(s)s::regnamespace AND c.relkind = 'r'"
        " AND a.attnum > 0 AND NOT a.attisdropped",
        "SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname || ' '"
        " || pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE connamespace = %(s)s::regnamespace",
        "SELECT 'index ' || pg_get_indexdef(indexrelid) FROM pg_index i"
        " JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relnamespace = %(s)s::regnamespace",
        "SELECT 'trigger ' || pg_get_triggerdef(t.oid) FROM pg_trigger t"
        " JOIN pg_class c ON c.oid = t.tgrelid"
        " WHERE c.relnamespace = %(s)s::regnamespace AND NOT t.tgisinternal",
        "SELECT 'function ' || pg_get_functiondef(p.oid) FROM pg_proc p"
        " WHERE p.pronamespace = %(s)s::regnamespace",
    ]
    lines: list[str] = []
    for query in queries:
        for (line,) in conn.execute(query, {"s": schema}).fetchall():  # type: ignore[attr-defined]
            lines.append(line.replace(f'"{schema}"', "<schema>").replace(schema, "<schema>"))
    return "\n".join(sorted(lines)) + "\n"


@pytest.fixture
def server(postgres_urls: Callable[[], str]) -> Iterator[tuple[Callable[[], str], object]]:
    import psycopg

    first = postgres_urls()
    base = first.split("?")[0]
    with psycopg.connect(base, autocommit=True) as conn:
        yield postgres_urls, conn


def schema_of(url: str) -> str:
    return url.rsplit("schema=", 1)[1]


async def migrated(url: str) -> None:
    app = Conveyor(url)
    await app.open()
    await app.close()


def test_every_migration_in_order_gives_the_current_schema(server) -> None:  # type: ignore[no-untyped-def]
    urls, conn = server
    url = urls()
    asyncio.run(migrated(url))
    assert catalog(conn, schema_of(url)) == SNAPSHOT.read_text(), (
        "the migrated schema differs from tests/unit/postgres_schema.txt: see this file's docstring"
    )


def test_the_dry_run_sql_builds_the_same_schema(server) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from conveyor.cli import cli

    urls, conn = server
    by_backend, by_hand = urls(), urls()
    asyncio.run(migrated(by_backend))
    printed = CliRunner().invoke(cli, ["--url", by_hand, "migrate", "--dry-run"])
    assert printed.exit_code == 0, printed.output
    assert "-- migration 1:" in printed.output
    conn.execute(printed.output)  # type: ignore[attr-defined]
    assert catalog(conn, schema_of(by_hand)) == catalog(conn, schema_of(by_backend))
    # The backend finds it complete: nothing to migrate, even with migrate=false.
    asyncio.run(migrated(by_hand + "&migrate=false"))
    again = CliRunner().invoke(cli, ["--url", by_hand, "migrate", "--dry-run"])
    assert "up to date, nothing to run" in again.output


def test_migrate_false_refuses_a_schema_that_is_behind(server) -> None:  # type: ignore[no-untyped-def]
    urls, _ = server
    url = urls() + "&migrate=false"
    with pytest.raises(BackendUnavailableError, match="conveyor migrate"):
        asyncio.run(migrated(url))


def test_a_schema_newer_than_the_code_is_refused(server) -> None:  # type: ignore[no-untyped-def]
    urls, conn = server
    url = urls()
    asyncio.run(migrated(url))
    conn.execute(  # type: ignore[attr-defined]
        f"INSERT INTO \"{schema_of(url)}\".migrations (version, description) VALUES (999, 'x')"
    )
    with pytest.raises(BackendUnavailableError, match="newer than this conveyor"):
        asyncio.run(migrated(url))


def test_processes_migrating_at_once_apply_each_migration_once(server) -> None:  # type: ignore[no-untyped-def]
    urls, conn = server
    url = urls()

    async def together() -> None:
        await asyncio.gather(*(migrated(url) for _ in range(4)))

    asyncio.run(together())
    rows = conn.execute(  # type: ignore[attr-defined]
        f'SELECT version FROM "{schema_of(url)}".migrations ORDER BY version'
    ).fetchall()
    assert [version for (version,) in rows] == [m.version for m in MIGRATIONS]


def test_the_cli_applies_migrations_and_says_so(server) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from conveyor.cli import cli

    urls, _ = server
    url = urls()
    first = CliRunner().invoke(cli, ["--url", url, "migrate"])
    applied = ", ".join(str(m.version) for m in MIGRATIONS)
    assert first.exit_code == 0 and f"applied migration(s) {applied}" in first.output, first.output
    second = CliRunner().invoke(cli, ["--url", url, "migrate"])
    assert f"up to date at version {LATEST}" in second.output


if __name__ == "__main__":  # print a fresh snapshot (see the docstring)
    import psycopg

    target = sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1:5432/test"
    name = f"snapshot_{uuid.uuid4().hex[:8]}"
    asyncio.run(migrated(f"{target}?schema={name}"))
    with psycopg.connect(target, autocommit=True) as connection:
        try:
            sys.stdout.write(catalog(connection, name))
        finally:
            connection.execute(f'DROP SCHEMA "{name}" CASCADE')
