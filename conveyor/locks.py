"""Distributed locks with an owner token and a time to live.

Only the holder's token releases or extends a lock; an expired lock can be
taken by anyone. A lock guards against concurrent work for at most `ttl`
seconds: extend it for longer work, and treat it as advisory (a paused holder
can outlive its lock, as with every lease-based lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import cast

from conveyor._sync import Portal, blocking
from conveyor.backends.base import Backend
from conveyor.backends.stores import LockStore
from conveyor.durations import seconds_within
from conveyor.job import InvalidOptionError, NotSupportedError
from conveyor.settings import CONVEYOR_LOCKS_URL


def _check(key: str, ttl: float) -> None:
    if not isinstance(key, str) or not key:
        raise InvalidOptionError(f"a lock key must be a non-empty string, got {key!r}")
    if not seconds_within(ttl, below=1e9):
        raise InvalidOptionError(f"a lock ttl must be > 0 seconds (and finite), got {ttl!r}")


class Locks:
    """`app.locks`: acquire / release / extend by owner token."""

    def __init__(
        self, backend: Callable[[], Awaitable[Backend]], portal: Portal, where: str
    ) -> None:
        # `backend` opens the backend on first use; `where` names it in errors.
        self._backend = backend
        self._portal = portal
        self._where = where

    @property
    def portal(self) -> Portal:
        return self._portal

    async def _store(self) -> LockStore:
        backend = await self._backend()
        if not backend.capabilities.locks:
            raise NotSupportedError(
                f"the backend {self._where} has no locks; put them on one that has "
                f"(Conveyor(..., locks_url=...) or ${CONVEYOR_LOCKS_URL})"
            )
        return cast(LockStore, backend)

    async def acquire(self, key: str, ttl: float, wait: float = 0.0) -> str | None:
        """The owner token, or None if the lock is held by someone else.
        With `wait`, keep trying for up to that many seconds."""
        _check(key, ttl)
        if not seconds_within(wait, allow_zero=True, below=1e9):
            raise InvalidOptionError(f"a lock wait must be >= 0 seconds (and finite), got {wait!r}")
        store = await self._store()
        token = os.urandom(12).hex()
        deadline = time.monotonic() + wait
        pause = 0.01
        while True:
            try:
                taken = await store.lock_acquire(key, token, float(ttl))
            except BaseException:
                # The store may have taken it and its answer been lost: the
                # caller gets no token to release it with, so give it back
                # now (else it is held by nobody for its whole ttl).
                with contextlib.suppress(Exception):
                    await store.lock_release(key, token)
                raise
            if taken:
                return token
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.25)

    async def release(self, key: str, token: str) -> bool:
        """False when `token` does not hold the lock (never held, or expired)."""
        return await (await self._store()).lock_release(key, token)

    async def extend(self, key: str, token: str, ttl: float) -> bool:
        """Hold the lock for `ttl` more seconds from now; False if not held."""
        _check(key, ttl)
        return await (await self._store()).lock_extend(key, token, float(ttl))

    acquire_sync = blocking(acquire)
    release_sync = blocking(release)
    extend_sync = blocking(extend)


@contextlib.asynccontextmanager
async def hold(locks: Locks, key: str, ttl: float, wait: float) -> AsyncIterator[bool]:
    """`async with app.lock(key, ttl=10) as held:` — held is False when
    another owner has the lock; the lock is released on exit if taken."""
    token = await locks.acquire(key, ttl, wait=wait)
    try:
        yield token is not None
    finally:
        if token is not None:
            await locks.release(key, token)
