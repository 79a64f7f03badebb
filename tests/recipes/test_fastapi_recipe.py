"""docs/recipes/fastapi_app.py: lifespan opens conveyor and runs a worker in
the app's loop; POST enqueues, the job completes, shutdown is clean."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .helpers import RECIPES, WAIT, Child, load_recipe, python


def _poll_until_completed(get: Any, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    while True:
        response = get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["state"] == "completed":
            return body
        assert body["state"] in ("queued", "running"), body
        assert time.monotonic() < deadline, f"job {job_id} not completed: {body}"
        time.sleep(0.02)


@contextlib.asynccontextmanager
async def asgi_lifespan(app: Any) -> AsyncIterator[None]:
    """What an ASGI server does around serving: the lifespan protocol's
    start-up before, its shutdown after (httpx's transport does not)."""
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(app(scope, to_app.get, from_app.put))
    await to_app.put({"type": "lifespan.startup"})
    started = await from_app.get()
    assert started["type"] == "lifespan.startup.complete", started
    try:
        yield
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        stopped = await from_app.get()
        assert stopped["type"] == "lifespan.shutdown.complete", stopped
        await task


async def test_lifespan_runs_a_worker_that_completes_an_enqueued_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_URL", f"sqlite:///{tmp_path}/jobs.db")
    recipe = load_recipe("fastapi_app.py")
    transport = httpx.ASGITransport(app=recipe.api)
    async with (
        asgi_lifespan(recipe.api),
        httpx.AsyncClient(transport=transport, base_url="http://app") as client,
    ):
        response = await client.post("/signup", json={"to": "ada@example.com", "name": "Ada"})
        assert response.status_code == 202, response.text
        job_id = response.json()["job"]
        # The lifespan's worker runs it; nothing else in this test does.
        job = await recipe.conveyor.wait(job_id, timeout=WAIT)
        assert job.state.value == "completed" and job.result == {"sent": True}
        assert (await client.get(f"/jobs/{job_id}")).json()["state"] == "completed"
        assert (await client.get("/jobs/nope")).status_code == 404
    # Shutdown stopped the worker and closed conveyor: what is left is on disk.
    assert not recipe.conveyor._open
    async with recipe.conveyor as reopened:
        again = await reopened.get_job(job_id)
    assert again is not None and again.state.value == "completed"
    assert [entry["msg"] for entry in again.logs] == ["sending"]


def test_under_uvicorn_the_worker_and_ctx_log_lines_appear(tmp_path: Path) -> None:
    pytest.importorskip("uvicorn")
    env_url = f"sqlite:///{tmp_path}/jobs.db"
    env = dict(os.environ, CONVEYOR_URL=env_url)
    server = Child(
        python("-m", "uvicorn", "fastapi_app:api", "--host", "127.0.0.1", "--port", "0"),
        cwd=RECIPES,
        env=env,
    )
    try:
        server.wait_for(" started: queues=")
        running = server.wait_for("Uvicorn running on http://127.0.0.1:")
        base = running.split("Uvicorn running on ")[1].split()[0]
        with httpx.Client(base_url=base, timeout=WAIT) as client:
            response = client.post("/signup", json={"to": "grace@example.com", "name": "Grace"})
            assert response.status_code == 202, response.text
            job_id = response.json()["job"]
            _poll_until_completed(client.get, job_id)
        line = server.wait_for("conveyor.job: email.welcome")
        assert "INFO conveyor.job:" in line and "sending" in line, server.output
    finally:
        code = server.stop(signal.SIGINT)
    assert code == 0, server.output
    server.wait_for(" stopped: ")  # the lifespan's shutdown stopped the worker
    assert "Traceback" not in server.output, server.output
