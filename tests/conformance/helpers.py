"""Small helpers for conformance tests (waiting without sleeping blindly)."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from conveyor import Conveyor, Job, JobState

WAIT = 15.0  # generous: a slow CI box must not fail a correct backend


async def eventually(
    check: Callable[[], Any] | Callable[[], Awaitable[Any]],
    timeout: float = WAIT,
    message: str = "condition",
) -> Any:
    """Poll `check` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        await asyncio.sleep(0.01)


async def wait_state(app: Conveyor, job_id: str, *states: JobState, timeout: float = WAIT) -> Job:
    """Wait until the job is in one of `states` (not only final ones)."""

    async def check() -> Job | None:
        job = await app.get_job(job_id)
        return job if job is not None and job.state in states else None

    wanted = ", ".join(s.value for s in states)
    result: Job = await eventually(check, timeout, f"job {job_id} to be {wanted}")
    return result


async def wait_thread_event(event: threading.Event, timeout: float = WAIT) -> None:
    """Wait for a threading.Event without blocking the loop."""
    if not await asyncio.to_thread(event.wait, timeout):
        raise AssertionError(f"thread event not set within {timeout} s")


async def wait_event(event: asyncio.Event, timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        await event.wait()


def known_bug(request: Any, backends: set[str], reason: str) -> None:
    """Mark the running test xfail (strict) on the given backends only.

    Call it first thing in the test: conformance tests are parametrized over
    backends by fixture, so a static mark would hit every backend."""
    import pytest

    if request.getfixturevalue("backend_name") in backends:
        request.applymarker(pytest.mark.xfail(reason=f"BUG: {reason}", strict=True))


def a_priority(app: Conveyor, value: int) -> int:
    """`value` where the backend holds it, else its absolute value: a negative
    priority where it stands for "some priority other than the default" and
    the backend's priorities start at 0 (BullMQ's)."""
    if app.backend.capabilities.min_priority is None:
        return value
    return abs(value)
