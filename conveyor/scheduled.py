"""Functions on a schedule: `@app.cron("0 9 * * MON-FRI", tz="Europe/Berlin")`
and `@app.every("5 minutes")` register a job type that calls the function and
a recurring schedule that enqueues it, in one step.

The function takes no arguments, or only the job context (`ctx`); it may be
`async def` or a plain `def` (run in the worker's thread pool, as any sync
handler). Its job type is named `<module>.<qualname>` unless `name=` is given,
and its schedule has the same name.

Decorating stores nothing: the schedule is created or updated when a worker
starts (or `await app.store_schedules()`), through `app.recurring()`, so it
has every guarantee of a stored schedule (one job per tick across workers,
daylight-saving-correct cron, the catch-up policy) and, like a schedule a
seed script stores, keeps an operator's `disable` across restarts.

A decorated function removed from the code leaves its stored schedule
behind: nothing deletes it, since a worker cannot tell a function removed
from one defined by another app on the same backend, and `app.recurring()`
schedules must never be deleted for it. Its ticks go on enqueueing jobs that
no worker has a handler for (they wait, queued). A worker that starts logs a
warning naming each such schedule (stored by a decorator, not defined by its
app); `conveyor recurring delete NAME` removes it.
"""

from __future__ import annotations

import inspect
import logging
import typing
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypedDict, TypeVar

from typing_extensions import Unpack

from conveyor._sync import Portal, blocking
from conveyor.backends.base import Backend
from conveyor.context import JobContext
from conveyor.job import InvalidOptionError, NotSupportedError
from conveyor.recurring import check_timing
from conveyor.registry import JobType
from conveyor.scheduler import InvalidScheduleError, Schedule

logger = logging.getLogger("conveyor.scheduler")

F = TypeVar("F", bound=Callable[..., Any])

# The key (a tag, see `cancel_recurring(key=)`) of the schedules stored for
# decorated functions: how a worker tells them from those of app.recurring().
FUNCTION_KEY = "conveyor:function"


@dataclass(frozen=True, slots=True)
class FunctionSchedule:
    """A decorated function's schedule, as stored when a worker starts."""

    name: str  # of the job type and of the schedule
    cron: str | None
    every: float | None
    tz: str
    catch_up: str
    max_catch_up: int
    misfire_grace: float


class ScheduleOptions(TypedDict, total=False):
    """The options `@app.cron` and `@app.every` take besides their timing."""

    name: str | None  # the job type's and the schedule's (default: module.qualname)
    catch_up: str  # once | skip | all, as for app.recurring (default once)
    max_catch_up: int  # default 100
    misfire_grace: float  # seconds (default 60)
    queue: str  # the job type's options, as for @app.job
    retries: int
    timeout: float | None
    priority: int


_JOB_OPTIONS = ("queue", "retries", "timeout", "priority")


class ScheduledFunctions:
    """`Conveyor`'s `@app.cron`, `@app.every` and `store_schedules()`."""

    function_schedules: dict[str, FunctionSchedule]
    backend: Backend
    portal: Portal

    def cron(
        self, expression: str, *, tz: str = "UTC", **options: Unpack[ScheduleOptions]
    ) -> Callable[[F], F]:
        """Run the decorated function on a cron schedule in time zone `tz`
        (`catch_up`, `max_catch_up`, `misfire_grace` as for `app.recurring`;
        `queue`, `retries`, `timeout`, `priority` as for `@app.job`).
        Returns the function as it is."""
        if callable(expression):
            raise InvalidScheduleError(
                '@app.cron needs a cron expression: @app.cron("0 9 * * MON-FRI")'
            )
        return self._scheduled(expression, None, tz, options)

    def every(
        self, interval: float | timedelta | str, **options: Unpack[ScheduleOptions]
    ) -> Callable[[F], F]:
        """Run the decorated function every `interval` (seconds, a timedelta
        or text such as "5 minutes"); the options as for `@app.cron`."""
        if callable(interval):
            raise InvalidScheduleError('@app.every needs an interval: @app.every("5 minutes")')
        return self._scheduled(None, interval, "UTC", options)

    def _scheduled(
        self,
        cron: str | None,
        every: float | timedelta | str | None,
        tz: str,
        options: ScheduleOptions,
    ) -> Callable[[F], F]:
        unknown = sorted(set(options) - set(ScheduleOptions.__annotations__))
        if unknown:
            known = ", ".join(["tz", *ScheduleOptions.__annotations__])
            raise InvalidOptionError(f"unknown option(s) {', '.join(unknown)}; known: {known}")
        name = options.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            raise InvalidOptionError(f"name must be a non-empty string or None, got {name!r}")
        catch_up = options.get("catch_up", "once")
        max_catch_up = options.get("max_catch_up", 100)
        misfire_grace = options.get("misfire_grace", 60.0)
        cron_text, seconds = check_timing(cron, every, tz, catch_up, max_catch_up, misfire_grace)
        job_options = {k: v for k, v in options.items() if k in _JOB_OPTIONS}

        def register(function: F) -> F:
            takes_context = _check_signature(function)
            job_name = name or f"{function.__module__}.{function.__qualname__}"
            # `job` and `recurring` are Conveyor's other parts (JobTypes,
            # RecurringSchedules), not declared here to keep one signature each.
            app: Any = self
            app.job(job_name, **job_options)(_handler(function, takes_context))
            self.function_schedules[job_name] = FunctionSchedule(
                job_name, cron_text, seconds, tz, catch_up, max_catch_up, float(misfire_grace)
            )
            return function

        return register

    async def store_schedules(self) -> list[Schedule]:
        """Create or update the schedule of every `@app.cron` / `@app.every`
        function (workers do this when they start); return them. Warns of
        decorated schedules stored before that this app no longer defines."""
        app: Any = self  # see `_scheduled`
        if self.function_schedules and not self.backend.capabilities.recurring:
            names = ", ".join(sorted(self.function_schedules))
            raise NotSupportedError(
                f"the @app.cron/@app.every functions ({names}) "
                f"need a backend that stores recurring schedules, and {self.backend.url} does "
                "not (a broker needs a store: ?store=<URL>)"
            )
        stored = []
        for fs in self.function_schedules.values():
            stored.append(
                await app.recurring(
                    fs.name,
                    fs.name,
                    None,
                    cron=fs.cron,
                    every=fs.every,
                    tz=fs.tz,
                    key=FUNCTION_KEY,
                    catch_up=fs.catch_up,
                    max_catch_up=fs.max_catch_up,
                    misfire_grace=fs.misfire_grace,
                )
            )
        if self.backend.capabilities.recurring:
            for schedule in await app.list_recurring():
                if schedule.key == FUNCTION_KEY and schedule.name not in self.function_schedules:
                    logger.warning(
                        "schedule %s was stored for an @app.cron/@app.every function this "
                        "app does not define (removed from the code, or another app's): its "
                        "jobs wait for a worker that has it; `conveyor recurring delete %s` "
                        "removes it",
                        schedule.name,
                        schedule.name,
                    )
        return stored

    store_schedules_sync = blocking(store_schedules)


def _check_signature(function: Any) -> bool:
    """Whether the function takes the job context; InvalidOptionError when it
    takes anything else (a scheduled job has no payload to give it)."""
    label = getattr(function, "__qualname__", repr(function))
    if isinstance(function, JobType):
        raise InvalidOptionError(
            f"@app.cron/@app.every go on a plain function, not on the job type {function.name!r}"
        )
    if not callable(function):
        raise InvalidOptionError(f"@app.cron/@app.every go on a function, got {function!r}")
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError) as exc:
        raise InvalidOptionError(f"cannot inspect scheduled function {label!r}: {exc}") from exc
    required = [
        p
        for p in signature.parameters.values()
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    wrong = len(required) > 1 or any(p.kind is p.KEYWORD_ONLY for p in required)
    if not wrong and required:
        try:
            hints = typing.get_type_hints(function)
        except Exception:  # names only known to the type checker: take it on trust
            hints = {}
        annotation = hints.get(required[0].name)
        wrong = annotation is not None and annotation is not JobContext
    if wrong:
        raise InvalidOptionError(
            f"scheduled function {label}{signature} must take no arguments, or only the "
            "job context: def f() or def f(ctx: JobContext) (a scheduled job has no payload)"
        )
    return bool(required)


def _handler(function: Callable[..., Any], takes_context: bool) -> Callable[..., Any]:
    """A job handler `(payload, ctx)` that calls the function (the payload is
    always None). Named after the function, for tracebacks and logs; no
    `__wrapped__`, so its own signature is the one the registry sees."""
    handler: Callable[..., Any]
    if inspect.iscoroutinefunction(function):

        async def run_async(payload: Any, ctx: Any) -> Any:
            return await (function(ctx) if takes_context else function())

        handler = run_async
    else:

        def run(payload: Any, ctx: Any) -> Any:
            return function(ctx) if takes_context else function()

        handler = run
    for attribute in ("__module__", "__name__", "__qualname__", "__doc__"):
        if hasattr(function, attribute):
            setattr(handler, attribute, getattr(function, attribute))
    return handler
