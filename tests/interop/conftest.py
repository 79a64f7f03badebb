"""The Node side of the BullMQ interop tests: npm `bullmq` at the version
whose scripts conveyor runs (conveyor/backends/bullmq/scripts.py) and Bull
Board, installed under bullmq_node/ from its package-lock.json when missing,
and helpers that run bullmq_node/bull.mjs with a JSON spec."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from conveyor.backends.bullmq.scripts import NODE_VERSION
from conveyor.backends.bullmq.url import parse_url


def unavailable(reason: str) -> None:
    """Skip, or fail under CI (tests/conftest.py's rule: CI must have Node)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)")
    pytest.skip(reason)


NODE_DIR = Path(__file__).parent / "bullmq_node"

NodeBull = Callable[..., dict[str, Any]]


def _installed_version(package: str) -> str | None:
    manifest = NODE_DIR / "node_modules" / package / "package.json"
    if not manifest.exists():
        return None
    version: str = json.loads(manifest.read_text())["version"]
    return version


def _installed_as_pinned() -> bool:
    """Every dependency of bullmq_node/package.json installed at its pin (a
    checkout that gained a dependency since its last npm ci has not)."""
    pins: dict[str, str] = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]
    return all(_installed_version(name) == pin for name, pin in pins.items())


@pytest.fixture(scope="session")
def node_bullmq() -> Path:
    """bullmq_node/ with its npm packages installed (npm ci on first use)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable("the BullMQ interop tests need node and npm on PATH")
    if not _installed_as_pinned():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],  # type: ignore[list-item]
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            unavailable(f"npm ci of bullmq@{NODE_VERSION} failed: {done.stderr[-2000:]}")
    assert _installed_version("bullmq") == NODE_VERSION and _installed_as_pinned()
    return NODE_DIR


@pytest.fixture
def bull_queue(bullmq_urls: Callable[[], str]) -> tuple[str, dict[str, Any]]:
    """A fresh bullmq:// URL (its own prefix on the test Redis, removed
    afterwards by `bullmq_urls`) and the same queue as bull.mjs's spec."""
    url = bullmq_urls()
    config = parse_url(url)
    server = urlsplit(config.redis_url)
    redis = {"host": server.hostname, "port": server.port or 6379, "db": int(server.path[1:] or 0)}
    return url, {"redis": redis, "prefix": config.prefix, "queue": config.queue}


@pytest.fixture
def node_bull(node_bullmq: Path) -> NodeBull:
    """Run bull.mjs with `spec` (plus `extra`) and return its JSON answer."""

    def run(spec: dict[str, Any], timeout: float = 60, **extra: Any) -> dict[str, Any]:
        done = subprocess.run(
            ["node", str(node_bullmq / "bull.mjs"), json.dumps({**spec, **extra})],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, done.stderr
        answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return answer

    return run


BoardGet = Callable[[str], Awaitable[Any]]


@pytest.fixture
async def bull_board(
    node_bullmq: Path, bull_queue: tuple[str, dict[str, Any]]
) -> AsyncIterator[BoardGet]:
    """Bull Board over the test's queue, served by Node (bull.mjs board) on a
    loopback port; yields a GET of a path of its JSON API, as its UI calls it."""
    spec = {**bull_queue[1], "command": "board"}
    server = await asyncio.create_subprocess_exec(
        "node", str(node_bullmq / "bull.mjs"), json.dumps(spec), stdout=subprocess.PIPE
    )
    try:
        assert server.stdout is not None
        started = await asyncio.wait_for(server.stdout.readline(), timeout=30)
        assert started, "Bull Board's server exited before it listened"
        base = f"http://127.0.0.1:{json.loads(started)['port']}/board"
        # No proxy from the environment: the board is on loopback.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        def fetch(path: str) -> Any:
            with opener.open(base + path, timeout=10) as response:
                return json.load(response)

        async def get(path: str) -> Any:
            return await asyncio.to_thread(fetch, path)

        yield get
    finally:
        server.kill()
        await server.wait()
