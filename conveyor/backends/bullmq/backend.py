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
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from conveyor.backends.base import (
    Capabilities,
    NewJob,
    Outcome,
    OutcomeKind,
    Retention,
    attempt_outcome,
)
from conveyor.backends.bullmq.calls import (
    flat,
    history_with,
    millis,
    now_ms,
    packed,
    stamp_ms,
)
from conveyor.backends.bullmq.consume import BullConsumer, attempts_option
from conveyor.backends.bullmq.layout import (
    CANCEL_REQUESTED,
    CANCELLED,
    HEADERS_OPTION,
    HISTORY,
    TIMEOUT_OPTION,
    QueueKeys,
    job_from_hash,
)
from conveyor.backends.redis.resp import Arg
from conveyor.job import InvalidOptionError, Job, JobState

# BullMQ's largest priority (2^21).
MAX_PRIORITY = 2_097_152
HINT = "the bullmq:// backend keeps BullMQ's layout, which has no place for this"


def bull_backoff(opts_json: str | None, attempts_made: int) -> float | None:
    """The wait (seconds) before the next attempt that a job's own BullMQ
    `backoff` option asks for (a Node producer's `{type, delay}` or a number),
    as BullMQ computes it; None when it has none (conveyor's backoff rules)."""
    opts = json.loads(opts_json or "{}")
    backoff = opts.get("backoff")
    if isinstance(backoff, int | float):
        backoff = {"type": "fixed", "delay": backoff}
    if not isinstance(backoff, dict) or not isinstance(backoff.get("delay"), int | float):
        return None
    delay = float(backoff["delay"])
    if backoff.get("type") == "exponential":
        return float(round(2 ** (attempts_made - 1) * delay)) / 1000
    if backoff.get("type") == "fixed":
        return delay / 1000
    return None  # a custom backoff strategy lives in the Node worker's code


class BullMQBackend(BullConsumer):
    capabilities = Capabilities(
        min_priority=0,
        keys_global=False,
        key_is_id=True,
        recurring=True,
        locks=True,
        cache=True,
        # A claim takes the head of the queue whatever its name (moveToActive).
        claims_by_name=False,
        hint=HINT,
    )

    async def open(self) -> None:
        await super().open()
        try:
            await self.check_meta()
            await self.adopt_stored_schedules()
        except BaseException:
            # A refused open leaves nothing behind: the app never counts as
            # opened, so it would never close these connections.
            await self.close()
            raise

    # ------------------------------------------------------------------ producing

    @staticmethod
    def _opts(job: NewJob) -> dict[str, Any]:
        """The BullMQ `opts` of a job conveyor adds."""
        if job.priority < 0 or job.priority > MAX_PRIORITY:
            raise InvalidOptionError(
                f"a BullMQ priority runs from 0 (first) to {MAX_PRIORITY}, got {job.priority}"
            )
        # Due at run_at rounded up to the millisecond: the difference of the
        # two rounded instants, not the rounded difference (up to 2 ms late).
        delay = max(stamp_ms(job.run_at) - stamp_ms(job.created_at), 0)
        opts: dict[str, Any] = {"attempts": job.max_retries + 1, "delay": delay}
        if job.priority:
            opts["priority"] = job.priority
        if job.key is not None:
            opts["jobId"] = job.key
        if job.timeout is not None:
            opts[TIMEOUT_OPTION] = job.timeout
        if job.headers:
            opts[HEADERS_OPTION] = job.headers
        return opts

    @staticmethod
    def _added(job: NewJob, bull_id: str, opts: dict[str, Any]) -> Job:
        """The job as the add script stores it (the fields `job_from_hash`
        reads), without reading it back."""
        fields = {
            "name": job.name,
            "data": job.payload,
            "opts": json.dumps(opts),
            "timestamp": str(stamp_ms(job.created_at)),
            "delay": str(opts["delay"]),
            "priority": str(opts.get("priority", 0)),
        }
        state = JobState.SCHEDULED if opts["delay"] else JobState.QUEUED
        return job_from_hash(bull_id, job.queue, fields, state)

    def _add(self, job: NewJob, keys: QueueKeys, opts: dict[str, Any] | None = None) -> list[Any]:
        """The add script's call for `job`; `opts`: its `_opts`, when made already."""
        opts = self._opts(job) if opts is None else opts
        delay = opts["delay"]
        bull_id = job.key if job.key is not None else job.id
        args = [
            packed(
                [
                    keys.base,
                    bull_id,
                    job.name,
                    stamp_ms(job.created_at),
                    None,
                    None,
                    None,
                    None,
                    None,
                ]
            ),
            job.payload,
            packed(opts),
        ]
        if delay:
            return self.call(
                "addDelayedJob",
                keys.many("marker meta id delayed completed events"),
                args,
            )
        if job.priority:
            return self.call(
                "addPrioritizedJob",
                keys.many("marker meta id prioritized delayed completed active events pc"),
                args,
            )
        return self.call(
            "addStandardJob",
            keys.many("wait paused meta id completed delayed active events marker"),
            args,
        )

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[Job]:
        if not jobs:
            return []
        await self.note_queues({job.queue for job in jobs})
        commands: list[Sequence[Any]] = []
        options = [self._opts(job) for job in jobs]
        for job, opts in zip(jobs, options, strict=True):
            keys = self.keys(job.queue)
            bull_id = job.key if job.key is not None else job.id
            # EXISTS first in the same pipeline: the add scripts answer a
            # repeated jobId with its id, as they do a new one.
            commands += [("EXISTS", keys.job(bull_id)), self._add(job, keys, opts)]
        replies = await self.run(commands)
        ids = [str(replies[2 * index + 1]) for index in range(len(jobs))]
        # EXISTS said so, or the pipeline's EXISTS ran before an earlier add
        # of the same key in this batch: the job stored before is the answer.
        duplicate: list[bool] = []
        keyed: set[tuple[str, str]] = set()  # (queue, key) of the batch's earlier jobs
        for index, job in enumerate(jobs):
            earlier = job.key is not None and (job.queue, job.key) in keyed
            duplicate.append(bool(replies[2 * index]) or earlier)
            if job.key is not None:
                keyed.add((job.queue, job.key))
        wanted = [(job.queue, i) for job, i, d in zip(jobs, ids, duplicate, strict=True) if d]
        stored = iter(await self.read_jobs(wanted))
        out: list[Job] = []
        for index, job in enumerate(jobs):
            if not duplicate[index]:
                out.append(self._added(job, ids[index], options[index]))
                continue
            record = next(stored)
            if record is None:
                raise InvalidOptionError(f"BullMQ did not store job {ids[index]!r}")
            record.duplicate = True
            out.append(record)
        return out

    # ------------------------------------------------------------------ finishing

    def _outcome_command(
        self, keys: QueueKeys, o: Outcome, retention: Retention, history: str, attempts: int
    ) -> Any:
        """BullMQ's script for the outcome; the job's fields it updates (once
        the lock token is checked) carry the history with this attempt;
        `attempts` is the job's BullMQ attempts (for a failure's events)."""
        at = millis(o.at)
        if o.kind is OutcomeKind.COMPLETED:
            result = o.result or "null"
            keep = retention.keep_completed
            return self.finished(
                keys,
                o.job_id,
                o.token,
                "completed",
                result,
                keep,
                at,
                {"progress": "100", HISTORY: history},
            )
        failure = {"stacktrace": json.dumps([o.traceback] if o.traceback else []), HISTORY: history}
        if o.kind in (OutcomeKind.FAILED, OutcomeKind.CANCELLED):
            fields = {**failure, CANCELLED: "1"} if o.kind is OutcomeKind.CANCELLED else failure
            reason = o.error or o.kind.value
            return self.finished(
                keys,
                o.job_id,
                o.token,
                "failed",
                reason,
                retention.keep_failed,
                at,
                fields,
                attempts=attempts,
            )
        # SCHEDULED: a retry, counted as an attempt made; after its backoff
        # (moveToDelayed), or queued at once when it is already due (retryJob).
        now = time.time()
        delay = o.retry_in if o.retry_in is not None else (o.run_at or now) - now
        updates = flat({"failedReason": o.error or "", **failure})
        if delay <= 0:
            return self.call(
                "retryJob",
                [
                    *keys.many("active wait paused"),
                    keys.job(o.job_id),
                    *keys.many("meta events delayed prioritized pc marker"),
                    keys["stalled"],
                ],
                [keys.base, now_ms(None), "RPUSH", o.job_id, o.token, packed(updates)],
            )
        return self.call(
            "moveToDelayed",
            [
                *keys.many("marker active prioritized delayed"),
                keys.job(o.job_id),
                *keys.many("events meta stalled wait limiter pc"),
            ],
            [
                keys.base,
                stamp_ms(now),
                o.job_id,
                o.token,
                stamp_ms(delay),
                "0",
                packed(updates),
                "0",
            ],
        )

    async def finish(self, outcomes: Sequence[Outcome], retention: Retention) -> list[bool]:
        commands, slots = await self._outcome_commands(outcomes, retention)
        return self._accepted(outcomes, slots, await self.run(commands))

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
        """The outcomes' scripts go in the claim's first round trip."""
        commands, slots = await self._outcome_commands(outcomes, retention)
        replies, jobs = await self.claim_after(
            commands, queues, limit, lease, now, claim_id=claim_id, names=names
        )
        return self._accepted(outcomes, slots, replies), jobs

    async def _outcome_commands(
        self, outcomes: Sequence[Outcome], retention: Retention
    ) -> tuple[list[list[Arg]], list[bool | int]]:
        """One pipeline that ends `outcomes`: each one's log lines, then
        BullMQ's script for it. Per outcome, where its script's reply will be
        in that pipeline, or its answer when already known (no such job, a
        hand-back)."""
        commands: list[list[Arg]] = []
        slots: list[bool | int] = []
        for o in outcomes:
            queue = await self.queue_of(o.job_id)
            if queue is None:
                slots.append(False)
                continue
            keys = self.keys(queue)
            if o.kind is OutcomeKind.QUEUED:
                await self.add_logs(keys, o.job_id, o.logs)
                slots.append(await self.hand_back(keys, o.job_id, o.token, o.at))
                continue
            attempts = 0
            if o.kind is not OutcomeKind.COMPLETED:
                cancel, opts, made = await self._cmd(
                    "HMGET", keys.job(o.job_id), CANCEL_REQUESTED, "opts", "atm"
                )
                attempts = attempts_option(opts)
                wait = bull_backoff(opts, int(made or 0) + 1)
                if o.kind is OutcomeKind.SCHEDULED and cancel:
                    o = replace(o, kind=OutcomeKind.CANCELLED, error=o.error or "cancelled")
                elif o.kind is OutcomeKind.SCHEDULED and wait is not None:
                    o = replace(o, retry_in=wait)
            if o.progress is not None:
                await self.progress(o.job_id, o.token, o.progress, [])
            outcome = attempt_outcome(o.kind, timed_out=o.timed_out)
            fields = self._claim_fields.pop(o.job_id, None)
            if fields is None:  # claimed by another process, or another backend here
                history = await self.history_after(keys, o.job_id, outcome, o.at, o.error)
            else:
                history = history_with(fields, outcome, o.at, o.error)
            commands += self.log_commands(keys, o.job_id, o.logs)
            slots.append(len(commands))
            commands.append(self._outcome_command(keys, o, retention, history, attempts))
        return commands, slots

    def _accepted(
        self, outcomes: Sequence[Outcome], slots: Sequence[bool | int], replies: Sequence[Any]
    ) -> list[bool]:
        """Whether each outcome was taken: a script's negative answer is
        BullMQ's refusal (the lock token no longer holds, the job is gone)."""
        done: list[bool] = []
        for o, slot in zip(outcomes, slots, strict=True):
            if isinstance(slot, bool):
                done.append(slot)
                continue
            reply = replies[slot]
            ok = not isinstance(reply, int) or reply >= 0
            if ok:
                self._claimed.pop(o.job_id, None)
            done.append(ok)
        return done

    async def wait_for_work(
        self, queues: Sequence[str], timeout: float, *, names: Sequence[str] | None = None
    ) -> None:
        await self.wait_markers(queues, timeout)
