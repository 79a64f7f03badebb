"""`conveyor stats` and `conveyor retry --all-failed` on SQS (moto's server):
SQS's own counts for the queue and its dead-letter queue, and a redrive of
the dead-letter queue when there is no store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from conveyor import Conveyor, JobContext, Permanent

from .helpers import invoke

pytestmark = [pytest.mark.slow, pytest.mark.sqs]


async def _fail_one_and_leave_two(url: str) -> list[int]:
    """One job fails for good (to the dead-letter queue), two wait queued."""
    app = Conveyor(url)
    ran: list[int] = []
    first = asyncio.Event()

    @app.job("doomed", retries=0)
    async def doomed(payload: dict[str, int], ctx: JobContext) -> None:
        ran.append(payload["n"])
        first.set()
        if payload["n"] == 0:
            raise Permanent("boom")

    async with app:
        await app.enqueue("doomed", {"n": 0})
        async with app.worker(concurrency=1, poll_interval=1.0) as worker:
            await asyncio.wait_for(first.wait(), 20)
            await asyncio.sleep(0.5)
            await worker.stop()
        await app.enqueue_many([("doomed", {"n": 1}), ("doomed", {"n": 2})])
    return ran


@pytest.mark.parametrize("kind", ["sqs_bare", "sqs"])
def test_stats_shows_sqs_counts_for_the_queue_and_its_dead_letter_queue(
    kind: str, request: pytest.FixtureRequest
) -> None:
    url: str = request.getfixturevalue(f"{kind}_urls")()
    assert asyncio.run(_fail_one_and_leave_two(url)) == [0]
    result = invoke("--url", url, "stats")
    assert result.exit_code == 0, result.output
    out = result.output
    queue = url.split("://", 1)[1].split("?", 1)[0]
    assert queue in out and f"{queue}-dlq" in out, out
    for column in ("NumberOfMessages", "NumberOfMessagesNotVisible", "NumberOfMessagesDelayed"):
        assert column in out, out
    lines = [line.split() for line in out.splitlines()]
    row = next(cells for cells in lines if cells and cells[0] == queue)
    dead = next(cells for cells in lines if len(cells) > 4 and cells[-4] == f"{queue}-dlq")
    # Columns: visible, delayed, in flight.
    assert row[-3:] == ["2", "0", "0"], out
    if kind == "sqs_bare":
        assert dead[-3:] == ["1", "0", "0"], out
    else:
        # With a store, a final failure is kept in the store, not re-sent.
        assert dead[-3:] == ["0", "0", "0"], out


def test_retry_all_failed_redrives_the_dead_letter_queue_without_a_store(
    sqs_bare_urls: Callable[[], str],
) -> None:
    url = sqs_bare_urls()
    asyncio.run(_fail_one_and_leave_two(url))
    result = invoke("--url", url, "retry", "--all-failed")
    assert result.exit_code == 0, result.output
    assert "queued 1 failed job(s) again" in result.output
    stats = invoke("--url", url, "stats", "--json")
    assert '"failed": 0' in stats.output and '"queued": 3' in stats.output, stats.output
