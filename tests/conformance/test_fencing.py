"""Claim tokens and lost claims (issue 7, points 1 and 9).

A claim's fencing token never repeats for a job, not even after a hand-back
(which does not count an attempt): a worker that handed a job back cannot
finish, heartbeat or report progress on the next worker's claim. And a claim
whose reply never reached the worker is undone with `unclaim`, so the jobs it
leased go back to the queue without a stall counted against them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from conveyor import Conveyor, JobContext, JobState
from conveyor.backends import from_url
from conveyor.backends.base import Heartbeat, LeaseStatus, Outcome, OutcomeKind, Retention
from conveyor.backends.optional import BlockingClaim, FinishAndClaim

from .conftest import MakeApp, needs
from .helpers import WAIT, eventually

pytestmark = needs("lookup")

Q = ["default"]
KEEP_ALL = Retention(keep_completed=None, keep_failed=None)


def register_noop(app: Conveyor) -> None:
    @app.job("work", retries=3)
    async def work(payload: Any) -> str:
        return "ran"


async def enqueue_one(app: Conveyor) -> str:
    register_noop(app)
    job = await app.enqueue("work", {"n": 1})
    return job.id


async def test_late_outcome_of_a_handed_back_claim_is_refused(app: Conveyor) -> None:
    """Worker A claims and hands the job back (shutdown); worker B claims it.
    A's late COMPLETED (a resent acknowledgement, a sync handler finishing
    after the hand-back) must not take B's claim away."""
    job_id = await enqueue_one(app)
    backend = app.backend
    t0 = time.time()
    (a,) = await backend.claim(Q, 1, 30.0, t0)
    assert a.token is not None
    back = Outcome(job_id, a.token, OutcomeKind.QUEUED, t0 + 1)
    assert await backend.finish([back], KEEP_ALL) == [True]
    assert (await app.get_job(job_id)).attempts == 0  # a hand-back does not count

    (b,) = await backend.claim(Q, 1, 30.0, t0 + 2)
    assert b.id == job_id
    assert b.attempts == 1
    assert b.token is not None and b.token != a.token

    late = Outcome(job_id, a.token, OutcomeKind.COMPLETED, t0 + 3, result='"from A"')
    assert await backend.finish([late], KEEP_ALL) == [False]
    assert await backend.heartbeat([Heartbeat(b.id, b.token)], 30.0, t0 + 4) == [LeaseStatus.HELD]
    done = Outcome(job_id, b.token, OutcomeKind.COMPLETED, t0 + 5, result='"from B"')
    assert await backend.finish([done], KEEP_ALL) == [True]

    final = await app.get_job(job_id)
    assert final.state is JobState.COMPLETED
    assert final.result == "from B"
    assert final.attempts == 1


async def test_heartbeat_and_progress_of_a_handed_back_claim_are_refused(app: Conveyor) -> None:
    job_id = await enqueue_one(app)
    backend = app.backend
    t0 = time.time()
    (a,) = await backend.claim(Q, 1, 30.0, t0)
    assert a.token is not None
    back = Outcome(job_id, a.token, OutcomeKind.QUEUED, t0 + 1)
    assert await backend.finish([back], KEEP_ALL) == [True]
    (b,) = await backend.claim(Q, 1, 30.0, t0 + 2)
    assert b.token is not None

    assert await backend.heartbeat([Heartbeat(job_id, a.token)], 30.0, t0 + 3) == [LeaseStatus.LOST]
    assert await backend.progress(job_id, a.token, 66.0, [{"at": t0, "msg": "from A"}]) is False
    failed = Outcome(job_id, a.token, OutcomeKind.FAILED, t0 + 3, error="from A")
    assert await backend.finish([failed], KEEP_ALL) == [False]

    mid = await app.get_job(job_id)
    assert mid.state is JobState.RUNNING
    assert mid.progress != 66.0
    assert all(line["msg"] != "from A" for line in mid.logs)
    assert await backend.heartbeat([Heartbeat(job_id, b.token)], 30.0, t0 + 4) == [LeaseStatus.HELD]
    assert await backend.progress(job_id, b.token, 50.0, []) is True


@needs("driven_clock")
async def test_tokens_never_repeat_for_a_job(app: Conveyor) -> None:
    """Hand-backs, retries, recoveries: every claim of the job gets a token it
    never had before, whether or not the caller names the claim."""
    job_id = await enqueue_one(app)
    backend = app.backend
    t = time.time()
    tokens: list[str] = []
    for round_ in range(8):
        claim_id = None if round_ % 2 else f"claim-{round_}"
        (job,) = await backend.claim(Q, 1, 10.0, t, claim_id=claim_id)
        assert job.token is not None
        tokens.append(job.token)
        t += 1
        kind = (OutcomeKind.QUEUED, OutcomeKind.SCHEDULED)[round_ % 2]
        out = Outcome(job_id, job.token, kind, t, error="E", run_at=t)
        assert await backend.finish([out], KEEP_ALL) == [True]
        t += 1
    (job,) = await backend.claim(Q, 1, 1.0, t)
    assert job.token is not None
    tokens.append(job.token)
    await backend.recover_expired(t + 5, 5)
    (job,) = await backend.claim(Q, 1, 1.0, t + 5)
    assert job.token is not None
    tokens.append(job.token)
    assert len(set(tokens)) == len(tokens)


async def test_only_claims_carry_a_token(app: Conveyor) -> None:
    job_id = await enqueue_one(app)
    assert (await app.get_job(job_id)).token is None
    (claimed,) = await app.backend.claim(Q, 1, 30.0, time.time())
    assert claimed.token is not None
    assert (await app.get_job(job_id)).token is None  # a snapshot is not a claim


# --------------------------------------------------------------------------- unclaim


@needs("concurrent_claims")
async def test_unclaim_puts_the_claims_jobs_back_uncounted(app: Conveyor) -> None:
    register_noop(app)
    jobs = await app.enqueue_many([("work", i) for i in range(3)])
    backend = app.backend
    t0 = time.time()
    lost = await backend.claim(Q, 2, 30.0, t0, claim_id="lost-claim")
    kept = await backend.claim(Q, 1, 30.0, t0, claim_id="other-claim")
    assert [j.id for j in lost + kept] == [j.id for j in jobs]

    assert await backend.unclaim("lost-claim", t0 + 1) == 2
    for job in lost:
        stored = await app.get_job(job.id)
        assert stored.state is JobState.QUEUED
        assert stored.attempts == 0
        assert stored.stalls == 0
        assert stored.started_at is None
    assert (await app.get_job(kept[0].id)).state is JobState.RUNNING  # another claim's
    assert await backend.unclaim("lost-claim", t0 + 1) == 0  # idempotent
    assert await backend.unclaim("never-made", t0 + 1) == 0

    # The lost claim's tokens no longer hold anything; the jobs run normally.
    token = lost[0].token
    assert token is not None
    assert await backend.heartbeat([Heartbeat(lost[0].id, token)], 30.0, t0 + 2) == [
        LeaseStatus.LOST
    ]
    again = await backend.claim(Q, 5, 30.0, t0 + 2)
    assert sorted(j.id for j in again) == sorted(j.id for j in lost)
    assert all(j.attempts == 1 for j in again)
    assert await backend.recover_expired(t0 + 3, 0) == []  # nothing left leased


async def test_unclaim_ends_a_cancel_requested_job(app: Conveyor) -> None:
    job_id = await enqueue_one(app)
    t0 = time.time()
    await app.backend.claim(Q, 1, 30.0, t0, claim_id="lost-claim")
    assert await app.cancel(job_id) is True  # running: requested
    assert await app.backend.unclaim("lost-claim", t0 + 1) == 1
    stored = await app.get_job(job_id)
    assert stored.state is JobState.CANCELLED
    assert await app.backend.claim(Q, 1, 30.0, t0 + 1) == []


@needs("driven_clock")
async def test_unclaim_leaves_a_job_that_moved_on(app: Conveyor) -> None:
    """The lost claim's lease expired and another claim took the job: the
    late unclaim must not take it from that claim."""
    job_id = await enqueue_one(app)
    backend = app.backend
    t0 = time.time()
    await backend.claim(Q, 1, 1.0, t0, claim_id="lost-claim")
    await backend.recover_expired(t0 + 2, 5)
    (now_held,) = await backend.claim(Q, 1, 30.0, t0 + 2, claim_id="live-claim")
    assert await backend.unclaim("lost-claim", t0 + 3) == 0
    stored = await app.get_job(job_id)
    assert stored.state is JobState.RUNNING
    assert stored.attempts == 2
    assert now_held.token is not None
    assert await backend.heartbeat([Heartbeat(job_id, now_held.token)], 30.0, t0 + 3) == [
        LeaseStatus.HELD
    ]


@needs("concurrent_claims")
async def test_unclaim_undoes_combined_and_blocking_claims(app: Conveyor) -> None:
    register_noop(app)
    backend = app.backend
    _, second, _ = await app.enqueue_many([("work", i) for i in range(3)])
    t0 = time.time()
    (held,) = await backend.claim(Q, 1, 30.0, t0)
    assert held.token is not None
    claimed: list[str] = []
    if isinstance(backend, FinishAndClaim):
        done = Outcome(held.id, held.token, OutcomeKind.COMPLETED, t0, result="1")
        accepted, jobs = await backend.finish_and_claim(
            [done], KEEP_ALL, Q, 1, 30.0, t0, claim_id="combined"
        )
        assert accepted == [True] and [j.id for j in jobs] == [second.id]
        assert await backend.unclaim("combined", t0 + 1) == 1
        claimed.append(second.id)
    if isinstance(backend, BlockingClaim):
        jobs = await backend.claim_blocking(Q, 3, 30.0, 0.01, "waiter", claim_id="blocking")
        assert jobs and all(j.token is not None for j in jobs)
        assert await backend.unclaim("blocking", time.time()) == len(jobs)
        claimed += [j.id for j in jobs]
    for job_id in claimed:
        stored = await app.get_job(job_id)
        assert stored.state is JobState.QUEUED and stored.attempts == 0


# --------------------------------------------------------------------------- worker


class LosesClaimReplies:
    """A real backend whose first `losses` claim replies that carry jobs never
    reach the worker: the claim ran on the server, and the worker sees a
    connection error (a network blip after the request went out)."""

    _CLAIMS = ("claim", "finish_and_claim", "claim_blocking")

    def __init__(self, inner: Any, losses: int, on_loss: Callable[[], None] | None = None) -> None:
        self._inner = inner
        self.losses = losses
        self.on_loss = on_loss
        self.lost: list[str] = []  # ids of the jobs whose claim reply was lost
        self.replies: list[str] = []  # the claim methods that answered, in order

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in self._CLAIMS:
            return attr
        return self._lossy(attr)

    def _lossy(self, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def claim(*args: Any, **kwargs: Any) -> Any:
            reply = await call(*args, **kwargs)
            self.replies.append(call.__name__)
            jobs = reply[1] if isinstance(reply, tuple) else reply
            if jobs and self.losses > 0:
                self.losses -= 1
                self.lost += [job.id for job in jobs]
                if self.on_loss is not None:
                    self.on_loss()
                raise ConnectionError("connection reset: the claim reply was lost")
            return reply

        return claim


@pytest.mark.parametrize("enqueued", ["before the worker starts", "while it waits for work"])
async def test_lost_claim_replies_do_not_stall_the_job(
    make_app: MakeApp, backend_url: str, worker: Callable[..., Any], enqueued: str
) -> None:
    """Two lost claim replies in a row, with the default max_stalled=1: the job
    was never started, so it must neither fail as stalled nor count attempts.
    (Enqueued while the worker waits, the job is taken by a blocking claim
    where the backend has one.)"""
    lossy = LosesClaimReplies(from_url(backend_url), losses=2)
    app = await make_app(backend=lossy)
    attempts: list[int] = []

    @app.job("work", retries=0)
    async def work(payload: Any, ctx: JobContext) -> str:
        attempts.append(ctx.attempt)
        return "ran"

    if enqueued == "before the worker starts":
        job = await app.enqueue("work", {})
    async with worker(app, lease=1.5, max_stalled=1):
        if enqueued != "before the worker starts":
            await eventually(lambda: lossy.replies, message="the worker's first claim")
            job = await app.enqueue("work", {})
        done = await app.wait(job.id, timeout=WAIT)
    assert lossy.lost == [job.id, job.id]
    assert done.state is JobState.COMPLETED, done.error
    assert done.attempts == 1
    assert done.stalls == 0
    assert attempts == [1]


async def test_a_claim_lost_as_the_worker_stops_is_undone(
    make_app: MakeApp, backend_url: str, worker: Callable[..., Any]
) -> None:
    """The worker is told to stop right as a claim reply is lost: it does not
    claim again, but it still undoes that claim before it exits, so the job
    is queued at once instead of held until its lease expires."""
    lossy = LosesClaimReplies(from_url(backend_url), losses=1)
    app = await make_app(backend=lossy)
    register_noop(app)
    job = await app.enqueue("work", {})
    running = worker(app, lease=60.0)
    lossy.on_loss = running.request_stop
    async with running:
        await eventually(lambda: lossy.lost, message="the lost claim")
    assert lossy.lost == [job.id]
    stored = await app.get_job(job.id)
    assert stored.state is JobState.QUEUED
    assert stored.attempts == 0
    assert stored.stalls == 0


async def test_one_batch_with_a_stale_and_the_live_token_of_a_job(app: Conveyor) -> None:
    """A worker's batch can carry an old claim's beat or outcome next to the
    live one for the same job (a hand-back, then the job claimed again by
    the same process). Each is judged by its own token, in either order:
    the stale one is refused, the live one holds."""
    job_id = await enqueue_one(app)
    backend = app.backend
    t0 = time.time()
    (old,) = await backend.claim(Q, 1, 30.0, t0)
    await backend.finish([Outcome(job_id, old.token, OutcomeKind.QUEUED, t0)], KEEP_ALL)
    (live,) = await backend.claim(Q, 1, 30.0, t0 + 0.1)
    assert old.token and live.token and old.token != live.token
    beats = [Heartbeat(job_id, old.token), Heartbeat(job_id, live.token)]
    assert await backend.heartbeat(beats, 30.0, t0 + 0.2) == [LeaseStatus.LOST, LeaseStatus.HELD]
    beats.reverse()
    assert await backend.heartbeat(beats, 30.0, t0 + 0.3) == [LeaseStatus.HELD, LeaseStatus.LOST]
    outcomes = [
        Outcome(job_id, old.token, OutcomeKind.COMPLETED, t0 + 0.4, result='"stale"'),
        Outcome(job_id, live.token, OutcomeKind.COMPLETED, t0 + 0.4, result='"live"'),
    ]
    assert await backend.finish(outcomes, KEEP_ALL) == [False, True]
    job = await app.get_job(job_id)
    assert job.state is JobState.COMPLETED and job.result == "live"
