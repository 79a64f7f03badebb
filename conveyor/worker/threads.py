"""The threads sync handlers run in, and the ones the worker had to abandon.

Python cannot stop a thread. When a sync job times out, is cancelled, loses
its lease or is handed back at shutdown, the worker records its outcome and
moves on, but a handler that does not poll `ctx.is_cancelled()` keeps its
thread busy: the thread is abandoned. No other job may pay for it, so:

* the pool holds `concurrency + tolerated` threads: up to `tolerated`
  abandoned threads leave every slot a thread of its own;
* each abandoned thread beyond that takes a slot (`lost_slots`), so the worker
  never claims a job that would wait for a thread;
* a sync job's timeout starts when its handler starts in its thread
  (`on_start`), never while it waits for one;
* the thread itself checks that the job's lease still holds before it calls
  the handler (`may_begin`): a process frozen between the hand-off and the
  thread's start resumes past the lease, when another worker may hold the job;
* the threads are daemons (DaemonThreads, not concurrent.futures' pool, whose
  threads Python joins at exit): a program that ran a worker exits once the
  worker stopped, however long an abandoned handler goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

from conveyor.context import JobContext

logger = logging.getLogger("conveyor.worker")

# Threads that run sync handlers are named after this prefix; the worker
# command looks for them after shutdown.
THREAD_PREFIX = "conveyor-job"


class LeaseLapsed(Exception):
    """The handler would begin after the job's lease ran out: not run."""


class HandlerEscaped(Exception):
    """A handler raised what is not an ordinary exception (SystemExit,
    KeyboardInterrupt, GeneratorExit, a CancelledError of its own making) or,
    sync, let StopIteration out (which a future cannot carry: the await would
    never end). It fails the attempt like any error, instead of leaving the
    job running with no outcome or ending the worker's event loop."""

    def __init__(self, raised: BaseException) -> None:
        super().__init__(f"the handler raised {type(raised).__name__}: {raised}")


async def awaited_handler(handler: Awaitable[Any], ctx: JobContext) -> Any:
    """An async handler's result; what it raises that no ordinary `except
    Exception` sees comes out as HandlerEscaped. A CancelledError is the
    runner's own (passed on) when the task was cancelled or the job told to
    stop; else the handler's code raised it."""
    try:
        return await handler
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if ctx.stop_reason is None and task is not None and not task.cancelling():
            raise HandlerEscaped(exc) from exc
        raise
    except Exception:
        raise
    except BaseException as exc:
        raise HandlerEscaped(exc) from exc


class DaemonThreads:
    """A pool of up to `size` daemon threads, made as work needs them."""

    def __init__(self, size: int, name_prefix: str) -> None:
        self._size = size
        self._prefix = name_prefix
        self._work: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._closed = False

    def submit(self, call: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the handler threads are shut down")
            self._work.put((future, call))
            if self._idle:
                self._idle -= 1  # that one takes it
            elif self._threads < self._size:
                self._threads += 1
                name = f"{self._prefix}_{self._threads - 1}"
                threading.Thread(target=self._serve, name=name, daemon=True).start()
        return future

    def _serve(self) -> None:
        while (item := self._work.get()) is not None:
            future, call = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(call())
                except BaseException as exc:  # the future carries it (HandlerThreads.run)
                    future.set_exception(exc)
            del item, future, call  # not kept alive while idle
            with self._lock:
                self._idle += 1

    def shutdown(self) -> None:
        """Run nothing more: work not started is cancelled; threads under way
        finish by themselves (daemons: they never hold the process)."""
        with self._lock:
            self._closed = True
            while True:
                try:
                    item = self._work.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
            for _ in range(self._threads):
                self._work.put(None)


class HandlerThreads:
    def __init__(self, concurrency: int, tolerated: int, on_returned: Callable[[], None]) -> None:
        self.concurrency = concurrency
        self.tolerated = tolerated
        self._on_returned = on_returned  # called on the loop when an abandoned thread is back
        self._pool = DaemonThreads(concurrency + tolerated, THREAD_PREFIX)
        self._abandoned: dict[Future[Any], JobContext] = {}

    @property
    def abandoned(self) -> int:
        return len(self._abandoned)

    @property
    def lost_slots(self) -> int:
        """Slots taken by abandoned threads beyond the tolerated number."""
        return max(0, len(self._abandoned) - self.tolerated)

    async def run(
        self,
        ctx: JobContext,
        call: Callable[..., Any],
        *args: Any,
        may_begin: Callable[[], bool],
        on_start: Callable[[], None],
    ) -> Any:
        """`call(*args)` in a pool thread if `may_begin()` says so there, else
        LeaseLapsed; `on_start` runs on the loop once it starts. Cancelling
        this abandons the thread if the call is under way."""
        loop = asyncio.get_running_loop()

        def in_thread() -> Any:
            if not may_begin():
                raise LeaseLapsed
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody to tell
                loop.call_soon_threadsafe(on_start)
            try:
                return call(*args)
            except StopIteration as exc:
                raise HandlerEscaped(exc) from exc
            except Exception:
                raise
            except BaseException as exc:
                raise HandlerEscaped(exc) from exc

        future = self._pool.submit(in_thread)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # A call that had not started was cancelled with us; one that
            # runs keeps its thread until it returns by itself.
            if not future.done():
                self._abandon(future, ctx, loop)
            raise

    def _abandon(
        self, future: Future[Any], ctx: JobContext, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._abandoned[future] = ctx
        # Called at once if the thread returned meanwhile, else when it does.
        future.add_done_callback(lambda done: self._returned_threadsafe(loop, done))
        job = ctx.job
        logger.warning(
            "job %s %s: its sync handler still runs after the job %s; abandoning its "
            "thread (%d abandoned, max_abandoned_threads=%d)",
            job.name,
            job.id,
            ctx.stop_reason or "ended",
            len(self._abandoned),
            self.tolerated,
        )
        lost = self.lost_slots
        if lost:
            logger.warning(
                "%d abandoned handler thread(s) exceed max_abandoned_threads=%d: this worker "
                "runs at most %d job(s) at once until they return%s",
                len(self._abandoned),
                self.tolerated,
                max(0, self.concurrency - lost),
                "; it claims nothing meanwhile" if lost >= self.concurrency else "",
            )

    def _returned_threadsafe(self, loop: asyncio.AbstractEventLoop, future: Future[Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the worker is gone
            loop.call_soon_threadsafe(self._returned, future)

    def _returned(self, future: Future[Any]) -> None:
        ctx = self._abandoned.pop(future, None)
        if ctx is None:
            return
        logger.info(
            "the abandoned thread of job %s %s returned (%d still abandoned)",
            ctx.job.name,
            ctx.job.id,
            len(self._abandoned),
        )
        self._on_returned()

    def shutdown(self) -> None:
        """Start no more calls; threads still busy are left to finish by themselves."""
        self._pool.shutdown()
