"""docs/recipes/django_project on PostgreSQL (its settings with
DJANGO_POSTGRES_DB): Django and conveyor share the database, and a signup
enqueues its welcome job inside the request's transaction with
`connection=django.db.connection`. A rollback leaves neither customer nor
job; a commit both, and `manage.py conveyor_worker` runs the job.

Django runs in child processes (its settings are per process); Django's
tables go to a schema of their own per test (PGOPTIONS' search_path),
conveyor's to the `postgres_urls` schema."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.backends.postgres.url import parse_url

from .helpers import RECIPES, WAIT, Child, python

pytest.importorskip("django")
pytestmark = pytest.mark.postgres

PROJECT = RECIPES / "django_project"
STEPS = Path(__file__).with_name("django_postgres_steps.py")


@pytest.fixture
def site(postgres_urls: Callable[[], str]) -> Iterator[dict[str, Any]]:
    """The environment of the project's processes, and conveyor's URL."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    conveyor_url = postgres_urls()
    settings = parse_url(conveyor_url)
    server = conninfo_to_dict(settings.conninfo)
    tables = f"django_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(settings.conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{tables}"')
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="mysite.settings",
        DJANGO_POSTGRES_DB=str(server["dbname"]),
        CONVEYOR_SCHEMA=settings.schema,
        PGHOST=str(server.get("host", "127.0.0.1")),
        PGPORT=str(server.get("port", "5432")),
        PGUSER=str(server.get("user", "postgres")),
        PGOPTIONS=f"-c search_path={tables}",
        PYTHONPATH=str(PROJECT),
    )
    if server.get("password"):
        env["PGPASSWORD"] = str(server["password"])
    try:
        yield {"env": env, "conveyor_url": conveyor_url, "tables": tables}
    finally:
        with psycopg.connect(settings.conninfo, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{tables}" CASCADE')


async def test_the_job_is_stored_by_the_signup_transaction(site: dict[str, Any]) -> None:
    import psycopg

    env = site["env"]
    steps = Child(python(str(STEPS)), cwd=PROJECT, env=env)
    assert steps.stop(sig=None) == 0, steps.output
    seen = json.loads(steps.lines[-1])
    assert seen["seen_before_commit"] is False  # inside the transaction, for it only
    assert seen["rolled_back_customer"] is False
    assert seen["rolled_back_job"] is False
    assert seen["status"] == 201
    assert seen["job_state"] == "queued"  # committed with the customer; no worker yet

    url = site["conveyor_url"]
    async with Conveyor(url) as conveyor:
        worker = Child(python("manage.py", "conveyor_worker"), cwd=PROJECT, env=env)
        try:
            worker.wait_for(" started: queues=")
            done = await conveyor.wait(seen["job"], timeout=WAIT)
            assert done.state.value == "completed", done
            assert done.result == {"email": "ada@example.com"}
        finally:
            code = worker.stop()
        assert code == 0, worker.output
        assert "Traceback" not in worker.output, worker.output

    async with await psycopg.AsyncConnection.connect(parse_url(url).conninfo) as conn:
        cur = await conn.execute(
            f'SELECT welcomed_at IS NOT NULL FROM "{site["tables"]}".shop_customer WHERE id = %s',
            (seen["customer"],),
        )
        assert await cur.fetchone() == (True,)
