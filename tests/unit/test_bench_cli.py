"""`conveyor bench`: the figures, without the worker's line per job."""

from __future__ import annotations

import logging

from click.testing import CliRunner

from conveyor.cli import cli


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_bench_prints_its_table_and_not_a_line_per_job() -> None:
    """Its workers drain thousands of jobs: their INFO line per job would
    bury the table (and cost each job the time of its line)."""
    kept = Kept()
    worker_logger = logging.getLogger("conveyor.worker")
    worker_logger.addHandler(kept)
    before = worker_logger.level
    ours = logging.getLogger("conveyor")
    ours_before, ours.level = ours.level, logging.INFO  # as a worker shows its lines
    try:
        result = CliRunner().invoke(
            cli, ["bench", "--backends", "memory", "--jobs", "300", "--concurrency", "10"]
        )
    finally:
        worker_logger.removeHandler(kept)
        ours.setLevel(ours_before)
    assert result.exit_code == 0, result.output
    assert "drain/s" in result.output and "memory" in result.output
    assert not [m for m in kept.messages if m.startswith("processing job")]
    assert worker_logger.level == before  # left as it was
