"""CONVEYOR_LOG_FORMAT=json also shapes the lines of a worker started where
nothing configured logging (under uvicorn, a script): conveyor's own stderr
handler writes JSON then, and a bad value is a clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.memory

CODE = """
import asyncio
from conveyor import Conveyor

app = Conveyor("memory://")


@app.job("hello")
async def hello(payload: str) -> str:
    return payload


async def main() -> None:
    async with app.worker(poll_interval=0.05):
        await app.wait((await app.enqueue("hello", "x")).id, timeout=10)


asyncio.run(main())
"""


def run(log_format: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CONVEYOR_LOG_FORMAT=log_format)
    return subprocess.run(
        [sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=False
    )


def test_an_unconfigured_process_gets_json_lines() -> None:
    done = run("json")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    (completed,) = [line for line in lines if line.get("event") == "completed"]
    assert (completed["job_name"], completed["queue"], completed["attempt"]) == (
        "hello",
        "default",
        1,
    )
    assert any(" started: " in line["message"] for line in lines)


def test_a_bad_format_says_what_is_allowed() -> None:
    done = run("yaml")
    assert done.returncode != 0
    assert "log format must be one of text, json, got 'yaml'" in done.stderr
