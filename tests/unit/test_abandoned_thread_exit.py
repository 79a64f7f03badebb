"""A program that runs a worker itself (not `conveyor worker`, which ends
with os._exit) exits once the worker stopped, even while the thread of a
hung sync handler it abandoned still runs: Python joins a thread pool's
threads at exit, and would wait for the handler, maybe for ever."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

PROGRAM = textwrap.dedent(
    """
    import asyncio, threading, time
    from conveyor import Conveyor

    app = Conveyor("memory://")
    started = threading.Event()

    @app.job("hang", timeout=None)
    def hang(payload):
        started.set()
        time.sleep(60)

    async def main():
        async with app:
            await app.enqueue("hang", {})
            async with app.worker(shutdown_timeout=0.3):
                while not started.is_set():
                    await asyncio.sleep(0.01)
        print("worker stopped", flush=True)

    asyncio.run(main())
    """
)


def test_a_program_exits_while_an_abandoned_handler_thread_runs(tmp_path: Path) -> None:
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    began = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=50)
    assert "worker stopped" in done.stdout, done.stderr
    assert time.monotonic() - began < 15, "the program waited for the abandoned thread"
