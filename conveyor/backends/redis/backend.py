"""Redis backend: every operation one atomic Lua script, one round trip.

URL: `redis://[:password@]host:port/db?prefix=conveyor` (or `rediss://` for
TLS). All keys start with the hash tag `{prefix}`, so on a Redis Cluster a
deployment lives in one slot and every script touches that slot only; run
several prefixes to spread several apps over shards.

Key layout (P = "{prefix}"; <pair> = "<bytes of queue>:<queue>:<job name>"):

    P:job:<id>              hash: the job's fields (payload/result/logs as JSON text)
    P:queued:<pair>         zset: queued jobs of one name in one queue, score
                            priority * 2^42 + due ms (ties: id)
    P:names:<queue>         set: job names that have queued jobs in the queue
    P:scheduled:<queue>     zset: delayed jobs and retries, score run_at
    P:running:<queue>       zset: claimed jobs, score lease expiry
    P:done:<queue>:<state>  zset: completed/failed/cancelled, in finishing order
    P:keys                  hash: idempotency key -> job id
    P:keyof                 hash: job id -> idempotency key (keyed jobs only)
    P:queues                set of queue names

Every job sits in exactly one index of its queue, the one of its state, so
the indexes' sizes are the stats.
    P:wakeup:<pair>         list: wake-up tokens, BLPOP-ed by idle workers serving that name
    P:wake-worker:<id>      list: ends one worker's blocking wait (stop)
    P:workers               hash: worker id -> presence record (JSON)
    P:workers:expires       zset: worker id, score the time its record expires
    P:schedule:<name>       hash: a recurring schedule
    P:schedules:due         zset: enabled schedules, score next_run
    P:lock:<key>            string: the owner token, with a TTL
    P:cache:<key>           string: JSON, with a TTL

Layout change: queued jobs used to wait in one `P:ready:<queue>` zset (woken
through `P:wake:<queue>`); they now wait per job name, so a worker claims only
the names it has handlers for, in one round trip, whatever else is queued.
Queued jobs left in a `P:ready:<queue>` set by an older release are moved into
the per-name sets by the next claim on that queue (1,000 per claim), so an
upgrade needs no migration step; stats count them meanwhile. Run older and
newer releases on one prefix only while draining the old: older workers never
see jobs queued by newer code, and older admin commands miss them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from conveyor._sync import leave_alone
from conveyor.backends.base import (
    CancelResult,
    Capabilities,
    ClaimToken,
    Heartbeat,
    LeaseStatus,
    NewJob,
    Outcome,
    Retention,
    ScheduleRecord,
    WorkerInfo,
)
from conveyor.backends.redis.resp import (
    Arg,
    RedisConnectionLost,
    RedisReplyError,
    RedisURL,
    RespClient,
)
from conveyor.job import (
    BackendUnavailableError,
    InvalidOptionError,
    Job,
    JobState,
    utc,
)

logger = logging.getLogger("conveyor.redis")

_SCRIPT_NAMES = (
    "enqueue",
    "claim",
    "heartbeat",
    "finish",
    "finish_claim",
    "unclaim",
    "progress",
    "recover",
    "cancel",
    "retry",
    "purge",
    "schedule_fire",
    "stats",
    "lock_release",
    "lock_extend",
    "queued_by_name",
    "worker_beat",
)
_FIELDS = (
    "name",
    "queue",
    "payload",
    "state",
    "attempts",
    "max_retries",
    "priority",
    "key",
    "result",
    "error",
    "progress",
    "created_at",
    "run_at",
    "started_at",
    "finished_at",
    "timeout",
    "logs",
    "stalls",
    "cancel_requested",
)
_LIST_SCAN = 10_000
_STATES = {state.value: state for state in JobState}
_LEASE = {0: LeaseStatus.LOST, 1: LeaseStatus.HELD, 2: LeaseStatus.CANCEL}


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


_SCRIPTS = _load_scripts()


def _f(value: str | None) -> float | None:
    return float(value) if value else None


def _num(value: float | None) -> str:
    return "" if value is None else repr(value)


def _job(values: Sequence[Any], duplicate: bool = False) -> Job:
    (
        job_id,
        name,
        queue,
        payload,
        state,
        attempts,
        max_retries,
        priority,
        key,
        result,
        error,
        progress,
        created_at,
        run_at,
        started_at,
        finished_at,
        timeout,
        logs,
        stalls,
        cancel_requested,
    ) = values
    return Job(
        id=job_id,
        name=name,
        queue=queue,
        payload=json.loads(payload),
        state=_STATES[state],
        attempts=int(attempts),
        max_retries=int(max_retries),
        priority=int(priority),
        key=key or None,
        result=json.loads(result) if result else None,
        error=error or None,
        progress=float(progress or 0),
        created_at=utc(_f(created_at)),
        run_at=utc(_f(run_at)),
        started_at=utc(_f(started_at)),
        finished_at=utc(_f(finished_at)),
        timeout=_f(timeout),
        logs=json.loads(logs) if logs and logs != "[]" else [],
        stalls=int(stalls or 0),
        cancel_requested=cancel_requested == "1",
        duplicate=duplicate,
    )


def _new_job_record(new: NewJob, now: float) -> Job:
    """The record of a job just stored, built locally: no read back needed."""
    return Job(
        id=new.id,
        name=new.name,
        queue=new.queue,
        payload=json.loads(new.payload),
        state=JobState.SCHEDULED if new.run_at > now else JobState.QUEUED,
        max_retries=new.max_retries,
        priority=new.priority,
        key=new.key,
        created_at=utc(new.created_at),
        run_at=utc(new.run_at),
        timeout=new.timeout,
    )


_PRIORITY_SPAN = 1 << 42  # as in library.lua
_EPOCH_MS = 1735689600000


def _ready_score(priority: int, run_at: float) -> int:
    """The ready-set score of library.lua's ready_score(), computed exactly."""
    return priority * _PRIORITY_SPAN + math.floor(run_at * 1000) - _EPOCH_MS


def _jobs_json(jobs: Sequence[NewJob]) -> str:
    """A batch as one JSON argument; numbers as text so Lua keeps every digit."""
    return json.dumps(
        [
            (
                new.id,
                new.name,
                new.queue,
                new.payload,
                str(new.priority),
                str(new.max_retries),
                _num(new.timeout),
                new.key or "",
                repr(new.created_at),
                repr(new.run_at),
            )
            for new in jobs
        ],
        separators=(",", ":"),
    )


def _outcomes_json(outcomes: Sequence[Outcome]) -> str:
    return json.dumps(
        [
            (
                out.job_id,
                out.token,
                out.kind.value,
                repr(out.at),
                out.result if out.result is not None else "",
                out.error or "",
                _num(out.run_at),
                _logs(out.logs),
                _num(out.progress),
            )
            for out in outcomes
        ],
        separators=(",", ":"),
    )


def _claimed(rows: Sequence[Any], token: ClaimToken) -> list[Job]:
    """The records a claim script returned, with the token it leased them under."""
    jobs = [_job(row) for row in rows]
    for job in jobs:
        job.token = token
    return jobs


def _new_token(claim_id: str | None) -> ClaimToken:
    # Made here, not in Lua: a script's randomness is not to be relied on.
    return claim_id if claim_id is not None else os.urandom(12).hex()


def _pair(queue: str, name: str) -> str:
    """library.lua's pair(): Lua's # counts bytes, hence the encoding."""
    return f"{len(queue.encode())}:{queue}:{name}"


def _names_arg(names: Sequence[str] | None) -> str:
    """The names argument of the claim scripts: "" for any name."""
    return "" if names is None else json.dumps(list(dict.fromkeys(names)))


def _keep(retention: Retention) -> tuple[str | int, str | int]:
    keep_completed = "" if retention.keep_completed is None else retention.keep_completed
    keep_failed = "" if retention.keep_failed is None else retention.keep_failed
    return keep_completed, keep_failed


def _logs(lines: Sequence[dict[str, Any]]) -> str:
    return json.dumps(lines, default=str) if lines else ""


async def _close_pair(pair: tuple[RespClient, RespClient]) -> None:
    for client in pair:
        await client.aclose()


def _parse_url(url: str) -> tuple[str, str]:
    """The URL for redis-py (without our options) and the key prefix tag."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise InvalidOptionError(f"not a Redis URL: {url!r}")
    options = dict(parse_qsl(parts.query))
    prefix = options.pop("prefix", "conveyor")
    if not prefix or any(c in prefix for c in "{}: "):
        raise InvalidOptionError(f"bad Redis key prefix {prefix!r} in {url!r}")
    clean = urlunsplit(parts._replace(query=urlencode(options)))
    return clean, "{" + prefix + "}"


class RedisBackend:
    """`redis://` / `rediss://` — see the module docstring for the key layout."""

    capabilities = Capabilities(recurring=True, locks=True, cache=True)

    def __init__(self, url: str) -> None:
        self.url = url
        client_url, self.prefix = _parse_url(url)
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
        return BackendUnavailableError(f"Redis at {self._settings.display()} unreachable: {exc}")

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
        """EVALSHA the script (loading it once per server: after a restart the
        script cache is empty, and NOSCRIPT makes us load it again)."""
        script = _SCRIPTS[name]
        try:
            return await self._cmd("EVALSHA", script.sha, 1, self.prefix, self.prefix, *args)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self._cmd("SCRIPT", "LOAD", script.source)
        return await self._cmd("EVALSHA", script.sha, 1, self.prefix, self.prefix, *args)

    # ------------------------------------------------------------------ producing

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[Job]:
        if not jobs:
            return []
        now = time.time()
        if any(new.key is not None for new in jobs):
            # The idempotency check and the insert must be one atomic step.
            flat = await self._run("enqueue", repr(now), _jobs_json(jobs))
            return await self._inserted(jobs, flat, now)
        # Without keys there is nothing to check: a MULTI of plain commands
        # costs Redis a fraction of a script call.
        await self._pipe(self._insert_commands(jobs, now))
        return [_new_job_record(new, now) for new in jobs]

    def _insert_commands(self, jobs: Sequence[NewJob], now: float) -> list[tuple[Arg, ...]]:
        """MULTI ... EXEC storing unkeyed jobs, as library.lua's insert() does."""
        p = self.prefix
        commands: list[tuple[Arg, ...]] = [("MULTI",)]
        woken: dict[tuple[str, str], int] = {}
        for new in jobs:
            queued = new.run_at <= now
            commands.append(
                (
                    "HSET",
                    f"{p}:job:{new.id}",
                    "name",
                    new.name,
                    "queue",
                    new.queue,
                    "payload",
                    new.payload,
                    "state",
                    "queued" if queued else "scheduled",
                    "priority",
                    new.priority,
                    "max_retries",
                    new.max_retries,
                    "timeout",
                    _num(new.timeout),
                    "key",
                    "",
                    "created_at",
                    repr(new.created_at),
                    "run_at",
                    repr(new.run_at),
                    "attempts",
                    0,
                    "progress",
                    0,
                    "stalls",
                    0,
                    "cancel_requested",
                    0,
                )
            )
            if queued:
                score = _ready_score(new.priority, new.run_at)
                commands.append(("ZADD", f"{p}:queued:{_pair(new.queue, new.name)}", score, new.id))
                woken[new.queue, new.name] = woken.get((new.queue, new.name), 0) + 1
            else:
                commands.append(("ZADD", f"{p}:scheduled:{new.queue}", repr(new.run_at), new.id))
        for queue in {new.queue for new in jobs}:
            commands.append(("SADD", f"{p}:queues", queue))
        for (queue, name), count in woken.items():
            commands.append(("SADD", f"{p}:names:{queue}", name))
            wake = f"{p}:wakeup:{_pair(queue, name)}"
            commands.append(("LPUSH", wake, *(["1"] * min(count, 16))))
            commands.append(("LTRIM", wake, 0, 63))
        commands.append(("EXEC",))
        return commands

    async def _inserted(self, jobs: Sequence[NewJob], flat: Sequence[Any], now: float) -> list[Job]:
        out: list[Job | None] = []
        duplicates: dict[int, str] = {}
        for index, new in enumerate(jobs):
            job_id, duplicate = flat[2 * index], int(flat[2 * index + 1])
            if duplicate:
                duplicates[index] = job_id
                out.append(None)
            else:
                out.append(_new_job_record(new, now))
        if duplicates:
            rows = await self._pipe(
                [
                    ("HMGET", f"{self.prefix}:job:{job_id}", *_FIELDS)
                    for job_id in duplicates.values()
                ]
            )
            for (index, job_id), row in zip(duplicates.items(), rows, strict=True):
                out[index] = _job([job_id, *row], duplicate=True)
        return [job for job in out if job is not None]

    # ------------------------------------------------------------------ consuming

    async def claim(
        self,
        queues: Sequence[str],
        limit: int,
        lease: float,
        now: float,
        *,
        claim_id: str | None = None,
        names: Sequence[str] | None = None,
    ) -> list[Job]:
        token = _new_token(claim_id)
        rows = await self._run(
            "claim", repr(now), repr(lease), limit, token, _names_arg(names), *queues
        )
        return _claimed(rows, token)

    async def unclaim(self, claim_id: str, now: float) -> int:
        return int(await self._run("unclaim", claim_id, repr(now)))

    async def heartbeat(
        self, beats: Sequence[Heartbeat], lease: float, now: float
    ) -> list[LeaseStatus]:
        beats_json = json.dumps([(b.job_id, b.token, _logs(b.logs)) for b in beats])
        codes = await self._run("heartbeat", repr(now), repr(lease), beats_json)
        return [_LEASE[int(code)] for code in codes]

    async def finish(self, outcomes: Sequence[Outcome], retention: Retention) -> list[bool]:
        flags = await self._run("finish", *_keep(retention), _outcomes_json(outcomes))
        return [bool(int(flag)) for flag in flags]

    async def finish_and_claim(
        self,
        outcomes: Sequence[Outcome],
        retention: Retention,
        queues: Sequence[str],
        limit: int,
        lease: float,
        now: float,
        *,
        claim_id: str | None = None,
        names: Sequence[str] | None = None,
    ) -> tuple[list[bool], list[Job]]:
        token = _new_token(claim_id)
        flags, rows = await self._run(
            "finish_claim",
            *_keep(retention),
            _outcomes_json(outcomes),
            repr(now),
            repr(lease),
            limit,
            token,
            _names_arg(names),
            *queues,
        )
        return [bool(int(flag)) for flag in flags], _claimed(rows, token)

    async def progress(
        self,
        job_id: str,
        token: ClaimToken,
        progress: float | None,
        logs: Sequence[dict[str, Any]],
    ) -> bool:
        held = await self._run("progress", job_id, token, _num(progress), _logs(logs))
        return bool(int(held))

    async def recover_expired(
        self, now: float, max_stalled: int, retention: Retention | None = None
    ) -> list[Job]:
        keep = retention.keep_failed if retention is not None else None
        rows = await self._run("recover", repr(now), max_stalled, "" if keep is None else keep)
        return [_job(row) for row in rows]

    async def _wake_keys(self, queues: Sequence[str], names: Sequence[str] | None) -> list[str]:
        """The wake-up lists of these queues' jobs of `names` (None: of every
        name queued in them now)."""
        if names is None:
            known = await self._pipe([("SMEMBERS", f"{self.prefix}:names:{q}") for q in queues])
            pairs = [(q, name) for q, found in zip(queues, known, strict=True) for name in found]
        else:
            pairs = [(q, name) for q in queues for name in names]
        return [f"{self.prefix}:wakeup:{_pair(q, name)}" for q, name in dict.fromkeys(pairs)]

    async def wait_for_work(
        self, queues: Sequence[str], timeout: float, *, names: Sequence[str] | None = None
    ) -> None:
        heads = await self._pipe(
            [("ZRANGE", f"{self.prefix}:scheduled:{q}", 0, 0, "WITHSCORES") for q in queues]
        )
        for head in heads:
            if head:
                timeout = min(timeout, max(0.0, float(head[1]) - time.time()))
        if timeout < 0.001:
            return
        keys = await self._wake_keys(queues, names)
        if not keys:  # nothing to wait on: wait out the timeout (BLPOP needs a key)
            keys = [f"{self.prefix}:wakeup:none"]
        try:
            await self._pair()[1].call("BLPOP", *keys, f"{timeout:.3f}")
        except RedisConnectionLost as exc:
            raise self._lost(exc) from exc

    async def claim_blocking(
        self,
        queues: Sequence[str],
        limit: int,
        lease: float,
        timeout: float,
        waiter: str,
        *,
        claim_id: str | None = None,
        names: Sequence[str] | None = None,
    ) -> list[Job]:
        token = _new_token(claim_id)
        # BLPOP and the claim script go out in one write on the blocking
        # connection: Redis runs the claim the moment the wait ends, with no
        # round trip back to us in between. Only the wake-up lists of the
        # names served are waited on: a job of another name wakes nobody here.
        keys = await self._wake_keys(queues, names)
        private = f"{self.prefix}:wake-worker:{waiter}"
        script = _SCRIPTS["claim"]
        try:
            _, rows = await self._pair()[1].pipeline(
                [
                    ("BLPOP", *keys, private, f"{max(timeout, 0.001):.3f}"),
                    (
                        "EVALSHA",
                        script.sha,
                        1,
                        self.prefix,
                        self.prefix,
                        "",
                        repr(lease),
                        limit,
                        token,
                        _names_arg(names),
                        *queues,
                    ),
                ]
            )
        except RedisConnectionLost as exc:
            raise self._lost(exc) from exc
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await self.claim(queues, limit, lease, time.time(), claim_id=token, names=names)
        self._reached()
        return _claimed(rows, token)

    async def wake_waiter(self, waiter: str) -> None:
        key = f"{self.prefix}:wake-worker:{waiter}"
        await self._pipe([("LPUSH", key, "1"), ("PEXPIRE", key, 60_000)])

    # ------------------------------------------------------------------ inspecting

    async def get(self, job_id: str) -> Job | None:
        row = await self._cmd("HMGET", f"{self.prefix}:job:{job_id}", *_FIELDS)
        return None if row[0] is None else _job([job_id, *row])

    async def get_by_key(self, key: str) -> Job | None:
        job_id = await self._cmd("HGET", f"{self.prefix}:keys", key)
        return None if job_id is None else await self.get(job_id)

    async def _records(self, ids: Sequence[str]) -> list[Job]:
        if not ids:
            return []
        rows = await self._pipe([("HMGET", f"{self.prefix}:job:{i}", *_FIELDS) for i in ids])
        return [_job([i, *row]) for i, row in zip(ids, rows, strict=True) if row[0] is not None]

    async def list_jobs(
        self,
        *,
        state: JobState | None,
        name: str | None,
        queue: str | None,
        limit: int,
        offset: int,
    ) -> list[Job]:
        # Candidates come from the state indexes; job ids sort by creation
        # time, so newest first is a sort of ids. An index is read whole up
        # to _LIST_SCAN entries (beyond that, its most recent entries).
        queues = [queue] if queue is not None else sorted(await self._queues())
        states = [state] if state is not None else list(JobState)
        queued: dict[str, list[str]] = {}
        if JobState.QUEUED in states and queues:
            found = await self._pipe([("SMEMBERS", f"{self.prefix}:names:{q}") for q in queues])
            queued = {
                q: [self._index(q, JobState.QUEUED), *(self._queued_key(q, n) for n in names)]
                for q, names in zip(queues, found, strict=True)
            }
        chunks = await self._pipe(
            [
                ("ZRANGE", key, 0, _LIST_SCAN - 1, "REV")
                for q in queues
                for st in states
                for key in (queued[q] if st is JobState.QUEUED else [self._index(q, st)])
            ]
        )
        ids = sorted({i for chunk in chunks for i in chunk}, reverse=True)
        out: list[Job] = []
        skipped = 0
        for start in range(0, len(ids), 200):
            for job in await self._records(ids[start : start + 200]):
                if name is not None and job.name != name:
                    continue
                if state is not None and job.state is not state:
                    continue
                if skipped < offset:
                    skipped += 1
                elif len(out) < limit:
                    out.append(job)
            if len(out) >= limit:
                break
        return out

    async def _queues(self) -> set[str]:
        return set(await self._cmd("SMEMBERS", f"{self.prefix}:queues"))

    def _queued_key(self, queue: str, name: str) -> str:
        return f"{self.prefix}:queued:{_pair(queue, name)}"

    def _index(self, queue: str, state: JobState) -> str:
        """The index of `state` in `queue`; for QUEUED the legacy per-queue
        set (the per-name sets are `_queued_key`)."""
        p = self.prefix
        if state is JobState.QUEUED:
            return f"{p}:ready:{queue}"
        if state in (JobState.SCHEDULED, JobState.RUNNING):
            return f"{p}:{state.value}:{queue}"
        return f"{p}:done:{queue}:{state.value}"

    async def cancel(self, job_id: str, now: float) -> CancelResult:
        return CancelResult(await self._run("cancel", job_id, repr(now)))

    async def retry(self, job_id: str, now: float) -> Job | None:
        row = await self._run("retry", job_id, repr(now))
        return None if row is None else _job(row)

    async def stats(self) -> dict[str, dict[str, int]]:
        rows = await self._run("stats")
        order = ("scheduled", "queued", "running", "completed", "failed", "cancelled")
        out: dict[str, dict[str, int]] = {}
        for queue, *counts in rows:
            if any(counts):
                out[queue] = {state: int(n) for state, n in zip(order, counts, strict=True)}
        return out

    async def purge(
        self, states: Sequence[JobState], older_than: float | None, queue: str | None
    ) -> int:
        wanted = [s.value for s in states if s is not JobState.RUNNING]
        if not wanted:
            return 0
        total = 0
        while True:  # in slices, so one script never blocks Redis for long
            removed = int(await self._run("purge", _num(older_than), queue or "", 2000, *wanted))
            total += removed
            if removed < 2000:
                return total

    # ------------------------------------------------------------------ schedules

    def _schedule_key(self, name: str) -> str:
        return f"{self.prefix}:schedule:{name}"

    async def schedule_put(self, record: ScheduleRecord) -> None:
        mapping = {
            "name": record.name,
            "job_name": record.job_name,
            "payload": record.payload,
            "cron": record.cron or "",
            "every": _num(record.every),
            "tz": record.tz,
            "key": record.key or "",
            "enabled": "1" if record.enabled else "0",
            "next_run": repr(record.next_run),
            "created_at": repr(record.created_at),
            "updated_at": repr(record.updated_at),
            "last_run": _num(record.last_run),
            "last_error": record.last_error or "",
            "catch_up": record.catch_up,
            "max_catch_up": str(record.max_catch_up),
            "misfire_grace": repr(record.misfire_grace),
            "options": record.options,
        }
        key = self._schedule_key(record.name)
        due: tuple[Arg, ...] = (
            ("ZADD", f"{self.prefix}:schedules:due", repr(record.next_run), record.name)
            if record.enabled
            else ("ZREM", f"{self.prefix}:schedules:due", record.name)
        )
        fields = [item for pair in mapping.items() for item in pair]
        await self._pipe(
            [
                ("MULTI",),
                ("DEL", key),
                ("HSET", key, *fields),
                ("SADD", f"{self.prefix}:schedules", record.name),
                due,
                ("EXEC",),
            ]
        )

    @staticmethod
    def _schedule(raw: dict[str, str]) -> ScheduleRecord:
        return ScheduleRecord(
            name=raw["name"],
            job_name=raw["job_name"],
            payload=raw["payload"],
            cron=raw["cron"] or None,
            every=_f(raw["every"]),
            tz=raw["tz"],
            key=raw["key"] or None,
            enabled=raw["enabled"] == "1",
            next_run=float(raw["next_run"]),
            created_at=float(raw["created_at"]),
            updated_at=float(raw["updated_at"]),
            last_run=_f(raw.get("last_run")),
            last_error=raw.get("last_error") or None,
            catch_up=raw["catch_up"],
            max_catch_up=int(raw["max_catch_up"]),
            misfire_grace=float(raw["misfire_grace"]),
            options=raw["options"],
        )

    async def _schedules(self, names: Sequence[str]) -> list[ScheduleRecord]:
        if not names:
            return []
        rows = await self._pipe([("HGETALL", self._schedule_key(name)) for name in names])
        return [self._schedule(dict(zip(raw[::2], raw[1::2], strict=True))) for raw in rows if raw]

    async def schedule_get(self, name: str) -> ScheduleRecord | None:
        found = await self._schedules([name])
        return found[0] if found else None

    async def schedule_list(self) -> list[ScheduleRecord]:
        names = sorted(await self._cmd("SMEMBERS", f"{self.prefix}:schedules"))
        return await self._schedules(names)

    async def schedule_delete(self, name: str) -> bool:
        replies = await self._pipe(
            [
                ("MULTI",),
                ("DEL", self._schedule_key(name)),
                ("SREM", f"{self.prefix}:schedules", name),
                ("ZREM", f"{self.prefix}:schedules:due", name),
                ("EXEC",),
            ]
        )
        return bool(replies[-1][0])

    async def schedule_due(self, now: float, limit: int) -> list[ScheduleRecord]:
        names = await self._cmd(
            "ZRANGEBYSCORE", f"{self.prefix}:schedules:due", "-inf", repr(now), "LIMIT", 0, limit
        )
        return [r for r in await self._schedules(names) if r.enabled and r.next_run <= now]

    async def schedule_fire(
        self,
        name: str,
        expected_next_run: float,
        next_run: float,
        last_run: float | None,
        last_error: str | None,
        jobs: Sequence[NewJob],
    ) -> list[Job] | None:
        now = time.time()
        flat = await self._run(
            "schedule_fire",
            repr(now),
            name,
            repr(expected_next_run),
            repr(next_run),
            _num(last_run),
            last_error or "",
            _jobs_json(jobs),
        )
        if flat is None:
            return None
        return await self._inserted(jobs, flat, now)

    # ------------------------------------------------------------------ locks

    async def lock_acquire(self, key: str, token: str, ttl: float, now: float) -> bool:
        # The TTL runs on the Redis clock, so expiry is the same for every client.
        ms = max(1, int(ttl * 1000))
        reply = await self._cmd("SET", f"{self.prefix}:lock:{key}", token, "NX", "PX", ms)
        return reply is not None

    async def lock_release(self, key: str, token: str) -> bool:
        return bool(int(await self._run("lock_release", key, token)))

    async def lock_extend(self, key: str, token: str, ttl: float, now: float) -> bool:
        ms = max(1, int(ttl * 1000))
        return bool(int(await self._run("lock_extend", key, token, ms)))

    # ------------------------------------------------------------------ cache

    async def cache_get(self, key: str, now: float) -> str | None:
        value: str | None = await self._cmd("GET", f"{self.prefix}:cache:{key}")
        return value

    async def cache_set(self, key: str, value: str, ttl: float | None, now: float) -> None:
        if ttl is None:
            await self._cmd("SET", f"{self.prefix}:cache:{key}", value)
        else:
            await self._cmd(
                "SET", f"{self.prefix}:cache:{key}", value, "PX", max(1, int(ttl * 1000))
            )

    async def cache_delete(self, key: str) -> bool:
        return bool(await self._cmd("DEL", f"{self.prefix}:cache:{key}"))

    # ------------------------------------------------------------------ workers

    async def worker_beat(self, info: WorkerInfo, ttl: float, now: float) -> None:
        record = json.dumps(
            {
                "host": info.host,
                "pid": info.pid,
                "queues": info.queues,
                "names": info.names,
                "started_at": info.started_at,
                "last_seen": info.last_seen,
            }
        )
        await self._run("worker_beat", info.id, record, repr(now + ttl), repr(now))

    async def worker_gone(self, worker_id: str) -> None:
        p = self.prefix
        await self._pipe(
            [
                ("MULTI",),
                ("HDEL", f"{p}:workers", worker_id),
                ("ZREM", f"{p}:workers:expires", worker_id),
                ("EXEC",),
            ]
        )

    async def workers(self, now: float) -> list[WorkerInfo]:
        p = self.prefix
        live, records = await self._pipe(
            [
                ("ZRANGEBYSCORE", f"{p}:workers:expires", f"({now!r}", "+inf"),
                ("HGETALL", f"{p}:workers"),
            ]
        )
        found = dict(zip(records[::2], records[1::2], strict=True))
        out = []
        for worker_id in live:
            if worker_id in found:
                raw = json.loads(found[worker_id])
                out.append(
                    WorkerInfo(
                        id=worker_id,
                        host=raw["host"],
                        pid=raw["pid"],
                        queues=tuple(raw["queues"]),
                        names=tuple(raw["names"]),
                        started_at=raw["started_at"],
                        last_seen=raw["last_seen"],
                    )
                )
        return sorted(out, key=lambda info: (info.started_at, info.id))

    async def queued_by_name(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for queue, name, count in await self._run("queued_by_name"):
            out.setdefault(queue, {})[name] = int(count)
        return out
