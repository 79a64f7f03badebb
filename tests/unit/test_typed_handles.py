"""Job handles are generic in payload and result: mypy checks them (issue 8, point 3).

A small program is written to a temporary file and checked with mypy under the
project's own strict configuration (pyproject.toml). Lines marked `# rejected`
must each get an error, and no other line may: so the test shows both that a
wrong payload is caught and that the right one (and the typed result) passes.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = """
from typing import Any, assert_type

from pydantic import BaseModel

from conveyor import Conveyor, Job, JobContext, JobType

app = Conveyor("memory://")


class Welcome(BaseModel):
    to: str
    name: str


class Receipt(BaseModel):
    sent: bool


@app.job("email.welcome", retries=3)
async def welcome(payload: Welcome, ctx: JobContext) -> dict[str, bool]:
    return {"sent": True}


@app.job("email.receipt")
async def receipt(payload: Welcome) -> Receipt:
    return Receipt(sent=True)


@app.job("report.build")
def build(payload: dict[str, int], ctx: JobContext) -> str:
    return "done"


@app.job("report.plain")
def plain(payload: list[str]) -> None:
    return None


producer = Conveyor("memory://")
declared = producer.declare("email.welcome", Welcome, retries=3)
untyped = producer.declare("anything")

assert_type(welcome, JobType[Welcome, dict[str, bool]])
assert_type(receipt, JobType[Welcome, Receipt])
assert_type(build, JobType[dict[str, int], str])
assert_type(plain, JobType[list[str], None])
assert_type(declared, JobType[Welcome, Any])
assert_type(untyped, JobType[Any, Any])
one_parameter: JobType[Welcome] = declared  # the result parameter defaults to Any


async def produce() -> None:
    job: Job = await welcome.enqueue(Welcome(to="a@b.c", name="A"))
    await welcome.enqueue(42)  # rejected
    await welcome.enqueue({"to": "a@b.c", "name": "A"})  # rejected
    await welcome.enqueue_many([Welcome(to="a@b.c", name="A")])
    await welcome.enqueue_many(["x"])  # rejected
    sent = await welcome.result(job, timeout=10)
    assert_type(sent, dict[str, bool])
    assert_type(await receipt.result(job.id), Receipt)
    await build.enqueue({"rows": 3})
    await build.enqueue({"rows": "three"})  # rejected
    await plain.enqueue(["a"])
    await declared.enqueue(Welcome(to="a@b.c", name="A"), delay=60, key="welcome:1")
    await declared.enqueue("a@b.c")  # rejected
    await untyped.enqueue({"anything": ["goes"]})
    text: str = await receipt.result(job)  # rejected


def produce_sync() -> None:
    welcome.enqueue_sync(Welcome(to="a@b.c", name="A"))
    welcome.enqueue_sync(7)  # rejected
    declared.enqueue_many_sync([Welcome(to="a@b.c", name="A")])
    flag: bool = welcome.result_sync("id")["sent"]
    number: int = welcome.result_sync("id")  # rejected
"""


def test_mypy_accepts_the_right_payloads_and_rejects_the_wrong_ones(tmp_path: Path) -> None:
    source = tmp_path / "typed_handles_program.py"
    source.write_text(PROGRAM)
    rejected = {
        number for number, line in enumerate(PROGRAM.splitlines(), 1) if "# rejected" in line
    }
    assert len(rejected) == 8
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--no-error-summary",
            # Its own cache: a shared one replays a same-named module's errors
            # with the path of an earlier run's temporary file.
            "--cache-dir",
            str(tmp_path / "mypy-cache"),
            "--show-error-codes",
            str(source),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if "No module named mypy" in checked.stderr:
        pytest.skip("mypy is not installed")
    errors: dict[int, list[str]] = {}
    for line in checked.stdout.splitlines():
        match = re.match(rf"{re.escape(str(source))}:(\d+): error: (.*)", line)
        if match:
            errors.setdefault(int(match[1]), []).append(match[2])
    report = checked.stdout + checked.stderr
    assert set(errors) == rejected, report
    assert checked.returncode == 1, report
