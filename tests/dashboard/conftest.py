"""Fixtures for the dashboard's browser tests: Debian's Chromium (installed
with apt-get when missing, as CI's fresh machine needs), driven by
Playwright through its executable path: no browser download."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from availability import unavailable

CHROMIUM = "/usr/bin/chromium"


def install_chromium() -> str | None:
    """apt-get install chromium, when this process may; why not, else None."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "not root with apt-get: run `apt-get install chromium` yourself"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            return f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}"
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of a Chromium Playwright can drive (skips, or fails under CI,
    when there is none and none can be installed)."""
    if not os.path.exists(CHROMIUM):
        why = install_chromium()
        if not os.path.exists(CHROMIUM):
            unavailable(f"no Chromium at {CHROMIUM} and it could not be installed: {why}")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        unavailable(f"playwright is not installed (pip install -e '.[test]'): {exc}")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    # Module scope, not session: Playwright's sync API keeps an event loop
    # running in this thread while it is open, and pytest-asyncio cannot run
    # the async tests of later modules beside it.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            yield launched
        finally:
            launched.close()
