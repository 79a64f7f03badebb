"""README.md runs as written: every ```python, ```bash and ```sh block.

The blocks run in the order they appear, as one tutorial against one fresh
SQLite database (CONVEYOR_URL) in a fresh directory:

- the Python block whose first line is `# path/to/module.py` is written to that
  file (the tutorial's app module, imported by the blocks after it and by
  `conveyor worker`);
- every other Python block runs in one long-lived interpreter, so names carry
  from block to block; top-level `await` runs on that interpreter's one event
  loop, and a block without `await` runs outside it (the `_sync` twins refuse
  to run inside a running loop);
- shell blocks run through bash with the `conveyor` command on PATH and
  JOB_ID set to the tutorial's failed job (the README says where ids come from).

An HTML comment right before a block says when it cannot run as is:
`<!-- readme-test: skip (why) -->`, or `<!-- readme-test: stop after N s (why) -->`
for a command that runs until Ctrl-C (a worker): it gets SIGINT N seconds
after it starts, once it has logged its start-up line, and must then exit
cleanly (status 0, no traceback). Each block is its own test, named by its line; skipped
blocks show their reason in pytest's summary.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor import Conveyor, JobState

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
CONVEYOR_DIR = os.path.dirname(conveyor.__file__)
BLOCK_TIMEOUT = 30.0
STARTED_LINE = " started: "  # the worker's start-up log line

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_MARKER = re.compile(r"<!--\s*readme-test:\s*(.*?)\s*-->", re.DOTALL)
_SKIP = re.compile(r"skip\s*\((.+)\)$", re.DOTALL)
_STOP = re.compile(r"stop after (\d+(?:\.\d+)?) s\s*\((.+)\)$", re.DOTALL)
_MODULE_LINE = re.compile(r"#\s*([\w/]+\.py)\s*$")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    language: str  # "python" or "bash"
    code: str
    skip: str | None = None  # the reason, when marked skip
    stop_after: float | None = None  # seconds before SIGINT, when marked so

    @property
    def module_path(self) -> str | None:
        """`myapp/jobs.py` for a block that starts with `# myapp/jobs.py`."""
        first = self.code.split("\n", 1)[0]
        found = _MODULE_LINE.fullmatch(first.strip()) if self.language == "python" else None
        return found.group(1) if found else None

    @property
    def test_id(self) -> str:
        return f"line{self.line}-{self.language}"


def readme_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    for fence in _FENCE.finditer(text):
        language = {"python": "python", "py": "python", "bash": "bash", "sh": "bash"}.get(
            fence.group(1).lower()
        )
        if language is None:
            continue  # output, URL lists, plain text
        line = text.count("\n", 0, fence.start()) + 1
        before = text[: fence.start()].rstrip()
        # Only a comment right before the fence counts.
        last_comment = before[before.rfind("<!--") :] if before.endswith("-->") else ""
        marker = _MARKER.fullmatch(last_comment)
        skip = stop_after = None
        if marker is not None:
            directive = marker.group(1)
            if found := _SKIP.fullmatch(directive):
                skip = found.group(1)
            elif found := _STOP.fullmatch(directive):
                stop_after = float(found.group(1))
            else:
                raise AssertionError(f"README.md:{line}: unknown readme-test marker {directive!r}")
        blocks.append(Block(line, language, fence.group(2), skip, stop_after))
    return blocks


BLOCKS = readme_blocks(README.read_text())


def test_readme_has_runnable_blocks() -> None:
    # The tutorial is there and most of it runs: a marker cannot quietly
    # switch the README test off.
    assert sum(1 for b in BLOCKS if b.module_path) == 1
    ran = [b for b in BLOCKS if b.skip is None]
    assert len(ran) >= 8, [b.test_id for b in ran]
    assert all(b.skip.strip() for b in BLOCKS if b.skip is not None)


# --------------------------------------------------------------------------- the run

# The interpreter the Python blocks share. It reads one JSON request a line on
# stdin and answers one JSON line on its real stdout; what the blocks print
# goes to stderr (a file), so it cannot be mistaken for an answer.
_DRIVER = r"""
import ast, asyncio, inspect, json, sys, traceback
answers = sys.stdout
sys.stdout = sys.stderr
loop = asyncio.new_event_loop()
namespace = {"__name__": "__main__"}
for request in sys.stdin:
    block = json.loads(request)
    print(f"--- README.md:{block['line']}", flush=True)
    try:
        code = compile(block["code"], f"README.md:{block['line']}", "exec",
                       flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        result = eval(code, namespace)
        if inspect.iscoroutine(result):
            loop.run_until_complete(result)
        answer = {"ok": True}
    except BaseException:
        answer = {"ok": False, "error": traceback.format_exc()}
    sys.stderr.flush()
    answers.write(json.dumps(answer) + "\n")
    answers.flush()
"""


class Tutorial:
    """One directory, one database, one interpreter: the README's reader."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.url = f"sqlite:///{workdir / 'tutorial.db'}"
        bin_dir = str(Path(sys.executable).parent)  # the venv's, with `conveyor` in it
        assert shutil.which("conveyor", path=bin_dir), f"no conveyor script in {bin_dir}"
        self.env = dict(
            os.environ,
            CONVEYOR_URL=self.url,
            PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""),
            PYTHONUNBUFFERED="1",
        )
        self.python_log = workdir / "python-blocks.log"
        self._log = self.python_log.open("w")
        self.driver = subprocess.Popen(
            [sys.executable, "-c", _DRIVER],
            cwd=workdir,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self._answers: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read_answers, daemon=True)
        self._reader.start()

    def _read_answers(self) -> None:
        assert self.driver.stdout is not None
        for line in self.driver.stdout:
            self._answers.put(line)

    def run(self, block: Block) -> str | None:
        """None when the block ran, else what went wrong."""
        if block.module_path is not None:
            target = self.workdir / block.module_path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.code)
            return None
        if block.language == "python":
            return self._run_python(block)
        return self._run_shell(block)

    def _run_python(self, block: Block) -> str | None:
        assert self.driver.stdin is not None
        self.driver.stdin.write(json.dumps({"line": block.line, "code": block.code}) + "\n")
        self.driver.stdin.flush()
        try:
            answer = json.loads(self._answers.get(timeout=BLOCK_TIMEOUT))
        except queue.Empty:
            self.close()  # a stuck interpreter cannot run the blocks after this one
            return f"no answer within {BLOCK_TIMEOUT:.0f} s"
        return None if answer["ok"] else str(answer["error"])

    def _run_shell(self, block: Block) -> str | None:
        env = dict(self.env, JOB_ID=self.failed_job_id())
        output_path = self.workdir / f"shell-{block.line}.out"
        with output_path.open("w") as output_file:
            proc = subprocess.Popen(
                ["bash", "-euo", "pipefail", "-c", block.code],
                cwd=self.workdir,
                env=env,
                stdout=output_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, for the stop signal
            )
            failure = self._wait_or_stop(proc, block, output_path)
        output = output_path.read_text()
        if failure is not None:
            return f"{failure}:\n{output}"
        if proc.returncode != 0:
            return f"exit status {proc.returncode}:\n{output}"
        # A failed job's traceback is shown on purpose (the worker's log, `jobs
        # show`); one that runs through conveyor's own code is a crash.
        if "Traceback" in output and f'File "{CONVEYOR_DIR}' in output:
            return f"printed a traceback from conveyor's code:\n{output}"
        return None

    def _wait_or_stop(self, proc: subprocess.Popen[bytes], block: Block, log: Path) -> str | None:
        if block.stop_after is not None:
            # SIGINT (Ctrl-C) after the block's seconds, and not before the
            # command says it started: a slow start must not turn the signal
            # into a KeyboardInterrupt during imports.
            started = time.monotonic()
            deadline = started + BLOCK_TIMEOUT
            while proc.poll() is None and time.monotonic() < deadline:
                running_for = time.monotonic() - started
                if running_for >= block.stop_after and STARTED_LINE in log.read_text():
                    os.killpg(proc.pid, signal.SIGINT)
                    break
                time.sleep(0.1)
            if proc.poll() is not None:
                return f"exited before it was stopped (status {proc.returncode})"
        try:
            proc.wait(timeout=BLOCK_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return f"did not finish within {BLOCK_TIMEOUT:.0f} s"
        return None

    def failed_job_id(self) -> str:
        """The id the shell blocks use as $JOB_ID: the tutorial's failed job
        (empty until there is one)."""
        if not (self.workdir / "tutorial.db").exists():
            return ""
        app = Conveyor(self.url)
        try:
            failed = app.list_jobs_sync(state=JobState.FAILED, limit=1)
        finally:
            app.close_sync()
        return failed[0].id if failed else ""

    def close(self) -> None:
        assert self.driver.stdin is not None and self.driver.stdout is not None
        if self.driver.poll() is None:
            self.driver.kill()
        self.driver.wait()
        self._reader.join()
        self.driver.stdin.close()
        self.driver.stdout.close()
        self._log.close()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, str | None]]:
    """Runs every block in order once; maps a block's line to its failure."""
    tutorial = Tutorial(tmp_path_factory.mktemp("readme"))
    results: dict[int, str | None] = {}
    try:
        for block in BLOCKS:
            if block.skip is None:
                results[block.line] = tutorial.run(block)
        results[0] = tutorial.python_log.read_text()  # shown with a failure
        yield results
    finally:
        tutorial.close()


@pytest.mark.parametrize("block", BLOCKS, ids=[b.test_id for b in BLOCKS])
def test_readme_block_runs(block: Block, outcomes: dict[int, Any]) -> None:
    if block.skip is not None:
        pytest.skip(f"README.md:{block.line} marked: {block.skip}")
    failure = outcomes[block.line]
    if failure is not None:
        log = outcomes[0] if block.language == "python" else ""
        pytest.fail(
            f"README.md:{block.line} ({block.language}) fails as written:\n{block.code}\n"
            f"{failure}\n{log}",
            pytrace=False,
        )


# --------------------------------------------------------------------------- the demo's hints


def test_demo_suggests_commands_that_run_without_conveyor_on_path(tmp_path: Path) -> None:
    # As after ./scripts/demo: conveyor is installed in a virtualenv that is
    # not activated, so the bare `conveyor` the demo used to suggest was not found.
    bin_dir = Path(sys.executable).parent
    path = os.pathsep.join(
        entry
        for entry in os.environ.get("PATH", "").split(os.pathsep)
        if entry and not (Path(entry) / "conveyor").exists()
    )
    env = dict(os.environ, PATH=path, COLUMNS="200")  # no wrapped commands
    env.pop("CONVEYOR_URL", None)
    demo = subprocess.run(
        [sys.executable, "-m", "conveyor", "demo", "--jobs", "6"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    lines = [line.strip("│ \t") for line in demo.stdout.splitlines()]
    commands = [line for line in lines if " --url " in line]
    assert len(commands) == 4, demo.stdout

    app = Conveyor(f"sqlite:///{tmp_path / 'conveyor-demo.db'}")
    try:
        some_job = app.list_jobs_sync(limit=1)[0]
    finally:
        app.close_sync()
    for command in commands:
        command = command.replace(" ID", f" {some_job.id}")
        ran = subprocess.run(
            ["bash", "-c", command],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert ran.returncode == 0, f"{command}\n{ran.stdout}{ran.stderr}"
    # and how to put conveyor on PATH for good
    if (bin_dir / "activate").exists():
        assert any("source " in line and "activate" in line for line in lines), demo.stdout
