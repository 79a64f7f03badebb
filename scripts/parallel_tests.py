"""Run the whole test suite as a few pytest processes at once, split by
backend marker, and report as one run.

Most tests wait on servers, workers and timers rather than compute, so on a
small machine five processes finish in about the time of the slowest part
instead of the sum. The split is by marker expression and covers every test
exactly once. Each part's output goes to a log, printed in full when it ends.
Any extra arguments are passed to every part (`-x`, `-k ...`).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

PARTS = [
    ("sqs standard", "sqs and not sqs_fifo"),
    ("sqs fifo", "sqs_fifo"),
    ("pubsub+cloudtasks", "(pubsub or cloudtasks) and not sqs"),
    ("bullmq", "bullmq and not sqs and not pubsub and not cloudtasks"),
    (
        "redis+postgres",
        "not sqs and not pubsub and not cloudtasks and not bullmq and (redis or postgres)",
    ),
    (
        "the rest",
        "not sqs and not pubsub and not cloudtasks and not redis and not postgres and not bullmq",
    ),
]


def main() -> int:
    logs = Path(tempfile.mkdtemp(prefix="conveyor-tests-"))
    started = time.monotonic()
    running = []
    for name, expression in PARTS:
        log = logs / f"{name.replace('+', '-').replace(' ', '-')}.log"
        out = log.open("wb")
        command = [sys.executable, "-m", "pytest", "-m", expression, *sys.argv[1:]]
        running.append((name, command, log, subprocess.Popen(command, stdout=out, stderr=out)))
        print(f"tests: started {name}: {' '.join(command[1:])}", flush=True)
    worst = 0
    for name, _, log, process in running:
        code = process.wait()
        print(f"\n===== {name} (exit {code}, {time.monotonic() - started:.0f} s) =====", flush=True)
        sys.stdout.write(log.read_text(errors="replace"))
        # Exit 5 (nothing collected) is fine for a part a selection empties.
        if code not in (0, 5):
            worst = max(worst, code)
    print(f"\ntests: all parts done in {time.monotonic() - started:.0f} s; logs in {logs}")
    return worst


if __name__ == "__main__":
    sys.exit(main())
