"""The optional sides of a backend: protocols a backend implements when it
can do more than `Backend` asks (one-round-trip acknowledge-and-claim,
blocking claims, enqueue in the caller's transaction, a broker's store,
broker counts and redrive, versioned migrations). The engine looks for them
with isinstance; see base.py for the contract they extend."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from conveyor.backends.base import NewJob, Outcome, Retention
from conveyor.job import Job


@runtime_checkable
class FinishAndClaim(Protocol):
    """Optional: acknowledgements and the next claim in one round trip, the
    same as `finish(outcomes, retention)` followed by `claim(...)`."""

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
    ) -> tuple[list[bool], list[Job]]: ...


@runtime_checkable
class BlockingClaim(Protocol):
    """Optional: wait for work and claim it in one step on the server, so a
    new job reaches an idle worker in one hop instead of a wake-up followed
    by a claim round trip."""

    async def claim_blocking(
        self,
        queues: Sequence[str],
        limit: int,
        lease: float,
        timeout: float,
        waiter: str,
        *,
        claim_id: str | None = None,
        names: Sequence[str] | None = None,
    ) -> list[Job]:
        """Wait up to `timeout` for work of `names` (or for `wake_waiter(waiter)`),
        then claim up to `limit` jobs as `claim` does, by the server's clock."""

    async def wake_waiter(self, waiter: str) -> None:
        """End the blocking wait of `waiter` early (its claim still runs)."""


@runtime_checkable
class HeldMessages(Protocol):
    """Optional: the backend keeps work it received but has not handed to a
    claim yet (a FIFO group's later messages while an earlier one runs). A
    stopping worker, its last outcomes sent, asks it to give that back to
    the broker at once rather than let it wait out its lease."""

    async def release_held(self) -> int:
        """Give back what is held and no running job waits on; how much."""


@runtime_checkable
class TransactionalEnqueue(Protocol):
    """Optional (with `capabilities.transactional_enqueue`): store jobs with the
    caller's own database connection, inside the transaction it has open, so
    they exist exactly when the caller's other writes commit. Nothing is
    committed here; a rollback removes the jobs with the rest."""

    async def enqueue_in(self, connection: Any, jobs: Sequence[NewJob]) -> list[Job]:
        """As `enqueue`, on `connection`; raise InvalidOptionError when
        `connection` is not a connection this backend can use."""

    def unwrap_connection(self, connection: Any) -> Any:
        """The driver connection inside `connection`, found in the calling
        thread: the blocking twins call this before handing the call to
        their helper thread, since a framework's connection may belong to
        the thread that opened its transaction. InvalidOptionError as for
        `enqueue_in`."""


@runtime_checkable
class DeliveryStore(Protocol):
    """Optional: what a broker backend (SQS, Pub/Sub) needs of the backend it
    keeps its job records in (`sqs://queue?store=<URL>`).

    The broker delivers job ids; the store decides. In a delivery store a
    `queued` job is one a message is on its way for, and a `scheduled` one is
    held by the store alone until `release_due` hands it to the broker. The
    broker never calls `claim` on its store."""

    async def claim_ids(
        self,
        ids: Sequence[str],
        lease: float,
        now: float | None = None,
        *,
        claim_id: str,
    ) -> list[Job | None]:
        """Lease each listed job that is `queued`, exactly as `claim` leases
        a job (running, attempts + 1, started_at, a lease until now + lease,
        token `claim_id`), whatever its name, priority or run_at; one entry
        per id, in order: the leased record (token set), or None for an id
        that is missing or in any other state (an id listed twice is leased
        once). One round trip."""

    async def release_due(
        self, queues: Sequence[str], limit: int, now: float | None = None
    ) -> list[Job]:
        """Move up to `limit` `scheduled` jobs of `queues` whose run_at <= now
        (None: the backend's clock) to `queued`, earliest first, and return
        their records: the broker sends one message for each. Atomic: two
        callers never both get the same job."""

    async def withdraw(self, ids: Sequence[str]) -> list[str]:
        """Delete the listed jobs that were never delivered (`queued` or
        `scheduled` with no attempt yet): the broker refused their messages,
        and the caller is told they were not enqueued, so nothing of them may
        run later and their idempotency keys are free again. A job that ran
        (running now, finished, or waiting for a retry) went out after all;
        it and unknown ids are left alone. Returns the ids deleted."""


@runtime_checkable
class BrokerStats(Protocol):
    """Optional: a broker's own counts (SQS's approximate message counts),
    shown by `conveyor stats` beside the job counts."""

    async def broker_stats(self) -> list[dict[str, Any]]:
        """One row per queue: `queue` (the broker's name for it), its counts
        by the broker's own names, and `dead_letter_queue` (a row of the same
        shape, or None)."""


@runtime_checkable
class DeadLetterRedrive(Protocol):
    """Optional: a broker whose failed set is its dead-letter queue (SQS
    without a store); `conveyor retry --all-failed` moves it back."""

    async def redrive(self, queue: str | None = None, limit: int | None = None) -> int:
        """Move dead-lettered messages of `queue` (None: every queue this
        process knows) back for another round of attempts; how many moved."""


@runtime_checkable
class Migrations(Protocol):
    """Optional: a backend whose schema is upgraded by versioned migrations
    (`conveyor migrate`). The other backends create their storage on open."""

    async def schema_version(self) -> int:
        """The version the stored schema is at (0: none yet)."""

    async def pending_sql(self) -> list[tuple[int, str, list[str]]]:
        """(version, description, SQL statements) of each migration still to
        run, in order; runs nothing."""

    async def migrate(self) -> list[int]:
        """Run the pending migrations; the versions applied."""
