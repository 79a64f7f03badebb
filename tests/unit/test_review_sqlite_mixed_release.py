"""Review: a SQLite file shared, during a rolling deploy, with a worker of the
previous release (schema version 1) that still has it open.

The version-1 worker claims with its own statement (below, as that release
ran it): it fences by the attempt count and never touches the `token`
column the upgrade added. So a token the new code leaves behind on a job that
stops running is still in place when the old worker claims the job, and the
new worker's late outcome under that token matches the old worker's claim.
The Redis scripts clear the token wherever a job stops running for exactly
this reason (library.lua, `finalize`); SQLite must do the same.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from conveyor.backends.base import NewJob, Outcome, OutcomeKind, Retention
from conveyor.backends.sqlite import SQLiteBackend
from conveyor.job import JobState, new_job_id

pytestmark = pytest.mark.sqlite

# The claim statement of the previous release (schema version 1), one queue:
# it sets no token.
_V1_CLAIM = (
    "UPDATE conveyor_jobs SET state = 'running', attempts = attempts + 1, started_at = ?1,"
    " lease_until = ?2, cancel_requested = 0 WHERE seq IN ("
    "SELECT seq FROM conveyor_jobs INDEXED BY conveyor_jobs_claim"
    " WHERE state = 'queued' AND queue = ?4 ORDER BY priority, run_at, seq LIMIT ?3)"
    " RETURNING id, attempts"
)


def _new_job() -> NewJob:
    now = time.time()
    return NewJob(
        id=new_job_id(),
        name="task",
        queue="default",
        payload=json.dumps({"n": 1}),
        priority=0,
        max_retries=3,
        timeout=30.0,
        key=None,
        created_at=now,
        run_at=now,
    )


def _v1_claim(path: Path, now: float) -> list[tuple[str, int]]:
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute("BEGIN IMMEDIATE")
        rows = raw.execute(_V1_CLAIM, (now, now + 30, 1, "default")).fetchall()
        raw.execute("COMMIT")
        return [(row[0], row[1]) for row in rows]
    finally:
        raw.close()


@pytest.mark.parametrize("how", ["handed back", "recovered", "unclaimed", "retried"])
async def test_a_token_left_behind_fences_in_a_claim_of_the_previous_release(
    tmp_path: Path, how: str
) -> None:
    """SQLite keeps a job's last claim token after a hand-back, recovery, unclaim
    or retry, so a claim by a still-running version-1 worker inherits it and the
    new worker's late COMPLETED under that token is accepted over the live claim."""
    path = tmp_path / "jobs.db"
    b = SQLiteBackend(f"sqlite:///{path}")
    await b.open()
    try:
        [job] = await b.enqueue([_new_job()])
        now = time.time()
        [mine] = await b.claim(["default"], 1, 30, now, claim_id="new-worker/1")
        assert mine.token == "new-worker/1"
        later = now
        if how == "handed back":
            out = Outcome(job.id, mine.token, OutcomeKind.QUEUED, now)
            assert await b.finish([out], Retention()) == [True]
        elif how == "recovered":
            later = now + 60
            [back] = await b.recover_expired(later, max_stalled=5)
            assert back.state is JobState.QUEUED
        elif how == "unclaimed":
            assert await b.unclaim("new-worker/1", now) == 1
        else:
            retry = Outcome(job.id, mine.token, OutcomeKind.SCHEDULED, now, run_at=now, error="x")
            assert await b.finish([retry], Retention()) == [True]
        # The previous release's worker, still running, claims the job.
        assert [row[0] for row in _v1_claim(path, later + 1)] == [job.id]
        # The new worker's late (resent) result under its old token.
        late = Outcome(job.id, mine.token, OutcomeKind.COMPLETED, later + 2, result="1")
        accepted = await b.finish([late], Retention())
        stored = await b.get(job.id)
        assert stored is not None
        assert accepted == [False], (
            f"a late result of a claim that ended ({how}) was accepted over the live claim "
            f"of a version-1 worker: the job is now {stored.state.value}"
        )
        assert stored.state is JobState.RUNNING
    finally:
        await b.close()
