"""Job types: a name, a handler, its payload model and its default options.

`JobType[PayloadT, ResultT]` is the typed handle `@app.job` and `app.declare`
return; `JobTypes` is the facade's registry of them (registration,
declaration and lookup); `handled()` is the view of it a worker runs.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from types import EllipsisType
from typing import TYPE_CHECKING, Any, Generic, Protocol, cast, overload

from pydantic import BaseModel, TypeAdapter, ValidationError
from typing_extensions import TypeVar  # PEP 696 defaults, before Python 3.13

from conveyor.backoff import Backoff, BackoffLike, as_backoff
from conveyor.codec import encode_json as encode_json  # re-exported: it lived here before
from conveyor.job import (
    ConveyorError,
    InvalidOptionError,
    InvalidPayloadError,
    Job,
    JobState,
    UnknownJobError,
)
from conveyor.options import JobDefaults
from conveyor.versions import Migration, Versioning, versioning

if TYPE_CHECKING:
    from conveyor._sync import Portal
    from conveyor.context import JobContext

PayloadT = TypeVar("PayloadT")
# A default keeps the one-parameter spelling `JobType[Payload]` valid (result Any).
ResultT = TypeVar("ResultT", default=Any)
ModelT = TypeVar("ModelT", bound=BaseModel)
P = TypeVar("P")
R = TypeVar("R")

Handler = Callable[..., Any]


class Producer(Protocol):
    """What a job type needs of the app to enqueue itself (the facade is one)."""

    @property
    def portal(self) -> Portal: ...

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
    ) -> Job: ...

    async def enqueue_many(
        self, items: Iterable[tuple[Any, ...]], *, connection: Any = None
    ) -> list[Job]: ...

    async def wait(self, job_id: str, timeout: float | None = None) -> Job: ...

    # The blocking twins: they find a `connection=` in the caller's thread.
    def enqueue_sync(self, name: str, payload: Any = None, **options: Any) -> Job: ...

    def enqueue_many_sync(
        self, items: Iterable[tuple[Any, ...]], *, connection: Any = None
    ) -> list[Job]: ...


class JobFailedError(ConveyorError):
    """The job a typed `result()` waited for ended failed or cancelled: it has
    no result. `job` is its final record (`job.error` says why)."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id} ({job.name!r}) {job.state.value}: {job.error}")
        self.job = job


class JobType(Generic[PayloadT, ResultT]):
    """What `@app.job(...)` and `app.declare(...)` return: a handle generic in
    its payload and result types, with typed `enqueue` / `enqueue_many` /
    `result` (and their `_sync` twins). A registered one is still callable as
    the plain function; a declared one has no handler (`handler is None`): it
    validates and enqueues with the worker's defaults, and no worker of this
    app runs it."""

    def __init__(
        self,
        app: Producer,
        name: str,
        handler: Handler | None,
        defaults: JobDefaults,
        backoff: BackoffLike | None,
        *,
        model: type[BaseModel] | None = None,
        versions: Versioning | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise InvalidOptionError(f"a job name must be a non-empty string, got {name!r}")
        if model is not None and not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise InvalidOptionError(
                f"payload_model of job {name!r} must be a pydantic model class, got {model!r}"
            )
        self.app = app
        self.name = name
        self.defaults = defaults
        self.backoff_option = backoff  # as given: compared when a declaration is completed
        self.backoff = as_backoff(backoff)
        self.model = model
        self.versions = versions if versions is not None else Versioning()
        self.handler: Handler | None = None
        self.is_async = False
        self.takes_context = False
        self._result_adapter: TypeAdapter[Any] | EllipsisType | None = None
        if handler is not None:
            self.attach(handler)

    def __repr__(self) -> str:
        declared = "" if self.handler is not None else " (declared, no handler)"
        return f"<JobType {self.name!r}{declared}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.handler is None:
            raise TypeError(f"job {self.name!r} is declared here without a handler")
        return self.handler(*args, **kwargs)

    def attach(self, handler: Handler) -> None:
        """Give the type its handler (registration, or completing a declaration)."""
        self.model, self.takes_context = _inspect_handler(handler)
        self.handler = handler
        self.is_async = inspect.iscoroutinefunction(handler)
        self._result_adapter = ...  # built on first use: most types never need it
        self.__doc__ = handler.__doc__
        self.__wrapped__ = handler

    @property
    def version(self) -> int:
        """The version of the type's payloads that this code enqueues and runs."""
        return self.versions.version

    def settings(self) -> tuple[Any, ...]:
        """What producers and workers must agree on for this name."""
        backoff = Backoff() if self.backoff_option is None else self.backoff_option
        return (self.defaults, self.model, backoff, self.version)

    # -- payloads

    def encode_payload(self, payload: Any) -> str:
        """Validate on enqueue and return JSON text; nothing is stored on error."""
        model = self.model
        if model is not None and not isinstance(payload, model):
            try:
                payload = model.model_validate(payload)
            except ValidationError as exc:
                raise InvalidPayloadError(
                    f"invalid payload for job {self.name!r}: {_describe(exc)}"
                ) from exc
        return self.versions.wrap(encode_json(payload, f"the payload of job {self.name!r}"))

    def decode_payload(self, payload: Any, version: int = 1) -> Any:
        """The handler's view of a stored payload of `version` (migrated to
        this type's version, then validated again on run)."""
        if version != self.version:
            payload = self.versions.upgrade(self.name, payload, version)
        if self.model is None:
            return payload
        try:
            return self.model.model_validate(payload)
        except ValidationError as exc:
            raise InvalidPayloadError(
                f"stored payload of job {self.name!r} no longer fits "
                f"{self.model.__name__}: {_describe(exc)}"
            ) from exc

    def call(self, payload: Any, ctx: Any) -> Any:
        handler = self.handler
        if handler is None:  # workers run only types with a handler (see `handled`)
            raise LookupError(f"job {self.name!r} is declared here without a handler")
        if self.takes_context:
            return handler(payload, ctx)
        return handler(payload)

    # -- producing

    async def enqueue(
        self,
        payload: PayloadT,
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
        return await self.app.enqueue(
            self.name,
            payload,
            key=key,
            delay=delay,
            run_at=run_at,
            priority=priority,
            retries=retries,
            timeout=timeout,
            queue=queue,
            group=group,
            connection=connection,
        )

    async def enqueue_many(
        self, payloads: Sequence[PayloadT], *, connection: Any = None, **options: Any
    ) -> list[Job]:
        return await self.app.enqueue_many(
            [(self.name, p, options) for p in payloads], connection=connection
        )

    # -- results

    async def result(self, job: Job | str, timeout: float | None = None) -> ResultT:
        """Wait for one of this type's jobs (a `Job` or its id) to finish and
        return its result, typed as the handler's return type (a result stored
        as JSON is validated back into it: a model comes back a model).
        JobFailedError when it failed or was cancelled, JobTimeoutError after
        `timeout` seconds."""
        job_id = job.id if isinstance(job, Job) else job
        done = await self.app.wait(job_id, timeout=timeout)
        if done.name != self.name:
            raise InvalidOptionError(f"job {job_id} is a {done.name!r} job, not {self.name!r}")
        if done.state is not JobState.COMPLETED:
            raise JobFailedError(done)
        return cast(ResultT, self.typed_result(done.result))

    def typed_result(self, stored: Any) -> Any:
        """A stored (JSON) result in the handler's return type, where known."""
        if self._result_adapter is ...:
            assert self.handler is not None
            self._result_adapter = _result_adapter(self.handler)
        adapter = self._result_adapter
        if adapter is None:
            return stored
        try:
            return adapter.validate_python(stored)
        except ValidationError as exc:
            raise InvalidPayloadError(
                f"the stored result of job {self.name!r} does not fit its handler's "
                f"return type: {_describe(exc)}"
            ) from exc

    def enqueue_sync(self, payload: PayloadT, **options: Any) -> Job:
        return self.app.enqueue_sync(self.name, payload, **options)

    def enqueue_many_sync(
        self, payloads: Sequence[PayloadT], *, connection: Any = None, **options: Any
    ) -> list[Job]:
        return self.app.enqueue_many_sync(
            [(self.name, p, options) for p in payloads], connection=connection
        )

    def result_sync(self, job: Job | str, timeout: float | None = None) -> ResultT:
        return self.app.portal.call(lambda: self.result(job, timeout), "result")


class JobDecorator(Protocol):
    """What `@app.job(...)` applies to a handler: the handle it gives is typed
    by the handler's payload parameter and return type (async or plain `def`,
    with or without the context parameter)."""

    @overload
    def __call__(
        self, handler: Callable[[P, JobContext], Coroutine[Any, Any, R]], /
    ) -> JobType[P, R]: ...

    @overload
    def __call__(self, handler: Callable[[P], Coroutine[Any, Any, R]], /) -> JobType[P, R]: ...

    @overload
    def __call__(self, handler: Callable[[P, JobContext], R], /) -> JobType[P, R]: ...

    @overload
    def __call__(self, handler: Callable[[P], R], /) -> JobType[P, R]: ...


class JobTypes:
    """The facade's registry of job types: `@app.job` registers a handler,
    `app.declare` a type without one (for producers), `app.job_type` finds
    either. One handle per name: registering a handler for a declared name
    completes that declaration, provided the settings agree."""

    registry: dict[str, JobType[Any, Any]]

    def job(
        self,
        name: str,
        *,
        retries: int = 3,
        timeout: float | None = 30.0,
        priority: int = 0,
        queue: str = "default",
        backoff: BackoffLike | None = None,
        version: int = 1,
        migrations: Mapping[int, Migration] | None = None,
    ) -> JobDecorator:
        """Register a handler under `name` with its per-type defaults, at
        `version` with `migrations` from each older one (see versions.py)."""
        defaults = JobDefaults(retries=retries, timeout=timeout, priority=priority, queue=queue)
        versions = versioning(name, version, migrations, handled=True)

        def register(handler: Handler) -> JobType[Any, Any]:
            existing = self.registry.get(name)
            if existing is not None and existing.handler is not None:
                raise InvalidOptionError(f"job name {name!r} is already registered")
            job_type: JobType[Any, Any] = JobType(
                cast(Producer, self), name, handler, defaults, backoff, versions=versions
            )
            if existing is None:
                self.registry[name] = job_type
                return job_type
            _check_agrees(existing, job_type, "registered")
            existing.attach(handler)  # the declaration's handle, now with its handler
            existing.versions = versions  # and the migrations a worker needs
            return existing

        return cast(JobDecorator, register)

    @overload
    def declare(
        self,
        name: str,
        payload_model: type[ModelT],
        *,
        retries: int = 3,
        timeout: float | None = 30.0,
        priority: int = 0,
        queue: str = "default",
        backoff: BackoffLike | None = None,
        version: int = 1,
        migrations: Mapping[int, Migration] | None = None,
    ) -> JobType[ModelT, Any]: ...

    @overload
    def declare(
        self,
        name: str,
        payload_model: None = None,
        *,
        retries: int = 3,
        timeout: float | None = 30.0,
        priority: int = 0,
        queue: str = "default",
        backoff: BackoffLike | None = None,
        version: int = 1,
        migrations: Mapping[int, Migration] | None = None,
    ) -> JobType[Any, Any]: ...

    def declare(
        self,
        name: str,
        payload_model: type[BaseModel] | None = None,
        *,
        retries: int = 3,
        timeout: float | None = 30.0,
        priority: int = 0,
        queue: str = "default",
        backoff: BackoffLike | None = None,
        version: int = 1,
        migrations: Mapping[int, Migration] | None = None,
    ) -> JobType[Any, Any]:
        """A job type without a handler: what a producer that does not import
        the worker's code needs to validate payloads and enqueue with the
        worker's defaults. Give the same settings as the worker's `@app.job`;
        a declaration that disagrees with another one, or with the handler
        registered here, is refused. No worker of this app runs a type that
        is only declared: a worker that registers the handler does. Give the
        worker's `version` too: payloads are enqueued as that version (its
        `migrations` are the worker's business and may be left out here)."""
        defaults = JobDefaults(retries=retries, timeout=timeout, priority=priority, queue=queue)
        versions = versioning(name, version, migrations, handled=False)
        declared: JobType[Any, Any] = JobType(
            cast(Producer, self),
            name,
            None,
            defaults,
            backoff,
            model=payload_model,
            versions=versions,
        )
        existing = self.registry.get(name)
        if existing is None:
            self.registry[name] = declared
            return declared
        _check_agrees(existing, declared, "declared")
        return existing

    def job_type(self, name: str) -> JobType[Any, Any]:
        """The type registered or declared under `name`, else UnknownJobError."""
        try:
            return self.registry[name]
        except KeyError:
            known = ", ".join(sorted(self.registry)) or "none registered"
            raise UnknownJobError(
                f"unknown job name {name!r} (known: {known}); a producer without the "
                "handler's code declares it with app.declare(name, ...)"
            ) from None


class HandledTypes(Mapping[str, JobType[Any, Any]]):
    """A live view of the job types that have a handler: what a worker claims
    and runs. A declared-only type is left to a worker that has its handler."""

    def __init__(self, types: Mapping[str, JobType[Any, Any]]) -> None:
        self.types = types

    def __getitem__(self, name: str) -> JobType[Any, Any]:
        job_type = self.types[name]
        if job_type.handler is None:
            raise KeyError(name)
        return job_type

    # get and `in` without Mapping's KeyError round trip: a worker asks for
    # every job it runs.
    def get(self, name: str, default: Any = None) -> Any:
        job_type = self.types.get(name)
        return default if job_type is None or job_type.handler is None else job_type

    def __contains__(self, name: object) -> bool:
        job_type = self.types.get(name) if isinstance(name, str) else None
        return job_type is not None and job_type.handler is not None

    def __iter__(self) -> Iterator[str]:
        return (name for name, t in self.types.items() if t.handler is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def handled(types: Mapping[str, JobType[Any, Any]]) -> HandledTypes:
    """The types of `types` that have a handler (a view: later ones count)."""
    return types if isinstance(types, HandledTypes) else HandledTypes(types)


def _check_agrees(existing: JobType[Any, Any], new: JobType[Any, Any], verb: str) -> None:
    """Refuse a second declaration or a registration that disagrees with what
    the name already has: producers would enqueue with other defaults than
    the worker's, or validate against another model."""
    if existing.settings() == new.settings():
        return
    labels = ("defaults", "payload_model", "backoff", "version")
    differ = [
        f"{label} {old!r} != {now!r}"
        for label, old, now in zip(labels, existing.settings(), new.settings(), strict=True)
        if old != now
    ]
    was = "registered" if existing.handler is not None else "declared"
    raise InvalidOptionError(
        f"job {existing.name!r} is already {was} with other settings than it is {verb} "
        f"with now ({'; '.join(differ)}): give the same retries, timeout, priority, "
        "queue, backoff, payload model and version in app.declare() and @app.job()"
    )


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "payload"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def _inspect_handler(handler: Handler) -> tuple[type[BaseModel] | None, bool]:
    """The payload model (if the first parameter is annotated with one) and
    whether the handler takes a context as its second parameter."""
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError) as exc:
        raise InvalidOptionError(f"cannot inspect handler {handler!r}: {exc}") from exc
    params = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if not params or len(params) > 2:
        raise InvalidOptionError(
            f"handler {getattr(handler, '__qualname__', handler)!r} must take "
            "(payload) or (payload, ctx)"
        )
    try:
        hints = typing.get_type_hints(handler)
    except Exception:
        hints = {}
    annotation = hints.get(params[0].name)
    model = (
        annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    )
    return model, len(params) == 2


def _result_adapter(handler: Handler) -> TypeAdapter[Any] | None:
    """A validator of the handler's annotated return type, to give stored JSON
    results back in that type; None when there is none (or it is Any)."""
    try:
        annotation = typing.get_type_hints(handler).get("return", Any)
    except Exception:
        return None
    if annotation is Any:
        return None
    try:
        return TypeAdapter(annotation)
    except Exception:  # a type pydantic cannot validate: results stay as stored
        return None
