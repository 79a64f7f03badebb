"""The Node side of the BullMQ interop tests: npm `bullmq` at the version
whose scripts conveyor runs (conveyor/backends/bullmq/scripts.py), installed
under bullmq_node/ from its package-lock.json when missing, and a helper
that runs bullmq_node/bull.mjs with a JSON spec."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from conveyor.backends.bullmq.scripts import NODE_VERSION


def unavailable(reason: str) -> None:
    """Skip, or fail under CI (tests/conftest.py's rule: CI must have Node)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)")
    pytest.skip(reason)


NODE_DIR = Path(__file__).parent / "bullmq_node"

NodeBull = Callable[..., dict[str, Any]]


def _installed_version() -> str | None:
    package = NODE_DIR / "node_modules" / "bullmq" / "package.json"
    if not package.exists():
        return None
    version: str = json.loads(package.read_text())["version"]
    return version


@pytest.fixture(scope="session")
def node_bullmq() -> Path:
    """bullmq_node/ with npm bullmq installed (npm ci on first use)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable("the BullMQ interop tests need node and npm on PATH")
    if _installed_version() != NODE_VERSION:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],  # type: ignore[list-item]
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            unavailable(f"npm ci of bullmq@{NODE_VERSION} failed: {done.stderr[-2000:]}")
    assert _installed_version() == NODE_VERSION
    return NODE_DIR


@pytest.fixture
def bull_queue(redis_server_url: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """A fresh (bullmq:// URL, Node spec base) pair: one BullMQ queue under a
    prefix of its own on the test Redis, removed afterwards."""
    if redis_server_url is None:
        unavailable("the BullMQ interop tests need a Redis server")
    assert redis_server_url is not None
    parts = urlsplit(redis_server_url)
    db = int(parts.path.strip("/") or 0)
    prefix, queue = f"interop-{uuid.uuid4().hex[:10]}", "mixed"
    spec = {
        "redis": {"host": parts.hostname, "port": parts.port or 6379, "db": db},
        "prefix": prefix,
        "queue": queue,
    }
    yield f"bullmq://{parts.netloc}/{db}?queue={queue}&prefix={prefix}", spec
    import redis

    client = redis.Redis.from_url(redis_server_url)
    try:
        for pattern in (f"{prefix}:*", f"{{{prefix}:conveyor}}*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                client.delete(*keys)
    finally:
        client.close()


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
