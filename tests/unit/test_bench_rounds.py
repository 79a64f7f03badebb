"""benchmarks/run.py --rounds: each figure of a peer is the median of its rounds."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

from report import merged, render


def a_round(drain: float, single: float, status: str = "ok", **drain_extra: Any) -> dict[str, Any]:
    return {
        "peer": "conveyor",
        "status": status,
        "elapsed_s": 10.0,
        "phases": {
            "enqueue_single": {"count": 100, "seconds": 100 / single, "rate": single},
            "drain": {"count": 100, "seconds": 100 / drain, "rate": drain, **drain_extra},
            "latency": {"p50_ms": drain / 1000, "p99_ms": 3.0},
        },
    }


def test_each_figure_is_the_median_of_the_rounds() -> None:
    rounds = [a_round(900.0, 50.0), a_round(1200.0, 40.0), a_round(1000.0, 70.0)]
    one = merged(rounds)
    assert one["phases"]["drain"]["rate"] == 1000.0
    assert one["phases"]["enqueue_single"]["rate"] == 50.0
    assert one["phases"]["latency"]["p50_ms"] == 1.0
    assert one["elapsed_s"] == 30.0
    assert one["rounds"]["drain/s (1 worker process)"] == [900.0, 1200.0, 1000.0]


def test_a_round_that_timed_out_has_no_figure_and_says_so() -> None:
    rounds = [
        a_round(900.0, 50.0),
        a_round(10.0, 60.0, status="ok", timeout=True, done=5),
        a_round(1100.0, 70.0),
    ]
    one = merged(rounds)
    assert one["phases"]["drain"]["rate"] == 1000.0  # of the two that finished
    assert one["rounds"]["drain/s (1 worker process)"] == [900.0, None, 1100.0]
    failed = merged([a_round(900.0, 50.0), a_round(1.0, 1.0, status="error: boom")])
    assert failed["status"] == "ok; round 2: error: boom"
    assert failed["phases"]["drain"]["rate"] == 900.0


def test_one_round_is_left_as_it_is() -> None:
    only = a_round(900.0, 50.0)
    assert merged([only]) is only


def test_the_report_shows_every_round() -> None:
    args = argparse.Namespace(
        suite="bullmq",
        jobs=100,
        batch_size=10,
        concurrency=10,
        latency_jobs=5,
        interval=0.02,
        rounds=3,
    )
    meta = {"date": "today", "git": "abc", "server": "Redis", "load": "0", "command": "run"}
    bull = {**a_round(1000.0, 60.0), "peer": "bullmq"}
    rounds = [a_round(900.0, 50.0), a_round(1200.0, 40.0), a_round(1000.0, 70.0)]
    text = render([merged(rounds), merged([bull, bull, bull])], args, meta)
    assert "median of 3 rounds" in text
    assert "| conveyor | 900 | 1,200 | 1,000 |" in text
    assert "1,000 (1.00x)" in text
