"""Throughput and failure rate over the last hour, per queue.

No backend keeps a time series of finished jobs, so this is computed from the
records they do keep: the newest completed and failed jobs of each queue
(at most `SCAN` of each), bucketed by `finished_at`. Retention bounds what
can be seen: with the default `keep_completed=1000`, a queue finishing more
than 1,000 jobs an hour shows the last 1,000. `complete` says whether the
scan reached back a full hour, so the page can say when it did not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from conveyor.job import Job, JobState

if TYPE_CHECKING:
    from conveyor.app import Conveyor

WINDOW = 3600.0  # seconds: the last hour
BUCKETS = 12  # of 5 minutes each
SCAN = 1000  # newest jobs read per queue and final state
PAGE = 250


@dataclass(slots=True)
class QueueActivity:
    """Finished jobs of one queue in the window, bucket by bucket (oldest first)."""

    completed: list[int]
    failed: list[int]
    complete: bool  # the scan saw every job finished in the window

    def to_dict(self, window_start: float) -> dict[str, Any]:
        done, failed = sum(self.completed), sum(self.failed)
        return {
            "window_start": window_start,
            "bucket_seconds": WINDOW / BUCKETS,
            "completed": self.completed,
            "failed": self.failed,
            "completed_total": done,
            "failed_total": failed,
            "failure_rate": failed / (done + failed) if done + failed else None,
            "complete": self.complete,
        }


async def last_hour(app: Conveyor, queue: str, now: float | None = None) -> dict[str, Any]:
    """The activity of `queue` over the hour before `now`, as plain data."""
    now = time.time() if now is None else now
    start = now - WINDOW
    completed, done_complete = await _bucketed(app, queue, JobState.COMPLETED, start)
    failed, failed_complete = await _bucketed(app, queue, JobState.FAILED, start)
    return QueueActivity(completed, failed, done_complete and failed_complete).to_dict(start)


async def _bucketed(
    app: Conveyor, queue: str, state: JobState, start: float
) -> tuple[list[int], bool]:
    counts = [0] * BUCKETS
    width = WINDOW / BUCKETS
    seen = 0
    while seen < SCAN:
        page = await app.list_jobs(state=state, queue=queue, limit=PAGE, offset=seen)
        for job in page:
            finished = _finished(job)
            if finished is not None and finished >= start:
                counts[min(int((finished - start) // width), BUCKETS - 1)] += 1
        seen += len(page)
        if len(page) < PAGE:
            return counts, True  # every job of this state was read
        # Newest first by creation: once a whole page was created before the
        # window, no older job can have finished inside it unless it waited
        # long (a delay or retries), which this view accepts to miss.
        if all(_created(job) < start for job in page):
            return counts, True
    return counts, False


def _finished(job: Job) -> float | None:
    return None if job.finished_at is None else job.finished_at.timestamp()


def _created(job: Job) -> float:
    return 0.0 if job.created_at is None else job.created_at.timestamp()
