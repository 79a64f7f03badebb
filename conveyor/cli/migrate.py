"""`conveyor migrate`: bring a database backend's schema to this release,
a broker's store and the locks' and the cache's own backend included (CONVEYOR_LOCKS_URL /
CONVEYOR_CACHE_URL, or the app's locks_url= / cache_url=)."""

from __future__ import annotations

import asyncio

import click

from conveyor.app import Conveyor
from conveyor.backends.base import Backend
from conveyor.backends.optional import Migrations
from conveyor.backends.url_options import without_secrets
from conveyor.cli.core import options, out


@click.command()
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the SQL of the migrations still to run, and run nothing.",
)
@click.pass_context
def migrate(ctx: click.Context, dry_run: bool) -> None:
    """Create or upgrade the backend's schema (PostgreSQL, SQLite, or the
    store of sqs://, pubsub:// and cloudtasks://; the other backends need
    none), and that of the locks' and cache's own backend.
    Safe to run from several places at once. The SQL also goes into your own
    migrations: conveyor.contrib.alembic, .django."""
    app = Conveyor(options(ctx).url)  # the URL resolved as every command does
    targets = [(b, roles) for b, roles in backends_of(app) if isinstance(b, Migrations)]
    if not any(roles in ("jobs", "store") for _, roles in targets):
        out().print(
            f"{app.url.partition('://')[0]}:// has no migrations to run: its storage "
            "needs no schema, or is created when it is first opened."
        )
    if not targets:
        return

    async def go() -> None:
        try:
            for backend, roles in targets:
                # The jobs backend's output is as it always was; another one
                # is named (a dry run's line is an SQL comment).
                named = "" if roles == "jobs" else f" ({roles})"
                if dry_run:
                    if named:
                        click.echo(f"-- {without_secrets(backend.url)}{named}")
                    await _print_pending(backend)
                    continue
                done = await backend.migrate()
                version = await backend.schema_version()
                if done:
                    applied = ", ".join(map(str, done))
                    out().print(
                        f"{backend}{named}: applied migration(s) {applied}; at version {version}"
                    )
                else:
                    out().print(f"{backend}{named}: up to date at version {version}")
        finally:
            for backend, _ in targets:
                await backend.close()

    asyncio.run(go())


def backends_of(app: Conveyor) -> list[tuple[Backend, str]]:
    """The app's distinct backends, each with what it holds: the jobs
    backend ("jobs"), a broker's store ("store": `sqs://...?store=<URL>`
    keeps its jobs there), then the services' own ("locks, cache" when
    shared)."""
    jobs: list[tuple[Backend, str]] = [(app.backend, "jobs")]
    store = getattr(app.backend, "store", None)
    if isinstance(store, Backend):
        jobs.append((store, "store"))
    found: dict[int, tuple[Backend, list[str]]] = {}
    for service in ("locks", "cache"):
        backend = getattr(app.services, service)
        if backend is not None:
            found.setdefault(id(backend), (backend, []))[1].append(service)
    return [*jobs, *((b, ", ".join(r)) for b, r in found.values())]


async def _print_pending(backend: Migrations) -> None:
    pending = await backend.pending_sql()
    if not pending:
        click.echo(f"-- {backend}: up to date, nothing to run")
    for version, description, statements in pending:
        click.echo(f"-- migration {version}: {description}")
        for statement in statements:
            click.echo(statement.strip() + ";\n")
