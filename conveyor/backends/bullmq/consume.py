"""The consuming side of the BullMQ backend: claims (a batch at a time, each
job as BullMQ's moveToActive takes it: batch_scripts.CLAIM; the lock token =
conveyor's claim token, the lock duration = the lease), hand-backs,
heartbeats (extendLock), progress and log lines, and recovery of expired
leases (BullMQ's stalled-jobs check).

An explicit `now` drives leases as on every conveyor backend: a lock is set
to expire (on Redis's timer) at `now + lease`, and recovery or a heartbeat at
`now` treats a lock that expires by then as expired.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any, Final

from conveyor.backends.base import ClaimToken, Heartbeat, LeaseStatus, Retention
from conveyor.backends.bullmq.calls import flat, millis, now_ms, packed
from conveyor.backends.bullmq.layout import (
    CANCEL_REQUESTED,
    CANCELLED,
    HISTORY,
    NO_KEEPS,
    KeepJobs,
    QueueKeys,
    bull_id,
    conveyor_id,
    job_from_hash,
    own_keeps,
    pairs,
)
from conveyor.backends.bullmq.own_scripts import HAND_BACK
from conveyor.backends.bullmq.schedules import BullSchedules
from conveyor.backends.redis.resp import Arg
from conveyor.job import AttemptOutcome, Job, JobState

# How conveyor names itself where BullMQ's scripts record a worker's name.
WORKER: Final = "conveyor"
# A claim by name looks this far into the wait list and the prioritized set
# (each) for jobs of its names: more jobs of other names ahead hide the rest.
MAX_PASSED_OVER: Final = 1000
# Ranks a queue with nothing waiting after every priority (BullMQ's top is 2^21).
MAX_PRIORITY_RANK: Final = 1 << 30


def attempts_option(opts_json: str | None) -> int:
    """A job's BullMQ `attempts` (0 where its opts have none, as Node's Job
    defaults it): moveToFinished says "retries-exhausted" to QueueEvents when
    the attempts made reach it, so a job failed with attempts left (a
    Permanent error, a cancel) must pass its own, as Node's worker does."""
    attempts = json.loads(opts_json or "{}").get("attempts")
    return attempts if isinstance(attempts, int) else 0


def lock_ms(lease: float, now: float | None) -> int:
    """The lock's PX so that it expires at `now + lease` (now: this host's)."""
    if now is None:
        return max(millis(lease), 1)
    return max(millis(lease + now - time.time()), 1)


@functools.lru_cache(maxsize=64)
def _served(names: tuple[str, ...]) -> frozenset[str]:
    """The names a worker serves, as a set: made once, asked every claim."""
    return frozenset(names)


class BullConsumer(BullSchedules):
    def _forget(self, queue: str, job_id: str) -> None:
        """Drop what the claim of `queue`'s job (its BullMQ id) left here."""
        claimed = conveyor_id(queue, job_id)
        self._claimed.pop(claimed, None)
        self._claim_fields.pop(claimed, None)
        self._own_keeps.pop(claimed, None)

    def _take(
        self,
        keys: QueueKeys,
        wanted: int,
        token: str,
        lease: float,
        now: float | None,
        served: frozenset[str] | None,
    ) -> list[Arg]:
        """batch_scripts.CLAIM: up to `wanted` jobs, each as moveToActive
        takes one; of `served` names only (None: any), brought forward first."""
        return self.call(
            "claim",
            keys.many("wait active prioritized events limiter delayed meta pc marker"),
            [
                keys.base,
                now_ms(now),
                token,
                lock_ms(lease, now),
                WORKER,
                wanted,
                MAX_PASSED_OVER,
                *(sorted(served) if served else ()),
            ],
        )

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
        """One BullMQ queue per conveyor queue: from one, a batch; from
        several, one job at a time from the queue whose head comes first by
        (priority, enqueue time), as one queue would order them."""
        _, jobs = await self.claim_after(
            [], queues, limit, lease, now, claim_id=claim_id, names=names
        )
        return jobs

    async def claim_after(
        self,
        before: Sequence[Sequence[Arg]],
        queues: Sequence[str],
        limit: int,
        lease: float,
        now: float | None = None,
        *,
        claim_id: str | None = None,
        names: Sequence[str] | None = None,
    ) -> tuple[list[Any], list[Job]]:
        """`claim`, with the commands `before` sent ahead of it, in its first
        round trip where it claims from one queue: their replies, and the jobs."""
        token = claim_id or uuid.uuid4().hex
        if not self._seen.issuperset(queues):
            await self.note_queues(queues)
        served = None if names is None else _served(tuple(names))
        if len(queues) == 1:
            return await self._claim_from(queues[0], limit, lease, now, token, served, before)
        ahead = await self.run(before)
        claimed: list[Job] = []
        while len(claimed) < limit:
            got: list[Job] = []
            for queue in await self._by_head(queues):
                _, got = await self._claim_from(queue, 1, lease, now, token, served)
                if got:
                    break
            if not got:
                break
            claimed += got
        return ahead, claimed

    async def _by_head(self, queues: Sequence[str]) -> list[str]:
        """The queues ordered by their next job: unprioritised (BullMQ's wait
        list, taken from its right end) before prioritized, then the older;
        queues with neither last (a due delayed job may still be there)."""
        heads = await self.run(
            [
                command
                for q in queues
                for command in (
                    ("LINDEX", self.keys(q)["wait"], -1),
                    ("ZRANGE", self.keys(q)["prioritized"], 0, 0, "WITHSCORES"),
                )
            ]
        )
        ranked: list[tuple[int, int, str]] = []  # (priority rank, queue index, head id)
        for index in range(len(queues)):
            waiting, prioritized = heads[2 * index], heads[2 * index + 1]
            if waiting is not None:
                ranked.append((0, index, waiting))
            elif prioritized:
                ranked.append((int(float(prioritized[1])) >> 32, index, prioritized[0]))
            else:
                ranked.append((MAX_PRIORITY_RANK, index, ""))
        made = await self.run(
            [("HGET", self.keys(queues[i]).job(head), "timestamp") for _, i, head in ranked]
        )
        # Ties within a millisecond: conveyor's ids sort by creation (job.py).
        order = sorted(
            (rank, float(created or 0), head, index)
            for (rank, index, head), created in zip(ranked, made, strict=True)
        )
        return [queues[index] for *_, index in order]

    async def _claim_from(
        self,
        queue: str,
        limit: int,
        lease: float,
        now: float | None,
        token: str,
        served: frozenset[str] | None,
        before: Sequence[Sequence[Arg]] = (),
    ) -> tuple[list[Any], list[Job]]:
        """Up to `limit` jobs of `queue` as BullMQ's moveToActive takes them; of
        `served` names only (None: any), which the claim script brings to the
        head first, in the same call, after promoting due delayed jobs. A job
        of another name that still comes (none should) goes back in front.
        `before`: commands sent ahead in the claim's first round trip
        (outcomes, by finish_and_claim); their replies come first."""
        keys = self.keys(queue)
        if served is not None and not served:
            return list(await self.run(before)), []  # no names: nothing to claim
        *ahead, taken = await self.run(
            [*before, self._take(keys, limit, token, lease, now, served)]
        )
        claimed: list[Job] = []
        passed_over: list[str] = []
        for flat_fields, taken_id in taken:
            job_id, fields = str(taken_id), pairs(flat_fields)
            if fields.get("defa"):
                # Stalled too often: BullMQ fails it at its next claim.
                stalls = fields.get("stc")
                reason = f"{fields['defa']}: lease expired {stalls} times (worker lost)"
                attempts = attempts_option(fields.get("opts"))
                keep = own_keeps(fields.get("opts"))[1]
                await self._fail_deferred(keys, job_id, token, reason, attempts, now, keep)
                self._failed_at_claim.append((queue, job_id))
            elif served is not None and fields.get("name") not in served:
                passed_over.append(job_id)
            else:
                job = job_from_hash(job_id, queue, fields, JobState.RUNNING, token=token)
                self._claimed[job.id] = queue
                self._claim_fields[job.id] = (
                    fields.get("ats"),
                    fields.get("processedOn"),
                    fields.get(HISTORY),
                )
                keeps = own_keeps(fields.get("opts"))
                if keeps != NO_KEEPS:
                    self._own_keeps[job.id] = keeps
                claimed.append(job)
                if "rjk" in fields:  # a job scheduler's iteration, as Node's worker does
                    await self.next_iteration(keys, job_id, fields, now)
        for job_id in reversed(passed_over):  # the last taken goes back first
            await self._put_back(keys, job_id, token, "passed")
        return ahead, claimed

    async def _fail_deferred(
        self,
        keys: QueueKeys,
        job_id: str,
        token: str,
        reason: str,
        attempts: int,
        now: float | None,
        keep: KeepJobs | None,
    ) -> None:
        at = now_ms(now)
        await self.run(
            [self.finished(keys, job_id, token, "failed", reason, keep, at, attempts=attempts)]
        )

    def finished(
        self,
        keys: QueueKeys,
        job_id: str,
        token: str,
        target: str,
        value: str,
        keep: int | KeepJobs | None,
        at: int,
        fields: dict[str, str] | None = None,
        attempts: int = 0,
    ) -> Any:
        """BullMQ's moveToFinished to `target` (completed / failed), fenced by
        the lock token; `keep` is how many to keep there (None: all), or the
        job's own keepJobs; `attempts` the job's own (attempts_option)."""
        opts = {
            "token": token,
            "keepJobs": keep if isinstance(keep, dict) else {"count": -1 if keep is None else keep},
            "attempts": attempts,
            "maxMetricsSize": "",
            "name": WORKER,
        }
        prop = "returnvalue" if target == "completed" else "failedReason"
        args: list[Any] = [job_id, at, prop, value, target, "", keys.base, packed(opts)]
        if fields:
            args.append(packed(flat(fields)))
        return self.call(
            "moveToFinished",
            [
                *keys.many("wait active prioritized events stalled limiter delayed paused meta pc"),
                keys[target],
                keys.job(job_id),
                keys["metrics:" + target],
                keys["marker"],
            ],
            args,
        )

    async def _put_back(self, keys: QueueKeys, job_id: str, token: str, where: str) -> bool:
        moved = await self._cmd(
            "EVAL",
            HAND_BACK,
            11,
            *keys.many("active wait paused prioritized pc stalled meta marker events"),
            keys.job(job_id),
            keys.job(job_id) + ":lock",
            job_id,
            token,
            where,
        )
        return bool(int(moved))

    async def hand_back(self, queue: str, job_id: str, token: str, at: float) -> bool:
        """A job (its BullMQ id in `queue`) handed back unfinished at `at`
        (shutdown, a lost claim reply): next in line again, the attempt not
        counted; cancelled instead if a cancel was asked."""
        keys = self.keys(queue)
        attempts, started, cancel = await self._cmd(
            "HMGET", keys.job(job_id), "ats", "processedOn", CANCEL_REQUESTED
        )
        if not await self._put_back(keys, job_id, token, "front"):
            return False
        self._forget(queue, job_id)
        outcome = AttemptOutcome.CANCELLED if cancel else AttemptOutcome.HANDED_BACK
        await self.record_attempt(keys, job_id, outcome, at, None, attempts, started)
        if cancel:
            await self.fail_pending(keys, job_id, millis(at), "cancelled", CANCELLED)
        return True

    async def unclaim(self, claim_id: str, now: float | None = None) -> int:
        at = time.time() if now is None else now
        handed = 0
        for queue in await self.known_queues():
            keys = self.keys(queue)
            active = await self._cmd("LRANGE", keys["active"], 0, -1)
            if not active:
                continue
            locks = await self.run([("GET", keys.job(i) + ":lock") for i in active])
            for job_id, lock in zip(active, locks, strict=True):
                if lock == claim_id and await self.hand_back(queue, job_id, claim_id, at):
                    handed += 1
        return handed

    async def _expired_by(self, keys: QueueKeys, job_ids: Sequence[str], now: float) -> list[bool]:
        """Whether each job's lock is gone or expires by `now` (this host's clock)."""
        ttls = await self.run([("PTTL", keys.job(i) + ":lock") for i in job_ids])
        host = now_ms(None)
        return [ttl < 0 or host + ttl <= now_ms(now) for ttl in ttls]

    async def heartbeat(
        self, beats: Sequence[Heartbeat], lease: float, now: float | None = None
    ) -> list[LeaseStatus]:
        """Every beat's extendLock (and its cancel check) in one round trip;
        the log lines of the leases renewed in a second, when there are any."""
        statuses: list[LeaseStatus] = [LeaseStatus.LOST] * len(beats)
        held: list[tuple[int, QueueKeys, str]] = []  # (beat, its queue's keys, BullMQ id)
        elsewhere: list[int] = []  # claimed through another backend object, or finished
        for index, beat in enumerate(beats):
            queue = self._claimed.get(beat.job_id)
            if queue is None:
                elsewhere.append(index)
            else:
                held.append((index, self.keys(queue), bull_id(queue, beat.job_id)))
        if elsewhere:
            found = await self._queues_locked_by([beats[i] for i in elsewhere])
            held += [
                (i, self.keys(q), bull_id(q, beats[i].job_id))
                for i, q in zip(elsewhere, found, strict=True)
                if q
            ]
        if now is not None and held:
            ttls = await self.run([("PTTL", k.job(job_id) + ":lock") for _, k, job_id in held])
            host, due = now_ms(None), now_ms(now)
            # As _expired_by: gone, or expiring by `now`, is lost.
            held = [h for h, ttl in zip(held, ttls, strict=True) if ttl >= 0 and host + ttl > due]
        if not held:
            return statuses
        replies = await self.run(
            [
                command
                for index, keys, job_id in held
                for command in (
                    self.call(
                        "extendLock",
                        [keys.job(job_id) + ":lock", keys["stalled"]],
                        [beats[index].token, lock_ms(lease, now), job_id],
                    ),
                    ("HGET", keys.job(job_id), CANCEL_REQUESTED),
                )
            ]
        )
        logs: list[list[Arg]] = []
        for n, (index, keys, job_id) in enumerate(held):
            extended, cancel = replies[2 * n], replies[2 * n + 1]
            if int(extended):
                logs += self.log_commands(keys, job_id, beats[index].logs)
                statuses[index] = LeaseStatus.CANCEL if cancel else LeaseStatus.HELD
        if logs:
            await self.run(logs)
        return statuses

    async def _queues_locked_by(self, beats: Sequence[Heartbeat]) -> list[str | None]:
        """Per beat, the known queue where its job's lock holds its token: a
        GET per queue, not a read of the job (whose getState copies the wait
        list into Lua). None: the lease is gone, as extendLock would find."""
        queues = await self.known_queues()
        locks = await self.run(
            [
                ("GET", self.keys(q).job(bull_id(q, beat.job_id)) + ":lock")
                for beat in beats
                for q in queues
            ]
        )
        found: list[str | None] = []
        for n, beat in enumerate(beats):
            mine = locks[n * len(queues) : (n + 1) * len(queues)]
            found.append(
                next((q for q, lock in zip(queues, mine, strict=True) if lock == beat.token), None)
            )
        return found

    def log_commands(
        self, keys: QueueKeys, job_id: str, logs: Sequence[dict[str, Any]]
    ) -> list[list[Arg]]:
        """BullMQ's addLog for each of a job's log lines."""
        return [
            self.call(
                "addLog",
                [keys.job(job_id), keys.job(job_id) + ":logs"],
                [job_id, self.log_line(entry), ""],
            )
            for entry in logs
        ]

    async def add_logs(self, keys: QueueKeys, job_id: str, logs: Sequence[dict[str, Any]]) -> None:
        if logs:
            await self.run(self.log_commands(keys, job_id, logs))

    async def progress(
        self,
        job_id: str,
        token: ClaimToken,
        progress: float | None,
        logs: Sequence[dict[str, Any]],
    ) -> bool:
        found = await self.locate(job_id)
        if found is None:
            return False
        queue, job_id = found
        keys = self.keys(queue)
        if await self._cmd("GET", keys.job(job_id) + ":lock") != token:
            return False
        await self.add_logs(keys, job_id, logs)
        if progress is not None:
            await self.run(
                [
                    self.call(
                        "updateProgress",
                        [keys.job(job_id), keys["events"], keys["meta"]],
                        [job_id, f"{progress:g}"],
                    )
                ]
            )
        return True

    # ------------------------------------------------------------------ recovery

    async def recover_expired(
        self, now: float | None, max_stalled: int, retention: Retention | None = None
    ) -> list[Job]:
        recovered: list[Job] = []
        for queue in await self.known_queues():
            keys = self.keys(queue)
            if now is not None:
                active = await self._cmd("LRANGE", keys["active"], 0, -1)
                expired = await self._expired_by(keys, active, now) if active else []
                gone = [i for i, out in zip(active, expired, strict=True) if out]
                if gone:
                    await self._cmd("DEL", *(keys.job(i) + ":lock" for i in gone))
            check = self.call(
                "moveStalledJobsToWait",
                keys.many("stalled wait active stalled-check meta paused marker events repeat"),
                [max_stalled, keys.base, now_ms(now), 1],
            )
            # BullMQ's check is two passes apart (the first marks the active
            # jobs, the next moves those whose lock is gone); both run here,
            # so a lease that expired is recovered now, not a check later.
            replies = await self.run(
                [("DEL", keys["stalled-check"]), check, ("DEL", keys["stalled-check"]), check]
            )
            stalled = [str(i) for i in [*(replies[1] or []), *(replies[3] or [])]]
            at = now_ms(now)
            ours: list[str] = []
            for job_id in stalled:
                self._forget(queue, job_id)
                if await self._after_stall(keys, job_id, at, max_stalled):
                    ours.append(job_id)
            found = await self.read_jobs([(queue, i) for i in ours])
            recovered += [job for job in found if job is not None]
        # Read last, so a claim that took one of the jobs above from under
        # `_after_stall` and has failed it is reported now; one still failing
        # it is reported by the next pass.
        failed_at_claim, self._failed_at_claim = self._failed_at_claim, []
        found = await self.read_jobs(failed_at_claim)
        recovered += [job for job in found if job is not None]
        return recovered

    async def _after_stall(self, keys: QueueKeys, job_id: str, at: int, max_stalled: int) -> bool:
        """Record the stalled attempt; end at once (rather than at BullMQ's
        next claim) a job stalled too often or whose cancel was asked. False
        when a claim took such a job first: the claimer fails it (BullMQ's
        deferred failure, the "defa" field) and reports it (a conveyor
        claim: through `_failed_at_claim`; a Node one: Node's events)."""
        attempts, stalls, cancel, started = await self._cmd(
            "HMGET", keys.job(job_id), "ats", "stc", CANCEL_REQUESTED, "processedOn"
        )
        error = f"lease expired at attempt {attempts} (worker lost)"
        await self.record_attempt(
            keys, job_id, AttemptOutcome.STALLED, at / 1000, error, attempts, started
        )
        await self._cmd("HDEL", keys.job(job_id), "processedOn")
        if cancel:
            return await self.fail_pending(keys, job_id, at, "cancelled", CANCELLED)
        if int(stalls or 0) > max_stalled:
            reason = (
                f"job stalled more than allowable limit: lease expired {stalls} times "
                f"(worker lost); max_stalled is {max_stalled}"
            )
            return await self.fail_pending(keys, job_id, at, reason)
        return True
