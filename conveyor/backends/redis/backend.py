"""Redis backend: every operation one atomic Lua script, one round trip.

URL, key layout and scores: layout.py; connections and scripts:
connection.py; schedules, locks, cache and presence: stores.py.

Clock: the server's. A call whose `now` is None (every call the engine
makes) has its script read Redis' TIME where it decides: lease expiry in
claims, heartbeats and recovery, a retry's due time (`Outcome.retry_in`), a
delay given to enqueue (`NewJob.relative`: it counts from the server's now),
worker presence; locks and the cache are Redis TTLs. So the workers,
schedulers and producers may be skewed against the server and each other by
any amount. What their clocks still stamp is only shown or ordered: a job's
`finished_at` and a handed-back job's place in line (`Outcome.at`), and the
times (hence FIFO order) of unkeyed jobs due at once, which go in one MULTI
without a script and keep their producer's times.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from conveyor.backends.base import (
    CancelResult,
    Capabilities,
    ClaimToken,
    Heartbeat,
    LeaseStatus,
    NewJob,
    Outcome,
    Retention,
)
from conveyor.backends.redis.connection import SCRIPTS
from conveyor.backends.redis.layout import pair_of, ready_score, server_time
from conveyor.backends.redis.resp import Arg, RedisConnectionLost, RedisReplyError
from conveyor.backends.redis.rows import (
    FIELDS,
    LEASE_STATUS,
    claimed,
    jobs_json,
    keep_args,
    logs_arg,
    names_arg,
    new_job_record,
    new_token,
    num_arg,
    outcomes_json,
    row_to_job,
)
from conveyor.backends.redis.stores import RedisStores
from conveyor.job import Job, JobState

_LIST_SCAN = 10_000


class RedisBackend(RedisStores):
    """`redis://` / `rediss://` — see layout.py for the URL and the key layout."""

    capabilities = Capabilities(recurring=True, locks=True, cache=True, claim_lanes=2)

    # ------------------------------------------------------------------ producing

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[Job]:
        if not jobs:
            return []
        if all(new.key is None and new.relative and new.run_at <= new.created_at for new in jobs):
            # Unkeyed jobs due at once: no key to check, and no clock to ask
            # (they are queued whatever the time), so a MULTI of plain
            # commands, which costs Redis a fraction of a script call. Their
            # times are their producer's (base.py: what skew still touches).
            due = max(new.created_at for new in jobs)  # every one is due by then
            await self._pipe(self._insert_commands(jobs, due))
            return [new_job_record(new, due) for new in jobs]
        # The idempotency check and the insert are one atomic step, and the
        # server's clock decides what is due: a delay counts from it.
        return await self._inserted(jobs, await self._run("enqueue", "", jobs_json(jobs)))

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
                    num_arg(new.timeout),
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
                    "headers",
                    new.headers or "",
                )
            )
            if queued:
                score = ready_score(new.priority, new.run_at)
                commands.append(
                    ("ZADD", f"{p}:queued:{pair_of(new.queue, new.name)}", score, new.id)
                )
                woken[new.queue, new.name] = woken.get((new.queue, new.name), 0) + 1
            else:
                commands.append(("ZADD", f"{p}:scheduled:{new.queue}", repr(new.run_at), new.id))
        for queue in {new.queue for new in jobs}:
            commands.append(("SADD", f"{p}:queues", queue))
        for (queue, name), count in woken.items():
            commands.append(("SADD", f"{p}:names:{queue}", name))
            wake = f"{p}:wakeup:{pair_of(queue, name)}"
            commands.append(("LPUSH", wake, *(["1"] * min(count, 16))))
            commands.append(("LTRIM", wake, 0, 63))
        commands.append(("EXEC",))
        return commands

    # ------------------------------------------------------------------ consuming

    async def claim(
        self,
        queues: Sequence[str],
        limit: int,
        lease: float,
        now: float | None = None,
        *,
        claim_id: str | None = None,
        names: Sequence[str] | None = None,
    ) -> list[Job]:
        token = new_token(claim_id)
        rows = await self._run(
            "claim", num_arg(now), repr(lease), limit, token, names_arg(names), *queues
        )
        return claimed(rows, token)

    # A broker's store (base.DeliveryStore): the broker delivers job ids.

    async def claim_ids(
        self,
        ids: Sequence[str],
        lease: float,
        now: float | None = None,
        *,
        claim_id: str,
    ) -> list[Job | None]:
        if not ids:
            return []
        rows = await self._run(
            "claim_ids", num_arg(now), repr(lease), claim_id, json.dumps(list(ids))
        )
        return [None if row is None else claimed([row], claim_id)[0] for row in rows]

    async def withdraw(self, ids: Sequence[str]) -> list[str]:
        if not ids:
            return []
        return [str(i) for i in await self._run("withdraw", *dict.fromkeys(ids))]

    async def release_due(
        self, queues: Sequence[str], limit: int, now: float | None = None
    ) -> list[Job]:
        if limit <= 0 or not queues:
            return []
        rows = await self._run("release_due", num_arg(now), limit, *queues)
        return [row_to_job(row) for row in rows]

    async def unclaim(self, claim_id: str, now: float | None = None) -> int:
        return int(await self._run("unclaim", claim_id, num_arg(now)))

    async def heartbeat(
        self, beats: Sequence[Heartbeat], lease: float, now: float | None = None
    ) -> list[LeaseStatus]:
        beats_json = json.dumps([(b.job_id, b.token, logs_arg(b.logs)) for b in beats])
        codes = await self._run("heartbeat", num_arg(now), repr(lease), beats_json)
        return [LEASE_STATUS[int(code)] for code in codes]

    async def finish(self, outcomes: Sequence[Outcome], retention: Retention) -> list[bool]:
        flags = await self._run("finish", *keep_args(retention), outcomes_json(outcomes))
        return [bool(int(flag)) for flag in flags]

    async def finish_and_claim(
        self,
        outcomes: Sequence[Outcome],
        retention: Retention,
        queues: Sequence[str],
        limit: int,
        lease: float,
        now: float | None = None,
        *,
        claim_id: str | None = None,
        names: Sequence[str] | None = None,
    ) -> tuple[list[bool], list[Job]]:
        token = new_token(claim_id)
        flags, rows = await self._run(
            "finish_claim",
            *keep_args(retention),
            outcomes_json(outcomes),
            num_arg(now),
            repr(lease),
            limit,
            token,
            names_arg(names),
            *queues,
        )
        return [bool(int(flag)) for flag in flags], claimed(rows, token)

    async def progress(
        self,
        job_id: str,
        token: ClaimToken,
        progress: float | None,
        logs: Sequence[dict[str, Any]],
    ) -> bool:
        held = await self._run("progress", job_id, token, num_arg(progress), logs_arg(logs))
        return bool(int(held))

    async def recover_expired(
        self, now: float | None, max_stalled: int, retention: Retention | None = None
    ) -> list[Job]:
        keep = retention.keep_failed if retention is not None else None
        rows = await self._run("recover", num_arg(now), max_stalled, "" if keep is None else keep)
        return [row_to_job(row) for row in rows]

    async def _wake_keys(self, queues: Sequence[str], names: Sequence[str] | None) -> list[str]:
        """The wake-up lists of these queues' jobs of `names` (None: of every
        name queued in them now)."""
        if names is None:
            known = await self._pipe([("SMEMBERS", f"{self.prefix}:names:{q}") for q in queues])
            pairs = [(q, name) for q, found in zip(queues, known, strict=True) for name in found]
        else:
            pairs = [(q, name) for q in queues for name in names]
        return [f"{self.prefix}:wakeup:{pair_of(q, name)}" for q, name in dict.fromkeys(pairs)]

    async def wait_for_work(
        self, queues: Sequence[str], timeout: float, *, names: Sequence[str] | None = None
    ) -> None:
        # Due times are on the server's clock: read it with the heads.
        (seconds, micros), *heads = await self._pipe(
            [
                ("TIME",),
                *(("ZRANGE", f"{self.prefix}:scheduled:{q}", 0, 0, "WITHSCORES") for q in queues),
            ]
        )
        now = server_time(seconds, micros)
        for head in heads:
            if head:
                timeout = min(timeout, max(0.0, float(head[1]) - now))
        if timeout < 0.001:
            return
        keys = await self._wake_keys(queues, names)
        if not keys:  # nothing to wait on: wait out the timeout (BLPOP needs a key)
            keys = [f"{self.prefix}:wakeup:none"]
        try:
            # Silent on purpose for up to `timeout`: not counted as late.
            await self._pair()[1].call("BLPOP", *keys, f"{timeout:.3f}", wait=timeout)
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
        token = new_token(claim_id)
        # BLPOP and the claim script go out in one write on the blocking
        # connection: Redis runs the claim the moment the wait ends, with no
        # round trip back to us in between. Only the wake-up lists of the
        # names served are waited on: a job of another name wakes nobody here.
        keys = await self._wake_keys(queues, names)
        private = f"{self.prefix}:wake-worker:{waiter}"
        script = SCRIPTS["claim"]
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
                        names_arg(names),
                        *queues,
                    ),
                ],
                wait=max(timeout, 0.001),  # the BLPOP's silence is not lateness
            )
        except RedisConnectionLost as exc:
            raise self._lost(exc) from exc
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await self.claim(queues, limit, lease, claim_id=token, names=names)
        self._reached()
        return claimed(rows, token)

    async def wake_waiter(self, waiter: str) -> None:
        key = f"{self.prefix}:wake-worker:{waiter}"
        await self._pipe([("LPUSH", key, "1"), ("PEXPIRE", key, 60_000)])

    # ------------------------------------------------------------------ inspecting

    async def get(self, job_id: str) -> Job | None:
        row = await self._cmd("HMGET", f"{self.prefix}:job:{job_id}", *FIELDS)
        return None if row[0] is None else row_to_job([job_id, *row])

    async def get_by_key(self, key: str) -> Job | None:
        job_id = await self._cmd("HGET", f"{self.prefix}:keys", key)
        return None if job_id is None else await self.get(job_id)

    async def _records(self, ids: Sequence[str]) -> list[Job]:
        if not ids:
            return []
        rows = await self._pipe([("HMGET", f"{self.prefix}:job:{i}", *FIELDS) for i in ids])
        return [
            row_to_job([i, *row]) for i, row in zip(ids, rows, strict=True) if row[0] is not None
        ]

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

    async def cancel(self, job_id: str, now: float | None = None) -> CancelResult:
        return CancelResult(await self._run("cancel", job_id, num_arg(now)))

    async def retry(self, job_id: str, now: float | None = None) -> Job | None:
        row = await self._run("retry", job_id, num_arg(now))
        return None if row is None else row_to_job(row)

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
            removed = int(await self._run("purge", num_arg(older_than), queue or "", 2000, *wanted))
            total += removed
            if removed < 2000:
                return total
