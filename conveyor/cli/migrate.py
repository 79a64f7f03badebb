"""`conveyor migrate`: bring a database backend's schema to this release."""

from __future__ import annotations

import asyncio

import click

from conveyor.app import Conveyor
from conveyor.backends.optional import Migrations
from conveyor.cli.core import options, out


@click.command()
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the SQL of the migrations still to run, and run nothing.",
)
@click.pass_context
def migrate(ctx: click.Context, dry_run: bool) -> None:
    """Create or upgrade the backend's schema (PostgreSQL, SQLite; the other
    backends need none). Safe to run from several places at once. The SQL
    also goes into your own migrations: conveyor.contrib.alembic, .django."""
    app = Conveyor(options(ctx).url)  # the URL resolved as every command does
    backend, url = app.backend, app.url
    if not isinstance(backend, Migrations):
        out().print(
            f"{url.partition('://')[0]}:// has no migrations to run: its storage "
            "needs no schema, or is created when it is first opened."
        )
        return

    async def go() -> None:
        try:
            if dry_run:
                pending = await backend.pending_sql()
                if not pending:
                    click.echo(f"-- {backend}: up to date, nothing to run")
                for version, description, statements in pending:
                    click.echo(f"-- migration {version}: {description}")
                    for statement in statements:
                        click.echo(statement.strip() + ";\n")
                return
            done = await backend.migrate()
            version = await backend.schema_version()
            if done:
                applied = ", ".join(map(str, done))
                out().print(f"{backend}: applied migration(s) {applied}; at version {version}")
            else:
                out().print(f"{backend}: up to date at version {version}")
        finally:
            await backend.close()

    asyncio.run(go())
