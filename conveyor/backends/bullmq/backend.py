"""The `bullmq://` backend: conveyor jobs stored in BullMQ's own Redis
layout, moved by BullMQ's own Lua scripts (scripts.py), so Node BullMQ
producers and workers share queues with conveyor's; a worker's claims and
completions run conveyor's batch scripts (batch_scripts.py), which do per
job what BullMQ's moveToActive and moveToFinished do, a batch per call.

Mapping: job name = BullMQ name, payload = `data` (JSON), idempotency key =
`jobId` (a job without a key gets conveyor's id as its jobId), job id =
jobId in the URL's queue and `<queue>:<jobId>` in the others (BullMQ's ids
are unique per queue only: layout.conveyor_id), retries =
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

from collections.abc import Sequence
from typing import Any

from conveyor.backends.base import Capabilities, NewJob
from conveyor.backends.bullmq.calls import packed, stamp_ms
from conveyor.backends.bullmq.finishing import BullFinishing
from conveyor.backends.bullmq.layout import (
    HEADERS_OPTION,
    TIMEOUT_OPTION,
    QueueKeys,
    conveyor_id,
)
from conveyor.backends.records import new_job
from conveyor.job import InvalidOptionError, Job, JobState

# BullMQ's largest priority (2^21).
MAX_PRIORITY = 2_097_152
HINT = "the bullmq:// backend keeps BullMQ's layout, which has no place for this"


class BullMQBackend(BullFinishing):
    capabilities = Capabilities(
        min_priority=0,
        keys_global=False,
        key_is_id=True,
        recurring=True,
        locks=True,
        cache=True,
        # A claim takes the head of the queue whatever its name (moveToActive).
        claims_by_name=False,
        claim_lanes=2,
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
        """The job as the add script stores it (as `job_from_hash` would read
        it: its times in whole milliseconds), without reading it back."""
        created, delay = stamp_ms(job.created_at), opts["delay"]
        return new_job(
            job,
            JobState.SCHEDULED if delay else JobState.QUEUED,
            created_at=created / 1000,
            run_at=(created + delay) / 1000,
            job_id=conveyor_id(job.queue, bull_id),
        )

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
        at: list[int] = []  # where each job's add script answers
        for job, opts in zip(jobs, options, strict=True):
            keys = self.keys(job.queue)
            if job.key is not None:
                # EXISTS first in the same pipeline: the add scripts answer a
                # repeated jobId with its id, as they do a new one. (A job
                # without a key has conveyor's fresh id: never a repeat.)
                commands.append(("EXISTS", keys.job(job.key)))
            at.append(len(commands))
            commands.append(self._add(job, keys, opts))
        replies = await self.run(commands)
        ids = [str(replies[index]) for index in at]
        # EXISTS said so, or the pipeline's EXISTS ran before an earlier add
        # of the same key in this batch: the job stored before is the answer.
        duplicate: list[bool] = []
        keyed: set[tuple[str, str]] = set()  # (queue, key) of the batch's earlier jobs
        for index, job in zip(at, jobs, strict=True):
            if job.key is None:
                duplicate.append(False)
                continue
            earlier = (job.queue, job.key) in keyed
            duplicate.append(bool(replies[index - 1]) or earlier)
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

    async def wait_for_work(
        self, queues: Sequence[str], timeout: float, *, names: Sequence[str] | None = None
    ) -> None:
        await self.wait_markers(queues, timeout)
