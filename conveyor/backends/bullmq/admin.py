"""Looking at and administering jobs in BullMQ's layout: get, list, stats,
cancel and retry, by BullMQ's own sets and scripts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace

from conveyor.backends.base import CancelResult
from conveyor.backends.bullmq.calls import BullConnection, now_ms
from conveyor.backends.bullmq.layout import CANCEL_REQUESTED, CANCELLED, QueueKeys, bull_id
from conveyor.job import Job, JobState

# Where each conveyor state's jobs are listed (cancelled ones sit in `failed`).
_LISTS: dict[JobState, tuple[str, ...]] = {
    JobState.QUEUED: ("wait", "paused", "prioritized"),
    JobState.SCHEDULED: ("delayed",),
    JobState.RUNNING: ("active",),
    JobState.COMPLETED: ("completed",),
    JobState.FAILED: ("failed",),
    JobState.CANCELLED: ("failed",),
}
_SORTED_SETS = frozenset({"prioritized", "delayed", "completed", "failed"})


class BullAdmin(BullConnection):
    async def get(self, job_id: str) -> Job | None:
        return await self.find(job_id)

    async def get_by_key(self, key: str) -> Job | None:
        # A key is the BullMQ jobId.
        job = await self.find(key)
        return job if job is not None and job.key == key else None

    async def _ids(self, keys: QueueKeys, suffix: str, upto: int) -> list[str]:
        """The newest `upto` ids of one of the queue's lists or sets (0: all)."""
        if suffix in _SORTED_SETS:
            ids: list[str] = await self._cmd("ZREVRANGE", keys[suffix], 0, upto - 1)
        else:
            ids = await self._cmd("LRANGE", keys[suffix], 0, upto - 1)
        return ids

    async def list_jobs(
        self,
        *,
        state: JobState | None,
        name: str | None,
        queue: str | None,
        limit: int,
        offset: int,
    ) -> list[Job]:
        queues = [queue] if queue is not None else await self.known_queues()
        states = [state] if state is not None else list(_LISTS)
        suffixes = list(dict.fromkeys(s for st in states for s in _LISTS[st]))
        wanted: list[tuple[str, str]] = []
        for q in queues:
            for suffix in suffixes:
                wanted += [(q, i) for i in await self._ids(self.keys(q), suffix, offset + limit)]
        jobs = [job for job in await self.read_jobs(wanted) if job is not None]
        jobs = [
            job
            for job in jobs
            if (state is None or job.state is state) and (name is None or job.name == name)
        ]
        # Newest first; within a millisecond by id (conveyor's sort by creation).
        jobs.sort(
            key=lambda job: (job.created_at is not None, job.created_at, job.id), reverse=True
        )
        return jobs[offset : offset + limit]

    async def cancel(self, job_id: str, now: float | None = None) -> CancelResult:
        job = await self.find(job_id)
        if job is None:
            return CancelResult.NOT_FOUND
        if job.is_final:
            return CancelResult.FINAL
        keys, bull = self.keys(job.queue), bull_id(job.queue, job.id)
        if job.state is JobState.RUNNING:
            await self._cmd("HSET", keys.job(bull), CANCEL_REQUESTED, "1")
            return CancelResult.REQUESTED
        if await self.fail_pending(keys, bull, now_ms(now), "cancelled", CANCELLED):
            return CancelResult.CANCELLED
        return await self.cancel(job.id, now)  # it moved on meanwhile: look again

    async def retry(self, job_id: str, now: float | None = None) -> Job | None:
        job = await self.find(job_id)
        if job is None or job.state not in (JobState.FAILED, JobState.CANCELLED):
            return None
        keys, job_id = self.keys(job.queue), bull_id(job.queue, job.id)
        # Exactly one more attempt (BullMQ's `attempts` counts them all); a
        # cancelled job resumes with what it had left, at least one. Set
        # before the job is back in line, where a worker may take it at once.
        retries = job.attempts
        if job.state is JobState.CANCELLED:
            retries = max(job.max_retries, job.attempts)
        opts = json.loads(await self._cmd("HGET", keys.job(job_id), "opts") or "{}")
        opts["attempts"] = retries + 1
        reprocess = self.call(
            "reprocessJob",
            [
                keys.job(job_id),
                keys["events"],
                keys["failed"],
                *keys.many("wait meta active marker prioritized pc"),
            ],
            [job_id, "LPUSH", "failedReason", "failed", "0", "0"],
        )
        replies = await self.run(
            [
                ("HSET", keys.job(job_id), "opts", json.dumps(opts)),
                ("HDEL", keys.job(job_id), CANCELLED, CANCEL_REQUESTED),
                reprocess,
            ]
        )
        if int(replies[-1]) != 1:
            return None
        return replace(
            job, state=JobState.QUEUED, max_retries=retries, error=None, finished_at=None
        )

    async def stats(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for queue in await self.known_queues():
            keys = self.keys(queue)
            wait, paused, prioritized, delayed, active, completed, failed = await self.run(
                [
                    ("LLEN", keys["wait"]),
                    ("LLEN", keys["paused"]),
                    ("ZCARD", keys["prioritized"]),
                    ("ZCARD", keys["delayed"]),
                    ("LLEN", keys["active"]),
                    ("ZCARD", keys["completed"]),
                    ("ZCARD", keys["failed"]),
                ]
            )
            counts = dict.fromkeys((s.value for s in JobState), 0)
            counts[JobState.QUEUED.value] = wait + paused + prioritized
            counts[JobState.SCHEDULED.value] = delayed
            counts[JobState.RUNNING.value] = active
            counts[JobState.COMPLETED.value] = completed
            # Cancelled jobs sit in `failed`, marked.
            failed_ids = await self._ids(keys, "failed", 0)
            marks = await self.run([("HEXISTS", keys.job(i), CANCELLED) for i in failed_ids])
            cancelled = sum(int(mark) for mark in marks)
            counts[JobState.FAILED.value] = failed - cancelled
            counts[JobState.CANCELLED.value] = cancelled
            out[queue] = counts
        return out

    async def purge(
        self, states: Sequence[JobState], older_than: float | None, queue: str | None
    ) -> int:
        """Remove with BullMQ's removeJob (every key of the job) the jobs in
        `states` finished (pending ones: made) before `older_than`."""
        wanted = [s for s in states if s is not JobState.RUNNING]
        queues = [queue] if queue is not None else await self.known_queues()
        ids: list[tuple[str, str]] = []
        for q in queues:
            for suffix in dict.fromkeys(x for s in wanted for x in _LISTS[s]):
                ids += [(q, i) for i in await self._ids(self.keys(q), suffix, 0)]
        doomed = []
        for job in await self.read_jobs(ids):
            if job is None or job.state not in wanted:
                continue
            when = job.finished_at if job.is_final else job.created_at
            if older_than is None or (when is not None and when.timestamp() < older_than):
                doomed.append(job)
        commands = []
        for job in doomed:
            keys, job_id = self.keys(job.queue), bull_id(job.queue, job.id)
            commands.append(
                self.call("removeJob", [keys.job(job_id), keys["repeat"]], [job_id, 0, keys.base])
            )
        replies = await self.run(commands)
        return sum(1 for reply in replies if int(reply) == 1)

    async def queued_by_name(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for queue in await self.known_queues():
            keys = self.keys(queue)
            ids: list[str] = []
            for suffix in _LISTS[JobState.QUEUED]:
                ids += await self._ids(keys, suffix, 0)
            names = await self.run([("HGET", keys.job(i), "name") for i in ids])
            for name in names:
                if name is not None:
                    counts = out.setdefault(queue, {})
                    counts[name] = counts.get(name, 0) + 1
        return out

    # ------------------------------------------------------------------ pauses
    # BullMQ's own pause, not the Redis backend's set: the `paused` field of
    # the queue's meta hash, which BullMQ's claim script (moveToActive)
    # honours. So a pause from conveyor stops Node's workers too and Node
    # (queue.isPaused(), Bull Board) shows it, and a pause made in Node is
    # one conveyor lists and lifts.

    async def pause_queue(self, queue: str) -> bool:
        return await self._set_paused(queue, True)

    async def resume_queue(self, queue: str) -> bool:
        return await self._set_paused(queue, False)

    async def paused_queues(self) -> set[str]:
        queues = await self.known_queues()
        flags = await self.run([("HEXISTS", self.keys(q)["meta"], "paused") for q in queues])
        return {queue for queue, flag in zip(queues, flags, strict=True) if int(flag)}

    async def _set_paused(self, queue: str, paused: bool) -> bool:
        """False when the queue already was so. The read and the script are
        two steps: two callers racing may both answer True, which changes
        nothing but that answer."""
        await self.note_queues([queue])
        keys = self.keys(queue)
        if bool(int(await self._cmd("HEXISTS", keys["meta"], "paused"))) is paused:
            return False
        # As Node's Queue.pause/resume call it: jobs move from `src` to `dst`
        # on resume only (the legacy `paused` list), an event either way.
        src, dst = ("wait", "paused") if paused else ("paused", "wait")
        script_keys = [keys[src], keys[dst], *keys.many("meta prioritized events delayed marker")]
        await self.run([self.call("pause", script_keys, ["paused" if paused else "resumed", "1"])])
        return True
