"""The example pytest file of the README's "Testing your jobs" section runs
green, as a user would run it (its own pytest process, no fixtures of ours)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "test_example_jobs.py"


def test_the_readme_example_test_file_passes() -> None:
    readme = (ROOT / "README.md").read_text()
    # The README shows the file as it is: the two cannot drift apart.
    assert f"```python\n{EXAMPLE.read_text()}```" in readme
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(EXAMPLE), "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout, done.stdout
