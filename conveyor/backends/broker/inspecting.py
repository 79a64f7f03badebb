"""What a broker backend without a store answers about its jobs: the
broker's own counts as `stats` (where it counts), the dead-letter redrive,
and a refusal naming the fix (add a store) for what it cannot look up."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from conveyor.backends.base import CancelResult
from conveyor.backends.broker.types import (
    BrokerClient,
    BrokerConfig,
    BrokerFacts,
    QueueMissingError,
)
from conveyor.job import Job, JobState, NotSupportedError


class BrokerInspection:
    """The inspecting half of `BrokerBackend` (which sets these attributes)."""

    config: BrokerConfig
    broker: BrokerClient
    facts: BrokerFacts
    queues_seen: set[str]

    def _unsupported(self, what: str) -> NotSupportedError:
        return NotSupportedError(
            f"the {self.facts.scheme}:// backend cannot {what} without a store; "
            f"{self.facts.store_hint}"
        )

    async def get(self, job_id: str) -> Job | None:
        raise self._unsupported("look a job up")

    async def get_by_key(self, key: str) -> Job | None:
        raise self._unsupported("look a job up by key")

    async def list_jobs(
        self,
        *,
        state: JobState | None,
        name: str | None,
        queue: str | None,
        limit: int,
        offset: int,
    ) -> list[Job]:
        raise self._unsupported("list jobs")

    async def cancel(self, job_id: str, now: float | None = None) -> CancelResult:
        raise self._unsupported("cancel a job")

    async def retry(self, job_id: str, now: float | None = None) -> Job | None:
        raise self._unsupported("retry one job (`conveyor retry --all-failed` redrives the DLQ)")

    async def purge(
        self, states: Sequence[JobState], older_than: float | None, queue: str | None
    ) -> int:
        raise self._unsupported("purge jobs")

    async def stats(self) -> dict[str, dict[str, int]]:
        """The broker's own counts as states (see `count_states`); a broker
        that cannot count refuses, naming the fix."""
        if not self.facts.counts:
            raise self._unsupported("count jobs (it has no message counts)")
        out = {}
        for row in await self.broker_stats():
            out[str(row["conveyor_queue"])] = self.count_states(row)
        return out

    def count_states(self, row: dict[str, Any]) -> dict[str, int]:
        """A `broker_stats` row as job states (a broker with counts says how)."""
        raise NotImplementedError

    async def broker_stats(self) -> list[dict[str, Any]]:
        """Per conveyor queue this process has used: its broker-side name and
        approximate counts, and those of its dead-letter queue (None when it
        has none)."""
        rows: list[dict[str, Any]] = []
        if not self.facts.counts:
            return rows
        for queue in sorted(self.queues_seen):
            name = self.config.queue_name(queue)
            try:
                counts: dict[str, Any] = await self.broker.counts(name)
            except QueueMissingError:
                if queue == "default":
                    raise
                continue
            dlq = await self.broker.dead_letter_queue(name)
            dead: dict[str, Any] | None = None
            if dlq is not None:
                dead = {"queue": dlq, **await self.broker.counts(dlq)}
            rows.append(
                {"conveyor_queue": queue, "queue": name, **counts, "dead_letter_queue": dead}
            )
        return rows
