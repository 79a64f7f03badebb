"""The one place that turns stored fields into `Job` records."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.backends.base import NewJob
from conveyor.backends.records import entry_text, new_job, stored_entry, stored_job
from conveyor.job import AttemptOutcome, JobState

FIELDS = dict(
    id="j1",
    name="send",
    queue="default",
    payload='{"to":"a"}',
    state="completed",
    attempts=2,
    max_retries=3,
    priority=0,
    key="",
    result='{"ok":true}',
    error="",
    progress=100.0,
    created_at=1_700_000_000.0,
    run_at=1_700_000_000.0,
    started_at=None,
    finished_at=1_700_000_100.5,
    timeout=30.0,
    logs='[{"msg":"hi"}]',
    stalls=0,
    cancel_requested=False,
)


def test_stored_fields_become_a_job_the_same_way_for_every_backend() -> None:
    job = stored_job(**FIELDS)  # type: ignore[arg-type]
    assert job.payload == {"to": "a"} and job.result == {"ok": True}
    assert job.state is JobState.COMPLETED
    assert job.key is None and job.error is None  # empty text is no value
    assert job.finished_at == datetime.fromtimestamp(1_700_000_100.5, UTC)
    assert job.started_at is None
    assert job.logs == [{"msg": "hi"}]


def test_empty_logs_and_results_are_none_or_empty() -> None:
    fields = {**FIELDS, "result": None, "logs": "[]"}
    job = stored_job(**fields)  # type: ignore[arg-type]
    assert job.result is None and job.logs == []
    assert stored_job(**{**FIELDS, "logs": ""}).logs == []  # type: ignore[arg-type]


def test_a_new_job_record_takes_the_times_the_backend_stored() -> None:
    new = NewJob("j2", "send", "default", json.dumps([1]), 0, 3, 30.0, None, 100.0, 160.0)
    job = new_job(new, JobState.SCHEDULED)
    assert job.run_at == datetime.fromtimestamp(160.0, UTC) and job.payload == [1]
    shifted = new_job(new, JobState.SCHEDULED, created_at=200.0, run_at=260.0)
    assert shifted.created_at == datetime.fromtimestamp(200.0, UTC)
    assert shifted.run_at == datetime.fromtimestamp(260.0, UTC)


@settings(max_examples=500, deadline=None)
@given(
    attempt=st.integers(min_value=0, max_value=10**6),
    started_at=st.none() | st.floats() | st.integers(min_value=0, max_value=10**13),
    finished_at=st.floats(),
    outcome=st.sampled_from(list(AttemptOutcome)),
    error=st.none() | st.text(),
)
def test_an_entrys_text_is_its_json(
    attempt: int,
    started_at: float | None,
    finished_at: float,
    outcome: AttemptOutcome,
    error: str | None,
) -> None:
    entry = stored_entry(attempt, started_at, finished_at, outcome, error)
    assert entry_text(attempt, started_at, finished_at, outcome, error) == json.dumps(entry)


def test_an_entrys_text_is_its_json_for_number_subclasses_too() -> None:
    import enum

    class Level(enum.IntEnum):
        ONE = 1

    class Seconds(float):
        def __repr__(self) -> str:
            return "Seconds!"

    for started in (True, Level.ONE, Seconds(2.5), 10**16 * 1.0, -0.0):
        entry = stored_entry(Level.ONE, started, Seconds(3.0), AttemptOutcome.FAILED, "e")
        text = entry_text(Level.ONE, started, Seconds(3.0), AttemptOutcome.FAILED, "e")
        assert text == json.dumps(entry)
