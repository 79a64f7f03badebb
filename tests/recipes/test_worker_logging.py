"""A worker run by an app that configured no logging still shows its lines.

Under uvicorn (or a script) nothing configures the root logger, so INFO lines
of the worker and of `ctx.log` went nowhere. The worker now gives the
"conveyor" logger a stderr handler at start, only when nothing is configured.
"""

from __future__ import annotations

from pathlib import Path

from .helpers import Child, python

SCRIPT = """
import asyncio, logging, sys
from conveyor import Conveyor, JobContext

if sys.argv[1] == "configured":
    logging.basicConfig(level=logging.INFO, format="app-handler %(name)s: %(message)s")

app = Conveyor(sys.argv[2])

@app.job("greet")
async def greet(payload: dict, ctx: JobContext) -> None:
    ctx.log("hello from the handler", to=payload["to"])

async def main() -> None:
    async with app:
        job = await app.enqueue("greet", {"to": "ada"})
        async with app.worker(concurrency=1):
            await app.wait(job.id, timeout=15)
    print("done", flush=True)

asyncio.run(main())
"""


def _run(tmp_path: Path, mode: str) -> str:
    script = tmp_path / "run_worker.py"
    script.write_text(SCRIPT)
    child = Child(python(str(script), mode, f"sqlite:///{tmp_path}/jobs.db"), cwd=tmp_path)
    child.wait_for("done")
    assert child.stop(None) == 0, child.output
    return child.output


def test_a_worker_with_no_logging_configured_shows_its_lines_on_stderr(tmp_path: Path) -> None:
    output = _run(tmp_path, "unconfigured")
    started = [line for line in output.splitlines() if " started: queues=" in line]
    assert len(started) == 1, output
    assert "INFO conveyor.worker:" in started[0], output
    handler_lines = [line for line in output.splitlines() if "hello from the handler" in line]
    assert len(handler_lines) == 1, output
    assert "INFO conveyor.job:" in handler_lines[0], output


def test_logging_the_app_configured_is_left_alone(tmp_path: Path) -> None:
    output = _run(tmp_path, "configured")
    started = [line for line in output.splitlines() if " started: queues=" in line]
    handler_lines = [line for line in output.splitlines() if "hello from the handler" in line]
    # Once each, through the app's own handler: no second copy from conveyor's.
    assert len(started) == 1, output
    assert started[0].startswith("app-handler conveyor.worker:"), output
    assert len(handler_lines) == 1, output
    assert handler_lines[0].startswith("app-handler conveyor.job:"), output
