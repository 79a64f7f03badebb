"""`app.drain()`: run every due job to completion in this event loop, with an
in-process worker in burst mode, so tests and scripts go through the very
code that runs jobs in production (claims and their fencing tokens,
timeouts, retries and their backoff, events, acknowledgements)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from conveyor.job import InvalidOptionError, Job
from conveyor.worker.core import Worker
from conveyor.worker.settings import WorkerSettings

if TYPE_CHECKING:
    from conveyor.app import Conveyor


async def drain(
    app: Conveyor, queues: Sequence[str] | None = None, concurrency: int = 1
) -> list[Job]:
    """Run what is due in `queues` (None: every queue the app's job types
    use) until nothing is: jobs enqueued by the jobs that run and retries
    whose backoff has passed run too, schedules due now fire once. Return
    the final record of each job that ran, in the order they first started.

    The worker's settings are given here in full, never read from the
    environment: a `CONVEYOR_QUEUES` in a developer's shell does not change
    what a test drains."""
    if isinstance(queues, str):
        raise InvalidOptionError(f"queues must be a list of names, got the string {queues!r}")
    settings = WorkerSettings(
        concurrency=concurrency, queues=tuple(queues) if queues is not None else None, burst=True
    )
    worker = Worker(
        app.backend,
        app.registry,
        app.events,
        settings,
        retention=app.retention,
        open=app.open_for_work,  # schedules due now fire, @app.cron ones too
    )
    await worker.run_burst()
    ran = []
    for job_id in worker.ran:
        # Read back, so the record is the stored one; a job the backend no
        # longer keeps (trimmed by keep_completed) is left out.
        job = await app.get_job(job_id)
        if job is not None:
            ran.append(job)
    return ran
