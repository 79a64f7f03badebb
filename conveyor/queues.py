"""Queues and workers on the facade, a mixin of `Conveyor`: pausing and
resuming a queue, and the workers' presence.

A pause is kept in the backend (`QueuePauses`), so every worker process sees
it: each reads the paused set every `pause_check_interval` (1 s by default,
see conveyor/worker/pauses.py) and leaves paused queues out of its claims.
Enqueues to a paused queue go on as ever; its jobs wait until it is resumed.
"""

from __future__ import annotations

from typing import Protocol

from conveyor._sync import Portal, blocking
from conveyor.backends.base import Backend
from conveyor.backends.stores import QueuePauses, WorkerInfo, WorkerRegistry
from conveyor.job import NotSupportedError
from conveyor.options import check_queue


class _Facade(Protocol):
    """What these methods use of `Conveyor`."""

    backend: Backend
    portal: Portal

    async def _backend(self) -> Backend: ...

    def _require(self, supported: bool, what: str) -> None: ...


class QueueAdmin:
    """`Conveyor`'s methods on queues (pause, resume) and workers."""

    async def pause(self: _Facade, queue: str) -> bool:
        """Stop workers claiming from `queue` (within a second); jobs running
        there finish, and enqueues to it go on. False when it was paused already."""
        return await (await _pauses(self)).pause_queue(check_queue(queue))

    async def resume(self: _Facade, queue: str) -> bool:
        """Let workers claim from `queue` again (within a second). False when
        it was not paused."""
        return await (await _pauses(self)).resume_queue(check_queue(queue))

    async def paused(self: _Facade) -> list[str]:
        """The paused queues, sorted."""
        return sorted(await (await _pauses(self)).paused_queues())

    async def workers(self: _Facade, *, include_stale: bool = False) -> list[WorkerInfo]:
        """Live workers: id, host, pid, queues, the job names each serves, its
        concurrency, the jobs it ran at its latest beat (every 5 s) and when
        that was. With `include_stale`, also the workers whose beats stopped
        in the last 10 minutes (killed, stuck or cut off), flagged `stale`."""
        registry = await _worker_registry(self)
        return await registry.workers(include_stale=include_stale)

    async def unserved(self: _Facade) -> dict[str, dict[str, int]]:
        """Queued jobs that no live worker can run, `{queue: {job name: count}}`:
        no live worker serves that name in that queue (say, a new job type
        while only old workers run). They wait; nothing fails them."""
        registry = await _worker_registry(self)
        waiting = await registry.queued_by_name()
        live = await registry.workers()
        served = {(queue, name) for w in live for queue in w.queues for name in w.names}
        return {
            queue: left
            for queue, counts in waiting.items()
            if (left := {n: c for n, c in counts.items() if (queue, n) not in served})
        }

    pause_sync = blocking(pause)
    resume_sync = blocking(resume)
    paused_sync = blocking(paused)
    workers_sync = blocking(workers)
    unserved_sync = blocking(unserved)


async def _pauses(facade: _Facade) -> QueuePauses:
    backend = await facade._backend()
    facade._require(
        backend.capabilities.pause and isinstance(backend, QueuePauses), "pausing queues"
    )
    assert isinstance(backend, QueuePauses)
    return backend


async def _worker_registry(facade: _Facade) -> WorkerRegistry:
    backend = await facade._backend()
    if not isinstance(backend, WorkerRegistry):
        raise NotSupportedError("this backend does not support worker presence")
    return backend
