"""What tests use to start and find the servers they need, and to say a
backend cannot be had (skip, or fail under CI)."""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import time

import pytest


def unavailable(reason: str) -> None:
    """Skip with the reason, or fail when $CI is set (DESIGN section 4)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)")
    pytest.skip(reason)


def require_backend(name: str, module: str) -> None:
    """Skip (or, when $CI is set, fail) unless `module` imports cleanly."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # ImportError, or a half-written module's SyntaxError
        reason = f"{name} backend unavailable: cannot import {module}: {type(exc).__name__}: {exc}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)")
        pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except Exception as exc:  # an HTTP error status still means a server answered
        return hasattr(exc, "code")


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """Stop a process started in a session of its own, with all it started
    (gcloud runs the emulator as a Java child)."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            process.poll()  # reaps gcloud; its Java child is init's to reap
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
    process.wait(timeout=5)
