"""A SIGTERM that reaches a worker while it is starting (opening its backend,
its first claims) must shut it down gracefully, not kill the interpreter:
the chaos test once saw a worker that had just logged "started" die of the
signal (exit -15), because the handlers were installed only after start()."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.memory

SCRIPT = textwrap.dedent(
    """
    import asyncio, os, signal
    from conveyor import Conveyor
    from conveyor.worker import Worker

    app = Conveyor("memory://")

    @app.job("noop")
    async def noop(payload):
        return None

    real_start = Worker.start

    async def start_then_signal(self):
        # The signal lands while the worker is still starting.
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.1)
        await real_start(self)

    Worker.start = start_then_signal

    async def main():
        async with app:
            await app.worker(concurrency=1).run()
        print("stopped gracefully", flush=True)

    asyncio.run(main())
    """
)


def test_a_sigterm_during_start_stops_the_worker_gracefully() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "stopped gracefully" in done.stdout
