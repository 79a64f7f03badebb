"""procrastinate: PostgreSQL only, psycopg 3 (its default connector)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from procrastinate import App, PsycopgConnector

from peers import probe
from peers.base import Peer, dist_version
from peers.stores import split_postgres


async def noop(t: float) -> None:
    probe.hit(t)


def make_app(url: str) -> tuple[App, Any]:
    conninfo, schema = split_postgres(url)
    # procrastinate's SQL names its objects without a schema: the search_path
    # puts them (and finds them) in the peer's own schema.
    connector = PsycopgConnector(conninfo=conninfo, kwargs={"options": f"-c search_path={schema}"})
    app = App(connector=connector)
    task = app.task(name="noop")(noop)
    return app, task


class ProcrastinatePeer(Peer):
    name = "procrastinate"
    settings = (
        "`app.run_worker_async(concurrency=10)` in one process, what `procrastinate worker "
        "--concurrency 10` runs; defaults otherwise (LISTEN/NOTIFY on, polling every 5 s as a "
        "fallback, delete_jobs='never', a psycopg pool of 4 connections)"
    )
    batch_call = "`task.batch_defer_async(*[{...}])` (one INSERT per batch)"
    notes = "Finished jobs are kept (delete_jobs='never', the default)."

    def __init__(self, url: str, concurrency: int) -> None:
        super().__init__(url, concurrency)
        self.app: App | None = None
        self.task: Any = None

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {"procrastinate": dist_version("procrastinate"), "psycopg": dist_version("psycopg")}

    async def open(self) -> None:
        self.app, self.task = make_app(self.url)
        await self.app.open_async()
        await self.app.schema_manager.apply_schema_async()  # into the emptied schema

    async def close(self) -> None:
        if self.app is not None:
            await self.app.close_async()
            self.app = None

    async def enqueue_one(self, t: float) -> None:
        await self.task.defer_async(t=t)

    async def enqueue_batch(self, ts: list[float]) -> None:
        await self.task.batch_defer_async(*[{"t": t} for t in ts])

    def run_worker(self, started: Callable[[], None]) -> None:
        async def main() -> None:
            app, _ = make_app(self.url)
            async with app.open_async():
                started()
                # installs its own SIGTERM/SIGINT handlers and returns on either
                await app.run_worker_async(concurrency=self.concurrency)

        asyncio.run(main())


PEER = ProcrastinatePeer
