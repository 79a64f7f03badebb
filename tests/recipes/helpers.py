"""Helpers for the recipe tests: the recipes imported from docs/recipes, and
child processes whose output is read as it comes.

Waiting is polling with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

RECIPES = Path(__file__).resolve().parents[2] / "docs" / "recipes"
PROJECT_ROOT = RECIPES.parents[1]
WAIT = 20.0


class Child:
    """A child process with stdout and stderr merged and collected line by line."""

    def __init__(self, args: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        environment = dict(os.environ if env is None else env)
        environment["PYTHONUNBUFFERED"] = "1"
        # The child imports this worktree's conveyor, wherever it runs.
        paths = [str(PROJECT_ROOT), environment.get("PYTHONPATH", "")]
        environment["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        self.proc = subprocess.Popen(
            list(args),
            cwd=cwd,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = WAIT) -> str:
        """The first output line containing `text`; fails with the output so far."""
        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.lines):
                if text in line:
                    return line
            if self.proc.poll() is not None and not self._reader.is_alive():
                raise AssertionError(
                    f"exited {self.proc.returncode} before {text!r}:\n{self.output}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} after {timeout} s:\n{self.output}")
            time.sleep(0.02)

    def stop(self, sig: signal.Signals | None = signal.SIGTERM, timeout: float = WAIT) -> int:
        """Send `sig` (None: send nothing, it exits by itself) and wait for the
        exit; returns the exit code."""
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


_loaded = itertools.count()


def load_recipe(file_name: str) -> ModuleType:
    """Import docs/recipes/<file_name> afresh (a new module, so a new Conveyor
    built from the environment of the test that loads it)."""
    path = RECIPES / file_name
    name = f"recipe_{path.stem}_{next(_loaded)}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pydantic resolves the module's annotations through it
    spec.loader.exec_module(module)
    return module
