"""conveyor's PostgreSQL schema in the application's own migrations (issue
14, point 5): conveyor.contrib.alembic and conveyor.contrib.django.

Each builds exactly the schema the backend builds (the catalogs compare
equal), records it so that the backend opens it with `migrate=false`, and
undoes it on downgrade; Alembic's offline SQL builds it too. Then the real
conformance suite (a representative part of it) runs in a child pytest on
schemas made by each tool, and by the SQL `conveyor migrate --dry-run`
prints (run by hand), every one with `migrate=false` (tests/schema_makers.py).
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schema_makers
from test_postgres_schema import catalog

import conveyor.contrib.django
from conveyor import Conveyor, JobState

pytestmark = pytest.mark.postgres
pytest.importorskip("alembic")
pytest.importorskip("django")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(postgres_server_url: str | None, postgres_urls: Callable[[], str]) -> Iterator[Any]:
    """(server URL, an autocommit connection, a fresh schema name); the
    schemas made are dropped afterwards."""
    import psycopg

    assert postgres_server_url is not None  # postgres_urls skipped (or failed, in CI) otherwise
    made: list[str] = []

    def fresh() -> str:
        made.append(f"app_{uuid.uuid4().hex[:12]}")
        return made[-1]

    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        yield postgres_server_url, conn, fresh
        for schema in made:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def made_by_backend(conn: Any, url: str, schema: str) -> str:
    joiner = "&" if "?" in url else "?"
    asyncio.run(_open(f"{url}{joiner}schema={schema}"))
    return catalog(conn, schema)


async def _open(url: str) -> None:
    async with Conveyor(url):
        pass


async def runs_a_job(url: str) -> None:
    """The backend opens the schema without migrating, and a job runs on it."""
    app = Conveyor(url)

    @app.job("add")
    async def add(payload: list[int]) -> int:
        return sum(payload)

    async with app:
        job = await app.enqueue("add", [1, 2])
        await app.drain()
        done = await app.get_job(job.id)
        assert done is not None and (done.state, done.result) == (JobState.COMPLETED, 3)


def without_alembic(lines: str) -> str:
    return "".join(line for line in lines.splitlines(True) if "alembic_version" not in line)


def test_alembic_builds_the_schema_the_backend_builds_and_undoes_it(server: Any) -> None:
    from alembic import command

    url, conn, fresh = server
    by_alembic, by_backend = fresh(), fresh()
    schema_makers.alembic_upgrade(url, by_alembic)
    built = catalog(conn, by_alembic)
    assert "alembic_version" in built  # the revision is recorded, beside conveyor's tables
    assert without_alembic(built) == made_by_backend(conn, url, by_backend)
    asyncio.run(runs_a_job(f"{url}?schema={by_alembic}&migrate=false"))

    command.downgrade(schema_makers.alembic_config(url, by_alembic), "base")
    assert without_alembic(catalog(conn, by_alembic)).strip() == ""  # nothing of conveyor's left


def test_alembic_offline_sql_builds_the_same_schema(server: Any) -> None:
    from alembic import command

    url, conn, fresh = server
    offline, by_backend = fresh(), fresh()
    printed = io.StringIO()
    command.upgrade(schema_makers.alembic_config(url, offline, printed), "head", sql=True)
    sql = printed.getvalue()
    # The NOTIFY channel's colon survived SQLAlchemy's text() (no bind parameter).
    assert f"pg_notify('conveyor:{offline}'" in sql
    conn.execute(f'CREATE SCHEMA "{offline}"')  # for alembic_version, as alembic_upgrade does
    conn.execute(sql)
    assert without_alembic(catalog(conn, offline)) == made_by_backend(conn, url, by_backend)
    asyncio.run(runs_a_job(f"{url}?schema={offline}&migrate=false"))


def readme_block(first_line: str) -> str:
    """The README's Python block that starts with `first_line`."""
    text = (ROOT / "README.md").read_text()
    for found in re.finditer(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        if found.group(1).startswith(first_line):
            return found.group(1)
    raise AssertionError(f"README.md has no Python block starting {first_line!r}")


PREVIOUS_REVISION = """
revision = "0006_orders"
down_revision = None


def upgrade() -> None: ...


def downgrade() -> None: ...
"""


def test_the_readme_alembic_revision_makes_a_schema_the_backend_opens(
    server: Any, tmp_path: Path
) -> None:
    """The README's revision, as written (in a fresh schema rather than
    "conveyor", after a stand-in for the app's revision before it), gives a
    schema that an app with `migrate=false` opens and runs a job on."""
    from alembic import command

    url, conn, fresh = server
    schema = fresh()
    revision = readme_block("# migrations/versions/0007_conveyor.py")
    assert revision.count('schema="conveyor"') == 2, revision
    folder = tmp_path / "alembic"
    (folder / "versions").mkdir(parents=True)
    (folder / "env.py").write_text(schema_makers.ALEMBIC_ENV)
    (folder / "script.py.mako").write_text("")
    (folder / "versions" / "0006_orders.py").write_text(PREVIOUS_REVISION)
    (folder / "versions" / "0007_conveyor.py").write_text(
        revision.replace('schema="conveyor"', f'schema="{schema}"')
    )
    config = schema_makers.alembic_config(url, schema)
    config.set_main_option("script_location", str(folder))
    conn.execute(f'CREATE SCHEMA "{schema}"')  # for alembic_version
    command.upgrade(config, "head")
    asyncio.run(runs_a_job(f"{url}?schema={schema}&migrate=false"))
    command.downgrade(config, "base")
    assert without_alembic(catalog(conn, schema)).strip() == ""


def test_alembic_versions_are_checked() -> None:
    from conveyor.contrib.alembic import LATEST_VERSION, upgrade_schema

    class Recorder:
        def __init__(self) -> None:
            self.statements: list[str] = []

        def execute(self, sqltext: Any) -> None:
            self.statements.append(str(sqltext))

    with pytest.raises(ValueError, match=f"versions go from 0 to {LATEST_VERSION}"):
        upgrade_schema(Recorder(), to_version=LATEST_VERSION + 1)
    op = Recorder()
    upgrade_schema(op, from_version=LATEST_VERSION, to_version=LATEST_VERSION)
    assert op.statements == []  # pinned at the version the schema is already at


def python(*args: str, cwd: Path, env: dict[str, str], timeout: float) -> Any:
    """Run the test interpreter in a child process; it must succeed."""
    done = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    return done


# --------------------------------------------------------------------------- Django

SETTINGS = """
import json, os
INSTALLED_APPS = ["conveyor.contrib.django"]
DATABASES = {"default": json.loads(os.environ["TEST_DJANGO_DATABASE"])}
USE_TZ = True
CONVEYOR_SCHEMA = os.environ["TEST_CONVEYOR_SCHEMA"]
CONVEYOR_APP = "jobs:app"
"""

JOBS = """
import os
from pathlib import Path
from conveyor import Conveyor

app = Conveyor(os.environ["TEST_CONVEYOR_URL"])


@app.job("note")
def note(payload: str) -> str:
    Path(os.environ["TEST_NOTES"]).write_text(payload)
    return payload
"""

MANAGE = """
import os, sys
from django.core.management import execute_from_command_line
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
execute_from_command_line(sys.argv)
"""


def test_django_migrate_builds_the_schema_and_the_command_runs_a_worker(
    server: Any, tmp_path: Path
) -> None:
    import json

    url, conn, fresh = server
    schema, by_backend = fresh(), fresh()
    for name, source in (("settings.py", SETTINGS), ("jobs.py", JOBS), ("manage.py", MANAGE)):
        (tmp_path / name).write_text(textwrap.dedent(source))
    # Django's own table of applied migrations goes to the same schema.
    database = schema_makers.django_database(url, schema)
    conveyor_url = f"{url}?schema={schema}&migrate=false"
    env = dict(
        os.environ,
        TEST_DJANGO_DATABASE=json.dumps(database),
        TEST_CONVEYOR_SCHEMA=schema,
        TEST_CONVEYOR_URL=conveyor_url,
        TEST_NOTES=str(tmp_path / "notes.txt"),
        PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", str(ROOT))]),
    )

    def manage(*args: str) -> subprocess.CompletedProcess[str]:
        return python("manage.py", *args, cwd=tmp_path, env=env, timeout=60)

    conn.execute(f'CREATE SCHEMA "{schema}"')
    shown = manage("sqlmigrate", "conveyor", "0001").stdout
    assert f'CREATE TABLE "{schema}".jobs' in shown
    assert "Applying conveyor.0001_initial... OK" in manage("migrate", "conveyor").stdout
    built = catalog(conn, schema)
    assert "django_migrations" in built
    tables_of_django = re.compile(r".*django_migrations.*\n?")
    assert tables_of_django.sub("", built) == made_by_backend(conn, url, by_backend)

    app = Conveyor(conveyor_url)
    app.declare("note")
    job = app.enqueue_sync("note", "hello from django")
    manage("conveyor_worker", "--burst", "--concurrency", "1")
    assert app.get_job_sync(job.id).state is JobState.COMPLETED  # type: ignore[union-attr]
    app.close_sync()
    assert (tmp_path / "notes.txt").read_text() == "hello from django"

    manage("migrate", "conveyor", "zero")
    assert tables_of_django.sub("", catalog(conn, schema)).strip() == ""


# --------------------------------------------------------------------------- the suite

# A representative part of the conformance suite (about 90 tests on
# PostgreSQL): jobs end to end (versions, retries, results, keys, admin and
# worker presence), the transactional enqueue, stored schedules, locks and
# the cache: every table of the schema.
SUITE = [
    "test_versions.py",
    "test_retries.py",
    "test_results.py",
    "test_idempotency.py",
    "test_admin.py",
    "test_transactional_enqueue.py",
    "test_recurring_stored.py",
    "test_locks.py",
    "test_cache.py::test_set_overwrites",
    "test_cache.py::test_delete",
    "test_cache.py::test_values_expire_after_their_ttl",
]


@pytest.mark.slow
@pytest.mark.timeout(600)  # a child pytest of its own
@pytest.mark.parametrize("tool", ["alembic", "django", "dry-run"])
def test_the_conformance_suite_passes_on_a_schema_made_by(
    tool: str, postgres_server_url: str | None, postgres_urls: Callable[[], str]
) -> None:
    assert postgres_server_url is not None
    conformance = ROOT / "tests" / "conformance"
    env = dict(
        os.environ,
        CONVEYOR_TEST_POSTGRES_URL=postgres_server_url,
        **{schema_makers.ENV_VAR: tool},
    )
    tests = [str(conformance / name) for name in SUITE]
    done = python(
        "-m", "pytest", *tests, "-m", "postgres", "-q", "-p", "no:cacheprovider",
        cwd=ROOT, env=env, timeout=540,
    )  # fmt: skip
    summary = done.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed is not None and int(passed.group(1)) >= 80, summary


def test_every_conveyor_migration_has_a_django_migration_and_a_removal() -> None:
    """A migration added to the backend without its Django migration leaves
    Django projects behind (the backend, with migrate=false, refuses their
    schema); one without a removal breaks their downgrade."""
    from conveyor.backends.postgres.migrations import LATEST, MIGRATIONS, REMOVALS

    folder = Path(conveyor.contrib.django.__file__).parent / "migrations"
    django = sorted(p.name for p in folder.glob("0*.py"))
    assert len(django) == LATEST, django
    assert sorted(REMOVALS) == [m.version for m in MIGRATIONS]
