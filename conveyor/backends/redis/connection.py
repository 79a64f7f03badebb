"""The Redis backend's connections (a pair per event loop), its scripts and
how they are run, and the key helpers shared by its operations:
`RedisConnection` is the base class of the backend."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Sequence
from importlib import resources
from typing import Any

from conveyor._sync import leave_alone
from conveyor.backends.base import NewJob
from conveyor.backends.redis.layout import pair_of, parse_url, server_time
from conveyor.backends.redis.resp import (
    Arg,
    RedisConnectionLost,
    RedisReplyError,
    RedisURL,
    RespClient,
)
from conveyor.backends.redis.rows import new_job_record, row_to_job
from conveyor.job import BackendUnavailableError, InvalidOptionError, Job, JobState

logger = logging.getLogger("conveyor.redis")

_SCRIPT_NAMES = (
    "enqueue",
    "claim",
    "claim_ids",
    "release_due",
    "heartbeat",
    "finish",
    "finish_claim",
    "unclaim",
    "progress",
    "recover",
    "cancel",
    "retry",
    "purge",
    "withdraw",
    "schedule_fire",
    "schedule_put",
    "stats",
    "lock_release",
    "lock_extend",
    "queued_by_name",
    "worker_beat",
)


class _Script:
    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


def _load_scripts() -> dict[str, _Script]:
    folder = resources.files("conveyor.backends.redis") / "lua"
    library = (folder / "library.lua").read_text()
    return {
        name: _Script(library + "\n" + (folder / f"{name}.lua").read_text())
        for name in _SCRIPT_NAMES
    }


SCRIPTS = _load_scripts()


async def _close_pair(pair: tuple[RespClient, RespClient]) -> None:
    for client in pair:
        await client.aclose()


class RedisConnection:
    """The connection side of `RedisBackend` (its base class)."""

    def __init__(self, url: str) -> None:
        self.url = url
        client_url, self.prefix = parse_url(url)
        try:
            self._settings = RedisURL(client_url)
        except ValueError as exc:
            raise InvalidOptionError(str(exc)) from None
        # Connections belong to one event loop; the blocking twins run on
        # another, so each loop gets its own pair (commands, blocking waits).
        self._clients: dict[asyncio.AbstractEventLoop, tuple[RespClient, RespClient]] = {}
        self._down_since: float | None = None

    def __repr__(self) -> str:
        return f"<RedisBackend {self._settings.display()} prefix={self.prefix}>"

    # ------------------------------------------------------------------ connections

    def _pair(self) -> tuple[RespClient, RespClient]:
        loop = asyncio.get_running_loop()
        pair = self._clients.get(loop)
        if pair is None:
            pair = (RespClient(self._settings), RespClient(self._settings))
            self._clients[loop] = pair
        return pair

    async def open(self) -> None:
        try:
            await self._pair()[0].call("PING")
        except (RedisConnectionLost, RedisReplyError) as exc:
            # A connection that was made but refused (NOAUTH) would stay open:
            # the app never counts as opened, so it never closes the backend.
            await self._pair()[0].aclose()
            raise BackendUnavailableError(
                f"cannot reach Redis at {self._settings.display()}: {exc}"
            ) from exc

    async def close(self) -> None:
        """Close the connections of every loop that used this backend: those of
        another loop (the blocking twins' helper loop) are closed on it."""
        current = asyncio.get_running_loop()
        for loop, pair in list(self._clients.items()):
            del self._clients[loop]
            if loop is current:
                await _close_pair(pair)
            elif loop.is_running():
                future = asyncio.run_coroutine_threadsafe(_close_pair(pair), loop)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.wrap_future(future), timeout=5)

    def _after_fork_in_child(self) -> None:
        """The facade's fork hook, in the child: forget the parent's
        connections. Their sockets are shared with the parent, so nothing may
        be sent on them (not even a QUIT) nor read; the child connects anew."""
        leave_alone(*self._clients.values())
        self._clients = {}

    def _lost(self, exc: Exception) -> BackendUnavailableError:
        if self._down_since is None:
            self._down_since = time.monotonic()
            logger.error("Redis at %s is unreachable (%s)", self._settings.display(), exc)
        error = BackendUnavailableError(f"Redis at {self._settings.display()} unreachable: {exc}")
        error.logged = True
        return error

    def _reached(self) -> None:
        if self._down_since is not None:
            logger.warning(
                "Redis at %s reachable again after %.1f s",
                self._settings.display(),
                time.monotonic() - self._down_since,
            )
            self._down_since = None

    async def _pipe(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        try:
            replies = await self._pair()[0].pipeline(commands)
        except RedisConnectionLost as exc:
            raise self._lost(exc) from exc
        self._reached()
        return replies

    async def _cmd(self, *args: Arg) -> Any:
        (reply,) = await self._pipe([args])
        return reply

    async def _run(self, name: str, *args: Arg) -> Any:
        """EVALSHA the script; where the server does not have it yet (NOSCRIPT:
        restarted, or another cluster node), EVAL its source, which also caches
        it there. EVAL rather than SCRIPT LOAD: a SCRIPT command names no key,
        so during a cluster slot migration it would not reach the node the
        script then runs on."""
        script = SCRIPTS[name]
        try:
            return await self._cmd("EVALSHA", script.sha, 1, self.prefix, self.prefix, *args)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self._cmd("EVAL", script.source, 1, self.prefix, self.prefix, *args)

    # ------------------------------------------------------ shared by operations and stores

    async def clock(self) -> float:
        """The server's TIME: the clock this backend decides by."""
        seconds, micros = await self._cmd("TIME")
        return server_time(seconds, micros)

    async def _inserted(self, jobs: Sequence[NewJob], reply: Sequence[Any]) -> list[Job]:
        """The records of an insert script's reply ({now, {id, duplicate}...}
        from enqueue, schedule_fire): built locally for new jobs, read back
        for duplicates."""
        now_text, flat = reply
        now = float(now_text)
        out: list[Job] = []
        for index, new in enumerate(jobs):
            existing = flat[2 * index + 1]  # 0: stored now; else the duplicate's record
            if isinstance(existing, list):
                out.append(row_to_job(existing, duplicate=True))
            else:
                out.append(new_job_record(new, now, by_server=True))
        return out

    async def _queues(self) -> set[str]:
        return set(await self._cmd("SMEMBERS", f"{self.prefix}:queues"))

    def _queued_key(self, queue: str, name: str) -> str:
        return f"{self.prefix}:queued:{pair_of(queue, name)}"

    def _index(self, queue: str, state: JobState) -> str:
        """The index of `state` in `queue`; for QUEUED the legacy per-queue
        set (the per-name sets are `_queued_key`)."""
        p = self.prefix
        if state is JobState.QUEUED:
            return f"{p}:ready:{queue}"
        if state in (JobState.SCHEDULED, JobState.RUNNING):
            return f"{p}:{state.value}:{queue}"
        return f"{p}:done:{queue}:{state.value}"

    def _schedule_key(self, name: str) -> str:
        return f"{self.prefix}:schedule:{name}"
