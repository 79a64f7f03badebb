"""An app on the Cloud Tasks emulator (tests/conftest.py starts it), its
endpoint mounted in FastAPI and served by uvicorn on a free loopback port
for the emulator to push to."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor

PROJECT, LOCATION = "conveyor-test", "us-central1"


@dataclass
class Served:
    """An app on a queue of its own, its endpoint served by uvicorn."""

    app: Conveyor
    url: str
    target: str
    queue_path: str
    emulator: str
    calls: dict[str, int] = field(default_factory=dict)

    def tasks(self) -> Any:
        return self.app.backend.client._tasks()  # type: ignore[attr-defined]

    def pending_tasks(self) -> list[str]:
        return [task.name for task in self.tasks().list_tasks(parent=self.queue_path)]

    def pause(self) -> None:
        self.tasks().pause_queue(name=self.queue_path)

    def resume(self) -> None:
        self.tasks().resume_queue(name=self.queue_path)


SECRET = "s3cret-for-tests"


@pytest.fixture
async def served(
    cloudtasks_emulator_host: str,
    free_ports: Callable[[], int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    """Make `served(setup, **endpoint options)`: an app whose jobs
    `setup(app, calls)` registers, its endpoint mounted in FastAPI at /tasks
    and served on a free loopback port."""
    import uvicorn
    from fastapi import FastAPI

    from conveyor.gcp import tasks_endpoint

    monkeypatch.setenv("CONVEYOR_CLOUDTASKS_SECRET", SECRET)
    started: list[tuple[uvicorn.Server, asyncio.Task[None], Served]] = []

    async def serve(setup: Callable[[Conveyor, dict[str, int]], None], **endpoint: Any) -> Served:
        port = free_ports()
        queue = f"q{uuid.uuid4().hex[:12]}"
        # The mount path with its slash: Starlette redirects /tasks to /tasks/,
        # and Cloud Tasks does not follow redirects.
        target = f"http://127.0.0.1:{port}/tasks/"
        url = (
            f"cloudtasks://{PROJECT}/{LOCATION}/{queue}?target={target}&create=true"
            f"&emulator={cloudtasks_emulator_host}&store=sqlite:///{tmp_path / 'jobs.db'}"
        )
        app = Conveyor(url)
        calls: dict[str, int] = {}
        setup(app, calls)
        api = FastAPI()
        api.mount("/tasks", tasks_endpoint(app, **endpoint))
        server = uvicorn.Server(
            uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        )
        task = asyncio.get_running_loop().create_task(server.serve())
        path = f"projects/{PROJECT}/locations/{LOCATION}/queues/{queue}"
        made = Served(app, url, target, path, cloudtasks_emulator_host, calls)
        started.append((server, task, made))
        while not server.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.02)
        await app.open()
        return made

    yield serve
    for server, task, made in started:
        # The emulator keeps a thread per queue until the queue is deleted.
        with contextlib.suppress(Exception):
            made.tasks().delete_queue(name=made.queue_path)
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await made.app.close()
