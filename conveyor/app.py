"""Conveyor: the facade. Registry of job types, events, producer and admin calls.

Shared rules live here once (option checks, payload validation, timestamps,
events); a backend only stores and claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import datetime, timedelta
from types import EllipsisType, TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, overload

from conveyor import forking
from conveyor._sync import Portal, blocking
from conveyor.backends import from_url, scheme_of
from conveyor.backends.base import (
    Backend,
    CancelResult,
    NewJob,
    Retention,
)
from conveyor.backends.optional import TransactionalEnqueue
from conveyor.backends.url_options import without_secrets
from conveyor.cache import Cache
from conveyor.discovery import HandlerDiscovery
from conveyor.events import Callback, EventBus
from conveyor.job import (
    FINAL_STATES,
    ConveyorError,
    InvalidOptionError,
    InvalidPayloadError,
    Job,
    JobState,
    JobTimeoutError,
    NotSupportedError,
    UnknownJobError,
    new_job_id,
)
from conveyor.locks import Locks, hold
from conveyor.observers import JobTracer
from conveyor.options import (
    check_listing,
    check_priority,
    check_queue,
    check_retries,
    check_state,
    check_timeout,
    due_time,
)
from conveyor.queues import QueueAdmin
from conveyor.recurring import RecurringSchedules
from conveyor.registry import JobType, JobTypes
from conveyor.scheduled import FunctionSchedule, ScheduledFunctions
from conveyor.scheduler import Scheduler
from conveyor.services import close_all, open_all, service_backends
from conveyor.settings import CONVEYOR_URL, env_str

if TYPE_CHECKING:
    from conveyor.worker import Worker

logger = logging.getLogger("conveyor.app")

DEFAULT_URL = "sqlite:///conveyor.db"
# Payloads are stored, copied to every worker and kept with the job's record:
# 1 MiB of JSON by default, enough for any message, small enough to notice a
# file or a table sent by mistake. A backend may allow less (capabilities).
DEFAULT_MAX_PAYLOAD = 1024 * 1024

EnqueueItem = tuple[str, Any] | tuple[str, Any, dict[str, Any]]
CallbackT = TypeVar("CallbackT", bound=Callback)


class Conveyor(JobTypes, RecurringSchedules, ScheduledFunctions, HandlerDiscovery, QueueAdmin):
    """The application object: `app = Conveyor("sqlite:///jobs.db")`.

    The URL defaults to `$CONVEYOR_URL`, else `sqlite:///conveyor.db`. The
    backend is opened on first use (or explicitly with `await app.open()` /
    `async with app:`).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        cache_url: str | None = None,
        locks_url: str | None = None,
        keep_completed: int | None = 1000,
        keep_failed: int | None = None,
        backend: Backend | None = None,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        if max_payload_bytes is not None and (
            isinstance(max_payload_bytes, bool)
            or not isinstance(max_payload_bytes, int)
            or max_payload_bytes < 1
        ):
            raise InvalidOptionError(
                f"max_payload_bytes must be an integer >= 1 or None, got {max_payload_bytes!r}"
            )
        self.max_payload_bytes = max_payload_bytes
        for name, value in (("keep_completed", keep_completed), ("keep_failed", keep_failed)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise InvalidOptionError(f"{name} must be an integer >= 0 or None, got {value!r}")
        self.url = url or env_str(CONVEYOR_URL) or DEFAULT_URL
        self.backend: Backend = backend if backend is not None else from_url(self.url)
        # Locks and the cache on backends of their own, where a URL says so.
        self.services = service_backends(self.backend, self.url, locks_url, cache_url)
        self.retention = Retention(keep_completed=keep_completed, keep_failed=keep_failed)
        self.registry: dict[str, JobType[Any, Any]] = {}  # registered or declared
        self.function_schedules: dict[str, FunctionSchedule] = {}  # @app.cron, @app.every
        self.events = EventBus()
        self.portal = Portal()
        self.locks = Locks(
            self._locks_backend, self.portal, self.services.locks_or(self.backend).url
        )
        self.cache = Cache(
            self._cache_backend, self.portal, self.services.cache_or(self.backend).url
        )
        self._open = False
        self._open_lock: asyncio.Lock | None = None
        # Set by conveyor.tracing.instrument(app): spans for enqueues and runs.
        self.tracing: JobTracer | None = None
        forking.track(self)  # for the fork hooks

    def __repr__(self) -> str:
        return f"<Conveyor {without_secrets(self.url)!r} jobs={sorted(self.registry)}>"

    # ------------------------------------------------------------------ events

    @overload
    def on(self, event: str, callback: None = None) -> Callable[[CallbackT], CallbackT]: ...

    @overload
    def on(self, event: str, callback: CallbackT) -> CallbackT: ...

    def on(self, event: str, callback: Any = None) -> Any:
        """Call `callback(event)` on a lifecycle event; usable as a decorator."""
        if callback is None:

            def decorate(cb: CallbackT) -> CallbackT:
                self.events.on(event, cb)
                return cb

            return decorate
        self.events.on(event, callback)
        return callback

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        if self._open:
            return
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if not self._open:
                await open_all([self.backend, *self.services.own()])
                self._open = True

    async def close(self) -> None:
        """Close the backend (for every loop that used it) and stop the helper
        loop of the `_sync` calls, unless this runs on that loop."""
        if self._open:
            self._open = False
            await close_all([self.backend, *self.services.own()])
        if self.portal.running and not self.portal.owns_current_loop():
            await asyncio.to_thread(self.portal.stop)

    def close_sync(self) -> None:
        """Close the backend and stop the helper loop used by the `_sync` calls."""
        try:
            self.portal.call(self.close, "close")
        finally:
            self.portal.stop()

    def _after_fork_in_child(self) -> None:
        """In a forked child: start the blocking twins' helper loop afresh
        (the parent's thread is not copied) and forget an open in progress."""
        self.portal.after_fork_in_child()
        self._open_lock = None

    async def __aenter__(self) -> Conveyor:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _backend(self) -> Backend:
        if not self._open:
            await self.open()
        return self.backend

    async def _locks_backend(self) -> Backend:
        return self.services.locks_or(await self._backend())

    async def _cache_backend(self) -> Backend:
        return self.services.cache_or(await self._backend())

    # ------------------------------------------------------------------ producing

    def _new_job(
        self,
        name: str,
        payload: Any,
        now: float,
        *,
        key: str | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        priority: int | None = None,
        retries: int | None = None,
        timeout: float | EllipsisType | None = ...,
        queue: str | None = None,
        group: str | None = None,
    ) -> NewJob:
        job_type = self.job_type(name)
        defaults = job_type.defaults
        if key is not None and (not isinstance(key, str) or not key):
            raise InvalidOptionError(f"key must be a non-empty string or None, got {key!r}")
        caps = self.backend.capabilities
        if key is not None and not caps.keys:
            self._require(False, f"idempotency keys (job {name!r} has key={key!r})")
        if group is not None:
            if not isinstance(group, str) or not 0 < len(group) <= 128:
                raise InvalidOptionError(
                    f"group must be a string of 1 to 128 characters or None, got {group!r}"
                )
            self._require(caps.groups, f"ordering groups (job {name!r} has group={group!r})")
        return NewJob(
            id=new_job_id(),
            name=name,
            queue=defaults.queue if queue is None else check_queue(queue),
            payload=self._sized(name, job_type.encode_payload(payload)),
            priority=defaults.priority if priority is None else check_priority(priority),
            max_retries=defaults.retries if retries is None else check_retries(retries),
            timeout=defaults.timeout if timeout is ... else check_timeout(timeout),
            key=key,
            group=group,
            created_at=now,
            run_at=due_time(now, delay, run_at),
            # A delay (or none) counts from the backend's clock where it has
            # one of its own; a run_at given is a time, kept as it is.
            relative=run_at is None,
        )

    def _sized(self, name: str, payload: str) -> str:
        """Refuse a payload over the app's limit or the backend's, whichever is lower."""
        limits = [self.max_payload_bytes, self.backend.capabilities.max_payload_bytes]
        limit = min((n for n in limits if n is not None), default=None)
        if limit is not None and len(payload) > limit // 4:  # cheap test before encoding
            size = len(payload.encode())
            if size > limit:
                raise InvalidPayloadError(
                    f"the payload of job {name!r} is {size:,} bytes of JSON, over the limit "
                    f"of {limit:,} (Conveyor(max_payload_bytes=...) sets the app's limit; "
                    "store large data elsewhere and pass a reference)"
                )
        return payload

    async def enqueue(
        self,
        name: str,
        payload: Any = None,
        *,
        key: str | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        priority: int | None = None,
        retries: int | None = None,
        timeout: float | EllipsisType | None = ...,
        queue: str | None = None,
        group: str | None = None,
        connection: Any = None,
    ) -> Job:
        """Store one job. Options left out take the job type's defaults.

        With `key`, a job that the backend still retains under the same key is
        returned instead (its `duplicate` is True) and nothing new is stored.

        With `connection` (a database connection of the backend's own kind,
        inside an open transaction), the job is stored in that transaction:
        it exists once the caller commits and never if it rolls back. No
        `job.enqueued` event is emitted then, since the commit is not ours to see.
        """
        new = self._new_job(
            name,
            payload,
            time.time(),
            key=key,
            delay=delay,
            run_at=run_at,
            priority=priority,
            retries=retries,
            timeout=timeout,
            queue=queue,
            group=group,
        )
        backend = await self._backend()
        if connection is not None:
            (job,) = await self._enqueue_in(backend, connection, [new])
            return job
        self._check_fits(backend, [new])
        with self._traced([new]):
            (job,) = await backend.enqueue([new])
        if not job.duplicate:
            self.events.emit("job.enqueued", job)
        return job

    async def enqueue_many(
        self, items: Iterable[EnqueueItem], *, connection: Any = None
    ) -> list[Job]:
        """Store many jobs in one round trip: `[(name, payload), (name, payload,
        {"delay": 5, ...}), ...]`. Every item is checked before anything is
        stored, so one bad item stores none. A backend with a largest batch
        (`capabilities.max_batch`) gets several round trips. `connection`:
        as for `enqueue`."""
        now = time.time()
        batch: list[NewJob] = []
        for index, item in enumerate(items):
            if not isinstance(item, tuple) or len(item) not in (2, 3):
                raise InvalidOptionError(
                    f"enqueue_many item {index}: expected (name, payload) or "
                    f"(name, payload, options), got {item!r}"
                )
            options: dict[str, Any] = item[2] if len(item) == 3 else {}
            try:
                if not isinstance(options, dict):
                    raise InvalidOptionError(f"options must be a dict, got {options!r}")
                unknown = sorted(set(options) - _ENQUEUE_OPTIONS)
                if unknown:
                    raise InvalidOptionError(
                        f"unknown option(s) {', '.join(map(repr, unknown))}; "
                        f"known: {', '.join(sorted(_ENQUEUE_OPTIONS))}"
                    )
                batch.append(self._new_job(item[0], item[1], now, **options))
            except ConveyorError as exc:
                # The same kind of error, saying which item was bad.
                raise type(exc)(f"enqueue_many item {index}: {exc}") from exc
        if not batch:
            return []
        backend = await self._backend()
        if connection is not None:
            return await self._enqueue_in(backend, connection, batch)
        self._check_fits(backend, batch)
        size = backend.capabilities.max_batch or len(batch)
        jobs = []
        with self._traced(batch):
            for start in range(0, len(batch), size):
                jobs += await backend.enqueue(batch[start : start + size])
        if self.events.wants("job.enqueued"):
            for job in jobs:
                if not job.duplicate:
                    self.events.emit("job.enqueued", job)
        return jobs

    # ------------------------------------------------------------------ inspecting

    async def get_job(self, job_id: str) -> Job | None:
        backend = await self._backend()
        self._require(backend.capabilities.lookup, "looking jobs up")
        return await backend.get(job_id)

    async def get_job_by_key(self, key: str) -> Job | None:
        backend = await self._backend()
        self._require(backend.capabilities.lookup, "looking jobs up")
        return await backend.get_by_key(key)

    async def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Wait until the job is completed, failed or cancelled; return it.

        Raises JobTimeoutError after `timeout` seconds, UnknownJobError if the
        job does not exist (or was trimmed by retention before we saw it)."""
        backend = await self._backend()
        self._require(backend.capabilities.lookup, "waiting for a job (it looks the job up)")
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.005
        while True:
            job = await backend.get(job_id)
            if job is None:
                raise UnknownJobError(f"no job with id {job_id!r}")
            if job.state in FINAL_STATES:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeoutError(f"job {job_id} is still {job.state.value} after {timeout} s")
            wait = pause if deadline is None else min(pause, max(0.0, deadline - time.monotonic()))
            await asyncio.sleep(wait)
            pause = min(pause * 1.5, 0.25)

    async def list_jobs(
        self,
        state: JobState | str | None = None,
        name: str | None = None,
        queue: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Job]:
        backend = await self._backend()
        self._require(backend.capabilities.list_jobs, "listing jobs")
        check_listing(limit, offset)
        return await backend.list_jobs(
            state=check_state(state), name=name, queue=queue, limit=limit, offset=offset
        )

    async def stats(self) -> dict[str, dict[str, int]]:
        """Counts per queue and state: `{"default": {"queued": 3, ...}}`."""
        backend = await self._backend()
        self._require(backend.capabilities.stats, "stats")
        return await backend.stats()

    # ------------------------------------------------------------------ administering

    async def cancel(self, job_id: str) -> bool:
        """Cancel a job. A pending one is cancelled at once; a running one has
        its `ctx.cancelled` set at the worker's next heartbeat. False when the
        job does not exist or already finished."""
        backend = await self._backend()
        self._require(backend.capabilities.cancel, "cancel")
        outcome = await backend.cancel(job_id)
        if outcome is CancelResult.CANCELLED and self.events.wants("job.cancelled"):
            self.events.emit("job.cancelled", await backend.get(job_id))
        return outcome in (CancelResult.CANCELLED, CancelResult.REQUESTED)

    async def retry(self, job_id: str) -> Job | None:
        """Queue a failed or cancelled job again for one more attempt. None when
        there is no such job or it is not failed/cancelled."""
        backend = await self._backend()
        self._require(backend.capabilities.retry, "retry")
        return await backend.retry(job_id)

    async def purge(
        self,
        state: JobState | str | Sequence[JobState | str] = JobState.COMPLETED,
        older_than: float | timedelta | None = None,
        queue: str | None = None,
    ) -> int:
        """Delete jobs in the given state(s), optionally only those older than
        `older_than` (seconds or timedelta). Running jobs are never purged."""
        backend = await self._backend()
        self._require(backend.capabilities.purge, "purge")
        raw = [state] if isinstance(state, JobState | str) else list(state)
        states = [s for s in (check_state(x) for x in raw) if s is not None]
        if JobState.RUNNING in states:
            raise InvalidOptionError("running jobs cannot be purged; cancel them first")
        cutoff = None
        if older_than is not None:
            seconds = (
                older_than.total_seconds() if isinstance(older_than, timedelta) else older_than
            )
            if seconds < 0:
                raise InvalidOptionError(f"older_than must be >= 0, got {older_than!r}")
            cutoff = time.time() - seconds
        return await backend.purge(states, cutoff, queue)

    def _traced(self, jobs: Sequence[NewJob]) -> contextlib.AbstractContextManager[None]:
        """Spans around storing `jobs` when tracing is on (their context goes
        into each job's headers), else nothing."""
        if self.tracing is None:
            return contextlib.nullcontext()
        return self.tracing.enqueue(jobs)

    def _require(self, supported: bool, what: str) -> None:
        if not supported:
            hint = self.backend.capabilities.hint
            raise NotSupportedError(
                f"the {scheme_of(self.url)}:// backend does not support {what}"
                + (f"; {hint}" if hint else "")
            )

    def _check_fits(self, backend: Backend, jobs: Sequence[NewJob]) -> None:
        """Refuse, before anything is stored, what the backend cannot hold."""
        caps = backend.capabilities
        if caps.priorities and caps.max_delay is None:
            return  # nothing to check: the common case, kept off the enqueue path
        for new in jobs:
            if new.priority != 0:
                self._require(caps.priorities, f"priorities (job {new.name!r} has {new.priority})")
            if caps.max_delay is not None and new.run_at - new.created_at > caps.max_delay:
                delay = new.run_at - new.created_at
                self._require(
                    False,
                    f"delays over {caps.max_delay:g} s (job {new.name!r} is due in {delay:.0f} s)",
                )

    def _caller_connection(self, arguments: dict[str, Any]) -> None:
        """The blocking twins' `connection=`, unwrapped in the caller's thread
        before the call moves to the helper thread: a framework's connection
        belongs to the thread that opened its transaction (Django keeps one
        per thread; read from the helper thread, `django.db.connection`
        would be another connection, outside the transaction)."""
        connection = arguments.get("connection")
        backend = self.backend
        if (
            connection is not None
            and backend.capabilities.transactional_enqueue
            and isinstance(backend, TransactionalEnqueue)
        ):
            arguments["connection"] = backend.unwrap_connection(connection)

    async def _enqueue_in(self, backend: Backend, connection: Any, jobs: list[NewJob]) -> list[Job]:
        self._require(
            backend.capabilities.transactional_enqueue
            and isinstance(backend, TransactionalEnqueue),
            "enqueueing inside your transaction (connection=); it needs a backend that "
            "lives in your database, such as postgresql://",
        )
        assert isinstance(backend, TransactionalEnqueue)
        self._check_fits(backend, jobs)
        return await backend.enqueue_in(connection, jobs)

    # ------------------------------------------------------------------ locks

    @contextlib.asynccontextmanager
    async def lock(self, key: str, ttl: float = 10.0, wait: float = 0.0) -> AsyncIterator[bool]:
        """`async with app.lock("key", ttl=10) as held:`; held is False when
        another owner has it (after trying for `wait` seconds)."""
        async with hold(self.locks, key, ttl, wait) as held:
            yield held

    # ------------------------------------------------------------------ workers

    def worker(
        self,
        concurrency: int | None = None,
        queues: Sequence[str] | None = None,
        **settings: Any,
    ) -> Worker:
        """A worker for this app: `async with app.worker():` runs it in this
        event loop; `await app.worker().run()` runs until SIGTERM/SIGINT."""
        from conveyor.worker import Worker, WorkerSettings

        settings_ = WorkerSettings.build(concurrency=concurrency, queues=queues, **settings)
        return Worker(
            self.backend,
            self.registry,
            self.events,
            settings_,
            retention=self.retention,
            open=self.open_for_work,
            tracer=self.tracing,
        )

    async def open_for_work(self) -> None:
        """What a worker does before its first claim: open the app and store
        the schedules of its `@app.cron` / `@app.every` functions."""
        await self.open()
        await self.store_schedules()

    async def drain(
        self, queues: Sequence[str] | None = None, *, concurrency: int = 1
    ) -> list[Job]:
        """Run every due job of `queues` (None: all the app's) here, through an
        in-process burst worker, until none is due; return the final record
        of each job that ran (see conveyor/worker/drain.py, conveyor.testing)."""
        from conveyor.worker.drain import drain

        return await drain(self, queues, concurrency)

    def scheduler(self, interval: float = 1.0) -> Scheduler:
        """A scheduler of this app's recurring schedules (workers run one
        unless told not to); `await app.scheduler().tick()` fires what is due."""
        return Scheduler(self.backend, self.registry, self.events, interval)

    # ------------------------------------------------------------------ blocking twins

    enqueue_sync = blocking(enqueue, in_caller_thread=_caller_connection)
    enqueue_many_sync = blocking(enqueue_many, in_caller_thread=_caller_connection)
    get_job_sync = blocking(get_job)
    get_job_by_key_sync = blocking(get_job_by_key)
    wait_sync = blocking(wait)
    list_jobs_sync = blocking(list_jobs)
    stats_sync = blocking(stats)
    cancel_sync = blocking(cancel)
    retry_sync = blocking(retry)
    purge_sync = blocking(purge)
    drain_sync = blocking(drain)


# What an enqueue_many item's options may hold: `enqueue`'s keyword options.
_ENQUEUE_OPTIONS = frozenset(
    {"key", "delay", "run_at", "priority", "retries", "timeout", "queue", "group"}
)
