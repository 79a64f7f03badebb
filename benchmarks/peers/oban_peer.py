"""Oban's Python port (PyPI `oban`): PostgreSQL only, psycopg 3.

It needs Python 3.12 or newer. Under an older interpreter this module raises
ImportError, and the harness shows the peer as n/a with that reason; run.py's
`--python oban=PATH` runs this peer's driver and worker under another
interpreter (one with oban, psycopg and, for the harness, nothing else).
"""

from __future__ import annotations

import sys

if sys.version_info < (3, 12):
    raise ImportError(
        f"oban needs Python >= 3.12, this is {sys.version_info[0]}.{sys.version_info[1]}; "
        "run it with --python oban=/path/to/python3.12 (with oban installed)"
    )

import asyncio
import signal
from collections.abc import Callable
from typing import Any

import orjson
import uvloop
from oban import Job, Oban, worker
from oban.schema import install
from psycopg.types.json import set_json_dumps, set_json_loads

from peers import probe
from peers.base import Peer, dist_version
from peers.stores import split_postgres


@worker(queue="default")
class Noop:
    async def process(self, job: Job) -> None:
        probe.hit(float(job.args["t"]))


class ObanPeer(Peer):
    name = "oban"
    settings = (
        "`Oban(pool=pool, queues={'default': 10})` in one process on uvloop with orjson, what "
        "`oban start --queues default:10` runs; defaults otherwise (pool of 1 to 10 "
        "connections, LISTEN/NOTIFY, stager every 1 s, pruner keeps jobs for a day)"
    )
    batch_call = "`oban.enqueue_many([Noop.new({...}), ...])`"
    notes = "Completed jobs stay in oban_jobs until the pruner removes them (after a day)."

    def __init__(self, url: str, concurrency: int) -> None:
        super().__init__(url, concurrency)
        self.dsn, self.schema = split_postgres(url)
        self.pool: Any = None
        self.oban: Oban | None = None

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {
            "oban": dist_version("oban"),
            "psycopg": dist_version("psycopg"),
            "Python": ".".join(map(str, sys.version_info[:3])),
        }

    async def open(self) -> None:
        self.pool = await Oban.create_pool(self.dsn)
        await install(self.pool, prefix=self.schema)  # into the emptied schema
        # client mode: no queues, so this instance only enqueues
        self.oban = Oban(pool=self.pool, prefix=self.schema)

    async def close(self) -> None:
        self.oban = None
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    async def enqueue_one(self, t: float) -> None:
        assert self.oban is not None
        await self.oban.enqueue(Noop.new({"t": t}))  # type: ignore[attr-defined]

    async def enqueue_batch(self, ts: list[float]) -> None:
        assert self.oban is not None
        await self.oban.enqueue_many([Noop.new({"t": t}) for t in ts])  # type: ignore[attr-defined]

    def run_worker(self, started: Callable[[], None]) -> None:
        set_json_dumps(orjson.dumps)
        set_json_loads(orjson.loads)

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            pool = await Oban.create_pool(self.dsn)
            try:
                oban = Oban(pool=pool, prefix=self.schema, queues={"default": self.concurrency})
                started()
                async with oban:
                    await stop.wait()
            finally:
                await pool.close()

        uvloop.run(main())


PEER = ObanPeer
