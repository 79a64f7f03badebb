"""A JSON cache with time to live, shared through the backend.

`wrap` computes a missing value once per process even when many callers ask
for it at the same moment (single flight), then stores it for the others.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from conveyor._sync import Portal, blocking
from conveyor.backends.base import Backend
from conveyor.backends.stores import CacheStore
from conveyor.codec import decode_json, encode_json
from conveyor.durations import seconds_within
from conveyor.job import InvalidOptionError, NotSupportedError
from conveyor.settings import CONVEYOR_CACHE_URL

T = TypeVar("T")


class _Abandoned(Exception):
    """The caller computing a value was cancelled; a waiter takes over."""


def _check(key: str, ttl: float | None) -> None:
    if not isinstance(key, str) or not key:
        raise InvalidOptionError(f"a cache key must be a non-empty string, got {key!r}")
    if ttl is not None and not seconds_within(ttl, below=1e9):
        # Below 1e9 s (31 years): every store's expiry holds it (Redis's does not 1e16).
        raise InvalidOptionError(
            f"a cache ttl must be > 0 seconds (under 1e9) or None, got {ttl!r}"
        )


class Cache:
    """`app.cache`: get / set / delete / wrap, values as JSON."""

    def __init__(
        self, backend: Callable[[], Awaitable[Backend]], portal: Portal, where: str
    ) -> None:
        # `backend` opens the backend on first use; `where` names it in errors.
        self._backend = backend
        self._portal = portal
        self._where = where
        self._inflight: dict[tuple[int, str], asyncio.Future[Any]] = {}

    @property
    def portal(self) -> Portal:
        return self._portal

    async def _store(self) -> CacheStore:
        backend = await self._backend()
        if not backend.capabilities.cache:
            raise NotSupportedError(
                f"the backend {self._where} has no cache; put it on one that has "
                f"(Conveyor(..., cache_url=...) or ${CONVEYOR_CACHE_URL})"
            )
        return cast(CacheStore, backend)

    async def get(self, key: str, default: Any = None) -> Any:
        _check(key, None)
        raw = await (await self._store()).cache_get(key)
        return default if raw is None else decode_json(raw)

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        _check(key, ttl)
        text = encode_json(value, f"the cache value for {key!r}")
        await (await self._store()).cache_set(key, text, ttl)

    async def delete(self, key: str) -> bool:
        _check(key, None)
        return await (await self._store()).cache_delete(key)

    async def wrap(self, key: str, ttl: float | None, compute: Callable[[], T | Awaitable[T]]) -> T:
        """The cached value, or `compute()`'s, stored for `ttl` seconds.
        Concurrent callers in this process share one computation."""
        _check(key, ttl)
        store = await self._store()
        raw = await store.cache_get(key)
        if raw is not None:
            return cast(T, decode_json(raw))
        flight = (id(asyncio.get_running_loop()), key)
        while (pending := self._inflight.get(flight)) is not None:
            try:
                return cast(T, await asyncio.shield(pending))
            except _Abandoned:
                continue  # its caller was cancelled: one of us computes instead
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[flight] = future
        try:
            # Once more, now that later callers wait on us: a caller that
            # computed and left between our read and here (our read being
            # answered as of before its store) has stored the value.
            raw = await store.cache_get(key)
            if raw is not None:
                result = decode_json(raw)
                future.set_result(result)
                return cast(T, result)
            value = compute()
            if inspect.isawaitable(value):
                value = await value
            text = encode_json(value, f"the cache value for {key!r}")
            await store.cache_set(key, text, ttl)
            result = decode_json(text)  # what later readers get back, exactly
            future.set_result(result)
            return cast(T, result)
        except asyncio.CancelledError:
            # Only this caller was cancelled: the others must not be.
            future.set_exception(_Abandoned())
            future.exception()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._inflight[flight]

    get_sync = blocking(get)
    set_sync = blocking(set)
    delete_sync = blocking(delete)
    wrap_sync = blocking(wrap)
