"""The Node side of the BullMQ interop tests: npm `bullmq` at the version
whose scripts conveyor runs (conveyor/backends/bullmq/scripts.py), installed
under bullmq_node/ from its package-lock.json when missing, and a helper
that runs bullmq_node/bull.mjs with a JSON spec."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
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
