"""The `bullmq://` backend: conveyor jobs stored in BullMQ's own Redis
layout, moved by BullMQ's own Lua scripts (scripts.py), so Node BullMQ
producers and workers share queues with conveyor's.

Mapping: job name = BullMQ name, payload = `data` (JSON), idempotency key =
`jobId` (a job without a key gets conveyor's id as its jobId), retries =
`attempts - 1`, a delay = `delay`, priority = `priority` (0 = BullMQ's
unprioritised, which it runs first: conveyor's lowest number, so the orders
agree; negative priorities do not exist there), lease = lock duration, claim
token = lock token, heartbeat = extendLock, result = `returnvalue`, error
and traceback = `failedReason` and the last `stacktrace` entry, progress =
`progress`, ctx.log lines = the job's log list (as JSON text), lease expiry
recovery = BullMQ's stalled-jobs check (two passes, as in BullMQ: a job
whose lock expired is moved back at the next check, and one stalled more than
`max_stalled` times is failed when next claimed, BullMQ's deferred failure).

Which clock decides: BullMQ's scripts take the caller's time (Node passes
Date.now()), so this backend passes this host's time (or an explicit `now`),
except that lock and stalled-check expiry are Redis's own PX timers, which an
explicit `now` cannot move: `driven_clock` is False.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from conveyor.backends.base import (
    Capabilities,
    ClaimToken,
    Heartbeat,
    LeaseStatus,
    NewJob,
    Outcome,
    OutcomeKind,
    Retention,
    attempt_outcome,
)
from conveyor.backends.bullmq.admin import BullAdmin
from conveyor.backends.bullmq.calls import flat, millis, now_ms, packed
from conveyor.backends.bullmq.layout import (
    CANCEL_REQUESTED,
    CANCELLED,
    TIMEOUT_OPTION,
    QueueKeys,
    job_from_hash,
    pairs,
)
from conveyor.backends.bullmq.own_scripts import ADVANCE_SCHEDULE
from conveyor.job import AttemptOutcome, InvalidOptionError, Job, JobState

# BullMQ's largest priority (2^21).
MAX_PRIORITY = 2_097_152
# How conveyor names itself where BullMQ's scripts record a worker's name.
WORKER = "conveyor"
HINT = "the bullmq:// backend keeps BullMQ's layout, which has no place for this"


class BullMQBackend(BullAdmin):
    capabilities = Capabilities(
        min_priority=0,
        recurring=True,
        locks=True,
        cache=True,
        # A claim takes the head of the queue whatever its name (moveToActive).
        claims_by_name=False,
        # Locks and the stalled check expire on Redis's timers.
        driven_clock=False,
        hint=HINT,
    )

    async def open(self) -> None:
        await super().open()
        await self.check_meta()

    # ------------------------------------------------------------------ producing

    def _add(self, job: NewJob, keys: QueueKeys) -> list[Any]:
        if job.priority < 0 or job.priority > MAX_PRIORITY:
            raise InvalidOptionError(
                f"BullMQ priorities run from 0 (first) to {MAX_PRIORITY}, got {job.priority}"
            )
        delay = max(millis(job.run_at - job.created_at), 0)
        opts: dict[str, Any] = {"attempts": job.max_retries + 1, "delay": delay}
        if job.priority:
            opts["priority"] = job.priority
        if job.key is not None:
            opts["jobId"] = job.key
        if job.timeout is not None:
            opts[TIMEOUT_OPTION] = job.timeout
        bull_id = job.key if job.key is not None else job.id
        args = [
            packed(
                [keys.base, bull_id, job.name, millis(job.created_at), None, None, None, None, None]
            ),
            job.payload,
            packed(opts),
        ]
        if delay:
            return self.call(
                "addDelayedJob",
                keys.many("marker", "meta", "id", "delayed", "completed", "events"),
                args,
            )
        if job.priority:
            return self.call(
                "addPrioritizedJob",
                keys.many(
                    "marker",
                    "meta",
                    "id",
                    "prioritized",
                    "delayed",
                    "completed",
                    "active",
                    "events",
                    "pc",
                ),
                args,
            )
        return self.call(
            "addStandardJob",
            keys.many(
                "wait",
                "paused",
                "meta",
                "id",
                "completed",
                "delayed",
                "active",
                "events",
                "marker",
            ),
            args,
        )

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[Job]:
        if not jobs:
            return []
        await self.note_queues({job.queue for job in jobs})
        commands: list[Sequence[Any]] = []
        for job in jobs:
            keys = self.keys(job.queue)
            bull_id = job.key if job.key is not None else job.id
            # EXISTS first in the same pipeline: the add scripts answer a
            # repeated jobId with its id, as they do a new one.
            commands += [("EXISTS", keys.job(bull_id)), self._add(job, keys)]
        replies = await self.run(commands)
        ids = [str(replies[2 * index + 1]) for index in range(len(jobs))]
        records = await self.read_jobs([(job.queue, i) for job, i in zip(jobs, ids, strict=True)])
        out: list[Job] = []
        for index, (job, record) in enumerate(zip(jobs, records, strict=True)):
            if record is None:
                raise InvalidOptionError(f"BullMQ did not store job {ids[index]!r}")
            # EXISTS said so, or the pipeline's EXISTS ran before an earlier
            # add of the same key in this batch.
            record.duplicate = bool(replies[2 * index]) or any(
                earlier.key is not None and earlier.key == job.key and earlier.queue == job.queue
                for earlier in jobs[:index]
            )
            out.append(record)
        return out

    # ------------------------------------------------------------------ consuming

    def _move_to_active(self, keys: QueueKeys, token: str, lease: float, at: int) -> list[Any]:
        return self.call(
            "moveToActive",
            keys.many(
                "wait",
                "active",
                "prioritized",
                "events",
                "stalled",
                "limiter",
                "delayed",
                "paused",
                "meta",
                "pc",
                "marker",
            ),
            [
                keys.base,
                at,
                packed({"token": token, "lockDuration": millis(lease), "name": "conveyor"}),
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
        token = claim_id or uuid.uuid4().hex
        await self.note_queues(queues)
        claimed: list[Job] = []
        for queue in queues:
            wanted = limit - len(claimed)
            if wanted <= 0:
                break
            keys = self.keys(queue)
            at = now_ms(now)
            replies = await self.run([self._move_to_active(keys, token, lease, at)] * wanted)
            for reply in replies:
                if not reply or not isinstance(reply[0], list) or not reply[0]:
                    continue
                job_id, fields = str(reply[1]), pairs(reply[0])
                if fields.get("defa"):
                    # Stalled too often: BullMQ defers the failure to the next claim.
                    await self._fail_deferred(keys, job_id, token, fields["defa"], at)
                    continue
                self._claimed[job_id] = queue
                claimed.append(job_from_hash(job_id, queue, fields, JobState.RUNNING, token=token))
        return claimed

    async def _fail_deferred(
        self, keys: QueueKeys, job_id: str, token: str, reason: str, at: int
    ) -> None:
        await self.run([self._finished(keys, job_id, token, "failed", reason, None, at, -1)])

    async def unclaim(self, claim_id: str, now: float | None = None) -> int:
        handed = 0
        for queue in await self.known_queues():
            keys = self.keys(queue)
            active = await self._cmd("LRANGE", keys["active"], 0, -1)
            if not active:
                continue
            locks = await self.run([("GET", keys.job(i) + ":lock") for i in active])
            for job_id, lock in zip(active, locks, strict=True):
                if lock == claim_id and await self._hand_back(keys, job_id, claim_id):
                    handed += 1
        return handed

    async def _hand_back(self, keys: QueueKeys, job_id: str, token: str) -> bool:
        replies = await self.run(
            [
                self.call(
                    "moveJobFromActiveToWait",
                    keys.many(
                        "active",
                        "wait",
                        "stalled",
                        "paused",
                        "meta",
                        "limiter",
                        "prioritized",
                        "marker",
                        "events",
                    ),
                    [job_id, token, keys.job(job_id)],
                )
            ]
        )
        if int(replies[0]) < 0:
            return False
        await self.record_attempt(keys, job_id, AttemptOutcome.HANDED_BACK, time.time(), None)
        # A hand-back does not count as an attempt (moveToActive counted it).
        await self._cmd("HINCRBY", keys.job(job_id), "ats", -1)
        self._claimed.pop(job_id, None)
        return True

    async def heartbeat(
        self, beats: Sequence[Heartbeat], lease: float, now: float | None = None
    ) -> list[LeaseStatus]:
        statuses: list[LeaseStatus] = []
        for beat in beats:
            queue = await self.queue_of(beat.job_id)
            if queue is None:
                statuses.append(LeaseStatus.LOST)
                continue
            keys = self.keys(queue)
            commands: list[Sequence[Any]] = [
                self.call(
                    "extendLock",
                    [keys.job(beat.job_id) + ":lock", keys["stalled"]],
                    [beat.token, millis(lease), beat.job_id],
                ),
                ("HGET", keys.job(beat.job_id), CANCEL_REQUESTED),
            ]
            extended, cancel = (await self.run(commands))[:2]
            if not int(extended):
                statuses.append(LeaseStatus.LOST)
                continue
            await self._add_logs(keys, beat.job_id, beat.logs)
            statuses.append(LeaseStatus.CANCEL if cancel else LeaseStatus.HELD)
        return statuses

    async def _add_logs(self, keys: QueueKeys, job_id: str, logs: Sequence[dict[str, Any]]) -> None:
        if logs:
            await self.run(
                [
                    self.call(
                        "addLog",
                        [keys.job(job_id), keys.job(job_id) + ":logs"],
                        [job_id, self.log_line(entry), ""],
                    )
                    for entry in logs
                ]
            )

    async def progress(
        self,
        job_id: str,
        token: ClaimToken,
        progress: float | None,
        logs: Sequence[dict[str, Any]],
    ) -> bool:
        queue = self._claimed.get(job_id) or await self.queue_of(job_id)
        if queue is None:
            return False
        keys = self.keys(queue)
        if await self._cmd("GET", keys.job(job_id) + ":lock") != token:
            return False
        await self._add_logs(keys, job_id, logs)
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

    # ------------------------------------------------------------------ finishing

    def _finished(
        self,
        keys: QueueKeys,
        job_id: str,
        token: str,
        target: str,
        value: str,
        keep: int | None,
        at: int,
        attempts: int,
        fields: dict[str, str] | None = None,
    ) -> list[Any]:
        opts = {
            "token": token,
            "keepJobs": {"count": -1 if keep is None else keep},
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
                *keys.many(
                    "wait",
                    "active",
                    "prioritized",
                    "events",
                    "stalled",
                    "limiter",
                    "delayed",
                    "paused",
                    "meta",
                    "pc",
                    target,
                ),
                keys.job(job_id),
                keys["metrics:" + target],
                keys["marker"],
            ],
            args,
        )

    def _outcome_command(self, keys: QueueKeys, o: Outcome, retention: Retention) -> list[Any]:
        at = millis(o.at)
        failure = {"stacktrace": json.dumps([o.traceback] if o.traceback else [])}
        if o.kind is OutcomeKind.COMPLETED:
            return self._finished(
                keys,
                o.job_id,
                o.token,
                "completed",
                o.result or "null",
                retention.keep_completed,
                at,
                0,
            )
        if o.kind is OutcomeKind.FAILED:
            return self._finished(
                keys,
                o.job_id,
                o.token,
                "failed",
                o.error or "failed",
                retention.keep_failed,
                at,
                0,
                failure,
            )
        if o.kind is OutcomeKind.CANCELLED:
            return self._finished(
                keys,
                o.job_id,
                o.token,
                "failed",
                o.error or "cancelled",
                retention.keep_failed,
                at,
                0,
                {**failure, CANCELLED: "1"},
            )
        # SCHEDULED: a retry after its backoff (counted as an attempt made).
        now = time.time()
        delay = o.retry_in if o.retry_in is not None else max((o.run_at or now) - now, 0.0)
        return self.call(
            "moveToDelayed",
            [
                *keys.many("marker", "active", "prioritized", "delayed"),
                keys.job(o.job_id),
                *keys.many("events", "meta", "stalled", "wait", "limiter", "pc"),
            ],
            [
                keys.base,
                now_ms(None),
                o.job_id,
                o.token,
                millis(delay),
                "0",
                packed(
                    [x for pair in {"failedReason": o.error or "", **failure}.items() for x in pair]
                ),
                "0",
            ],
        )

    async def finish(self, outcomes: Sequence[Outcome], retention: Retention) -> list[bool]:
        done: list[bool] = []
        for o in outcomes:
            queue = await self.queue_of(o.job_id)
            if queue is None:
                done.append(False)
                continue
            keys = self.keys(queue)
            await self._add_logs(keys, o.job_id, o.logs)
            if o.kind is OutcomeKind.QUEUED:
                cancel = await self._cmd("HGET", keys.job(o.job_id), CANCEL_REQUESTED)
                if not cancel:
                    done.append(await self._hand_back(keys, o.job_id, o.token))
                    continue
                o = replace(o, kind=OutcomeKind.CANCELLED, error=o.error or "cancelled")
            elif o.kind is OutcomeKind.SCHEDULED and await self._cmd(
                "HGET", keys.job(o.job_id), CANCEL_REQUESTED
            ):
                o = replace(o, kind=OutcomeKind.CANCELLED)
            if o.progress is not None:
                await self.progress(o.job_id, o.token, o.progress, [])
            (reply,) = await self.run([self._outcome_command(keys, o, retention)])
            ok = not isinstance(reply, int) or reply >= 0
            if ok:
                self._claimed.pop(o.job_id, None)
                outcome = attempt_outcome(o.kind, timed_out=o.timed_out)
                await self.record_attempt(keys, o.job_id, outcome, o.at, o.error)
            done.append(ok)
        return done

    async def recover_expired(
        self, now: float | None, max_stalled: int, retention: Retention | None = None
    ) -> list[Job]:
        recovered: list[Job] = []
        for queue in await self.known_queues():
            keys = self.keys(queue)
            (stalled,) = await self.run(
                [
                    self.call(
                        "moveStalledJobsToWait",
                        keys.many(
                            "stalled",
                            "wait",
                            "active",
                            "stalled-check",
                            "meta",
                            "paused",
                            "marker",
                            "events",
                            "repeat",
                        ),
                        # The check runs each time it is asked (1 ms guard), unless a
                        # Node worker's stalled-check interval still holds it off.
                        [max_stalled, keys.base, now_ms(now), 1],
                    )
                ]
            )
            at = now_ms(now)
            for job_id in map(str, stalled or []):
                self._claimed.pop(job_id, None)
                await self._after_stall(keys, job_id, at, max_stalled)
            found = await self.read_jobs([(queue, str(i)) for i in stalled or []])
            recovered += [job for job in found if job is not None]
        return recovered

    # ------------------------------------------------------------------ schedules

    async def schedule_fire(
        self,
        name: str,
        expected_next_run: float,
        next_run: float,
        last_run: float | None,
        last_error: str | None,
        jobs: Sequence[NewJob],
    ) -> list[Job] | None:
        """Compare-and-set the tick, then add its jobs with BullMQ's scripts.
        Two steps, not one: BullMQ's adds cannot run inside conveyor's script.
        A crash between them loses that tick's jobs (never doubles them)."""
        won = await self._cmd(
            "EVAL",
            ADVANCE_SCHEDULE,
            2,
            self._schedule_key(name),
            f"{self.prefix}:schedules:due",
            repr(expected_next_run),
            repr(next_run),
            "" if last_run is None else repr(last_run),
            last_error or "",
            name,
        )
        if not int(won):
            return None
        return await self.enqueue(jobs)

    async def _after_stall(self, keys: QueueKeys, job_id: str, at: int, max_stalled: int) -> None:
        """Record the stalled attempt; end at once (rather than at BullMQ's
        next claim) a job stalled too often or whose cancel was asked."""
        attempts, stalls, cancel = await self._cmd(
            "HMGET", keys.job(job_id), "ats", "stc", CANCEL_REQUESTED
        )
        await self.record_attempt(
            keys,
            job_id,
            AttemptOutcome.STALLED,
            at / 1000,
            f"lease expired at attempt {attempts} (worker lost)",
        )
        if cancel:
            await self.fail_pending(keys, job_id, at, "cancelled", CANCELLED)
        elif int(stalls or 0) > max_stalled:
            reason = (
                f"job stalled more than allowable limit: lease expired {stalls} times "
                f"(worker lost); max_stalled is {max_stalled}"
            )
            await self.fail_pending(keys, job_id, at, reason)

    async def wait_for_work(
        self, queues: Sequence[str], timeout: float, *, names: Sequence[str] | None = None
    ) -> None:
        await self.wait_markers(queues, timeout)
