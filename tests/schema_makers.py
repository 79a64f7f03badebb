"""conveyor's PostgreSQL schema made by an application's own migrations:
Alembic with conveyor.contrib.alembic, Django with conveyor.contrib.django,
or the SQL `conveyor migrate --dry-run` prints, run by hand.

With CONVEYOR_TEST_POSTGRES_SCHEMA_BY=alembic (or django, or dry-run), tests/conftest.py's
`postgres_urls` makes every schema this way and hands out its URL with
`migrate=false`, so the backend must find the schema ready and never runs a
migration itself: the conformance suite then runs on what the tool made
(tests/unit/test_schema_in_app_migrations.py does so).
"""

from __future__ import annotations

import concurrent.futures
import io
from functools import cache
from pathlib import Path
from tempfile import mkdtemp
from typing import Any

from conveyor import settings
from conveyor.backends.postgres.migrations import LATEST as LATEST_VERSION
from conveyor.backends.postgres.url import parse_url

ENV_VAR = settings.CONVEYOR_TEST_POSTGRES_SCHEMA_BY

# What an application's Alembic setup holds: env.py, and a revision that pins
# conveyor's schema version (the schema name comes from the config here; an
# application writes its own, e.g. schema="conveyor").
ALEMBIC_ENV = """
from alembic import context
from sqlalchemy import create_engine

config = context.config
schema = config.get_main_option("conveyor_schema")
if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True,
                      version_table_schema=schema)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        context.configure(connection=connection, version_table_schema=schema)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
"""

# One revision per conveyor schema version, as an application adds one when
# an upgrade of conveyor brings a migration (each pins its versions).
ALEMBIC_REVISION = '''
"""conveyor's job tables, schema version {version}."""
from alembic import context, op

from conveyor.contrib.alembic import downgrade_schema, upgrade_schema

revision = "c0nvey0r{version:04d}"
down_revision = {down!r}
SCHEMA = context.config.get_main_option("conveyor_schema")


def upgrade() -> None:
    upgrade_schema(op, from_version={before}, to_version={version}, schema=SCHEMA)


def downgrade() -> None:
    downgrade_schema(op, from_version={version}, to_version={before}, schema=SCHEMA)
'''


@cache
def _alembic_dir() -> Path:
    folder = Path(mkdtemp(prefix="conveyor-alembic-"))
    (folder / "versions").mkdir()
    (folder / "env.py").write_text(ALEMBIC_ENV)
    (folder / "script.py.mako").write_text("")
    for version in range(1, LATEST_VERSION + 1):
        revision = ALEMBIC_REVISION.format(
            version=version,
            before=version - 1,
            down=None if version == 1 else f"c0nvey0r{version - 1:04d}",
        )
        (folder / "versions" / f"c0nvey0r{version:04d}_conveyor.py").write_text(revision)
    return folder


def alembic_config(server_url: str, schema: str, output: io.StringIO | None = None) -> Any:
    """An Alembic Config for the test env, on `schema` of the server's database
    (its alembic_version table in that schema too)."""
    from alembic.config import Config

    config = Config(output_buffer=output) if output is not None else Config()
    config.set_main_option("script_location", str(_alembic_dir()))
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(server_url).replace("%", "%%"))
    config.set_main_option("conveyor_schema", schema)
    return config


def sqlalchemy_url(server_url: str) -> str:
    return "postgresql+psycopg://" + parse_url(server_url).conninfo.split("://", 1)[1].rstrip("?")


def alembic_upgrade(server_url: str, schema: str) -> None:
    from alembic import command

    _create_schema(server_url, schema)  # for alembic_version, before the migration runs
    command.upgrade(alembic_config(server_url, schema), "head")


# Django's settings and connections are per process and per thread: one
# thread does every Django call (a test's event loop may be running in the
# caller's, where Django refuses synchronous database calls).
_django_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="django")


def django_migrate(server_url: str, schema: str, target: str | None = None) -> None:
    """`migrate conveyor [target]` with CONVEYOR_SCHEMA = schema, and Django's
    own table of applied migrations in that schema too (so each is fresh)."""
    _django_thread.submit(_django_migrate, server_url, schema, target).result()


def django_database(server_url: str, schema: str | None = None) -> dict[str, Any]:
    """Django's DATABASES entry for the server's database; with `schema`,
    Django's own tables (its record of applied migrations) go there."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(parse_url(server_url).conninfo)
    options = {} if schema is None else {"options": f"-c search_path={schema}"}
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params.get("dbname", "postgres"),
        "HOST": params.get("host", "127.0.0.1"),
        "PORT": params.get("port", "5432"),
        "USER": params.get("user", "postgres"),
        "PASSWORD": params.get("password", ""),
        "OPTIONS": options,
    }


def _django_migrate(server_url: str, schema: str, target: str | None) -> None:
    import django
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections

    if not settings.configured:
        settings.configure(
            INSTALLED_APPS=["conveyor.contrib.django"],
            DATABASES={"default": django_database(server_url)},
            USE_TZ=True,
        )
        django.setup()
    _create_schema(server_url, schema)
    connection = connections["default"]
    connection.close()
    connection.settings_dict["OPTIONS"]["options"] = f"-c search_path={schema}"
    settings.CONVEYOR_SCHEMA = schema
    args = ["conveyor"] if target is None else ["conveyor", target]
    call_command("migrate", *args, verbosity=0)
    connection.close()


def _create_schema(server_url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(parse_url(server_url).conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')


_cli_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dry-run")


def dry_run_sql(server_url: str, schema: str) -> None:
    """The SQL `conveyor migrate --dry-run` prints for a fresh schema, run by
    hand as a DBA would (psql -f). In a thread of its own: the command runs
    an event loop, and the caller may be inside one."""
    _cli_thread.submit(_dry_run_sql, server_url, schema).result()


def _dry_run_sql(server_url: str, schema: str) -> None:
    import psycopg
    from click.testing import CliRunner

    from conveyor.cli import cli

    joiner = "&" if "?" in server_url else "?"
    url = f"{server_url}{joiner}schema={schema}"
    printed = CliRunner().invoke(cli, ["--url", url, "migrate", "--dry-run"])
    if printed.exit_code != 0 or "-- migration 1:" not in printed.output:
        raise AssertionError(f"conveyor migrate --dry-run: {printed.output}")
    with psycopg.connect(parse_url(server_url).conninfo, autocommit=True) as conn:
        conn.execute(printed.output)


MAKERS = {"alembic": alembic_upgrade, "django": django_migrate, "dry-run": dry_run_sql}


def make_schema(tool: str, server_url: str, schema: str) -> None:
    if tool not in MAKERS:
        raise ValueError(f"{ENV_VAR}={tool!r}: known: {', '.join(MAKERS)}")
    MAKERS[tool](server_url, schema)
