"""Job types: a name, a handler, its payload model and its default options."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import EllipsisType
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from conveyor.backoff import BackoffLike, as_backoff
from conveyor.codec import encode_json as encode_json  # re-exported: it lived here before
from conveyor.job import InvalidOptionError, InvalidPayloadError, Job

if TYPE_CHECKING:
    from conveyor._sync import Portal

PayloadT = TypeVar("PayloadT")

Handler = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class JobDefaults:
    retries: int = 3
    timeout: float | None = 30.0
    priority: int = 0
    queue: str = "default"

    def __post_init__(self) -> None:
        check_retries(self.retries)
        check_timeout(self.timeout)
        check_priority(self.priority)
        check_queue(self.queue)


def check_retries(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidOptionError(f"retries must be an integer >= 0, got {value!r}")
    return value


def check_timeout(value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e9:
        raise InvalidOptionError(f"timeout must be > 0 seconds or None, got {value!r}")
    return float(value)


PRIORITY_RANGE = range(-1000, 1001)  # every backend can order this range exactly


def check_priority(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in PRIORITY_RANGE:
        raise InvalidOptionError(f"priority must be an integer from -1000 to 1000, got {value!r}")
    return value


def check_queue(value: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 200:
        raise InvalidOptionError(f"queue must be a non-empty name, got {value!r}")
    return value


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
        connection: Any = None,
    ) -> Job: ...

    async def enqueue_many(
        self, items: Iterable[tuple[Any, ...]], *, connection: Any = None
    ) -> list[Job]: ...


class JobType(Generic[PayloadT]):
    """What `@app.job(...)` returns: still callable as the plain function, plus
    typed `enqueue` / `enqueue_many` (and their `_sync` twins)."""

    def __init__(
        self,
        app: Producer,
        name: str,
        handler: Handler,
        defaults: JobDefaults,
        backoff: BackoffLike | None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise InvalidOptionError(f"a job name must be a non-empty string, got {name!r}")
        self.app = app
        self.name = name
        self.handler = handler
        self.defaults = defaults
        self.backoff = as_backoff(backoff)
        self.is_async = inspect.iscoroutinefunction(handler)
        self.model, self.takes_context = _inspect_handler(handler)
        self.__doc__ = handler.__doc__
        self.__wrapped__ = handler

    def __repr__(self) -> str:
        return f"<JobType {self.name!r}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.handler(*args, **kwargs)

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
        return encode_json(payload, f"the payload of job {self.name!r}")

    def decode_payload(self, payload: Any) -> Any:
        """The handler's view of a stored payload (validated again on run)."""
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
        if self.takes_context:
            return self.handler(payload, ctx)
        return self.handler(payload)

    # -- producing

    async def enqueue(
        self,
        payload: PayloadT,
        *,
        key: str | None = None,
        delay: float | None = None,
        run_at: datetime | None = None,
        priority: int | None = None,
        retries: int | None = None,
        timeout: float | EllipsisType | None = ...,
        queue: str | None = None,
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
            connection=connection,
        )

    async def enqueue_many(
        self, payloads: Sequence[PayloadT], *, connection: Any = None, **options: Any
    ) -> list[Job]:
        return await self.app.enqueue_many(
            [(self.name, p, options) for p in payloads], connection=connection
        )

    def enqueue_sync(self, payload: PayloadT, **options: Any) -> Job:
        return self.app.portal.call(lambda: self.enqueue(payload, **options), "enqueue")

    def enqueue_many_sync(self, payloads: Sequence[PayloadT], **options: Any) -> list[Job]:
        return self.app.portal.call(lambda: self.enqueue_many(payloads, **options), "enqueue_many")


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
