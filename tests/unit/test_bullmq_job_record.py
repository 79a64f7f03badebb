"""bullmq:// reads a job hash into a `Job` itself (layout.job_from_hash, on
every claimed job) rather than through records.stored_job: the record must
be the one stored_job makes of the same stored values, for any hash a
Node producer, BullMQ's scripts or conveyor may leave."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from conveyor.backends.bullmq.layout import (
    CANCEL_REQUESTED,
    CANCELLED,
    HEADERS_OPTION,
    HISTORY,
    TIMEOUT_OPTION,
    job_from_hash,
)
from conveyor.backends.records import entry_text, stored_job
from conveyor.job import AttemptOutcome, Job, JobState

MS = st.integers(min_value=0, max_value=4_000_000_000_000)
TEXT = st.text(max_size=12)
JSON_VALUE = st.one_of(st.none(), st.integers(), TEXT, st.lists(st.integers(), max_size=3))


@st.composite
def opts(draw: st.DrawFn) -> str:
    found: dict[str, Any] = {}
    if draw(st.booleans()):
        found["attempts"] = draw(st.integers(min_value=0, max_value=9))
    if draw(st.booleans()):
        found["jobId"] = draw(st.one_of(TEXT, st.just("")))
    if draw(st.booleans()):
        found[TIMEOUT_OPTION] = draw(st.one_of(st.integers(0, 99), st.floats(0, 99), TEXT))
    if draw(st.booleans()):
        found[HEADERS_OPTION] = draw(
            st.one_of(st.just(json.dumps({"traceparent": "00-ab-cd-01"})), st.integers())
        )
    if draw(st.booleans()):
        found["delay"] = draw(st.integers(0, 10_000))
    return json.dumps(found)


@st.composite
def job_hashes(draw: st.DrawFn) -> dict[str, str]:
    # A timestamp is an integer's text, now and then a float's (Date.now() / 1000 * 1000).
    made = draw(st.one_of(st.builds(str, MS), st.builds(lambda ms: f"{ms}.25", MS)))
    fields: dict[str, str] = {"name": draw(TEXT), "timestamp": made}
    optional = {
        "data": st.builds(json.dumps, JSON_VALUE),
        "opts": opts(),
        "delay": st.builds(str, st.integers(0, 100_000)),
        "priority": st.builds(str, st.integers(0, 2_000_000)),
        "ats": st.builds(str, st.integers(0, 9)),
        "stc": st.builds(str, st.integers(0, 9)),
        "processedOn": st.builds(str, MS),
        "finishedOn": st.builds(str, MS),
        "progress": st.one_of(st.builds(str, st.integers(0, 100)), st.just('{"step": 2}')),
        "returnvalue": st.one_of(st.builds(json.dumps, JSON_VALUE), st.just("")),
        "failedReason": st.one_of(TEXT, st.just("")),
        "stacktrace": st.one_of(
            st.builds(json.dumps, st.lists(TEXT, max_size=2)), st.just("not json")
        ),
        CANCEL_REQUESTED: st.just("1"),
        CANCELLED: st.just("1"),
        HISTORY: st.one_of(
            st.just("[]"),
            st.builds(
                lambda n, s, f: "[" + entry_text(n, s, f, AttemptOutcome.FAILED, "boom") + "]",
                st.integers(1, 5),
                st.floats(0, 2e9),
                st.floats(0, 2e9),
            ),
        ),
    }
    for name, values in optional.items():
        if draw(st.booleans()):
            fields[name] = draw(values)
    return fields


def log_entry(line: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"msg": line}


def through_stored_job(
    job_id: str,
    queue: str,
    fields: dict[str, str],
    state: JobState,
    token: str | None,
    logs: list[str],
) -> Job:
    """The hash's values as stored, given to the generic record maker."""
    get = fields.get
    try:
        opts = json.loads(get("opts") or "{}") or {}
    except ValueError:
        opts = get("opts")
    created = int(float(get("timestamp") or 0))
    if state is JobState.FAILED and get(CANCELLED):
        state = JobState.CANCELLED
    done = state is JobState.COMPLETED
    try:
        progress = json.loads(get("progress") or "0")
    except ValueError:
        progress = 0
    try:
        traces = json.loads(get("stacktrace") or "[]")
    except ValueError:
        traces = get("stacktrace")
    timeout = opts.get(TIMEOUT_OPTION)
    headers = opts.get(HEADERS_OPTION)
    processed, finished = get("processedOn"), get("finishedOn")
    return stored_job(
        id=job_id,
        name=get("name", ""),
        queue=queue,
        payload=get("data") or "null",
        state=state,
        attempts=int(get("ats") or 0),
        max_retries=max(int(opts.get("attempts") or 1) - 1, 0),
        priority=int(get("priority") or 0),
        key=opts.get("jobId"),
        result=get("returnvalue") if done else None,
        error=None if done else get("failedReason"),
        progress=float(progress) if isinstance(progress, (int, float)) else 0.0,
        created_at=created / 1000,
        run_at=(created + int(float(get("delay") or 0))) / 1000,
        started_at=int(processed) / 1000 if processed else None,
        finished_at=int(finished) / 1000 if finished else None,
        timeout=float(timeout) if isinstance(timeout, (int, float)) else None,
        logs=[log_entry(line) for line in logs],
        stalls=int(get("stc") or 0),
        cancel_requested=bool(get(CANCEL_REQUESTED)),
        token=token,
        traceback=str(traces[-1]) if not done and isinstance(traces, list) and traces else None,
        history=get(HISTORY),
        headers=headers if isinstance(headers, str) else None,
    )


@settings(max_examples=400, deadline=None)
@given(
    fields=job_hashes(),
    state=st.sampled_from(list(JobState)),
    token=st.one_of(st.none(), st.just("w/1")),
    logs=st.lists(st.one_of(TEXT, st.just('{"msg": "sent", "n": 1}'), st.just("[1]")), max_size=3),
)
@example(
    fields={"name": "a", "timestamp": "1", "stacktrace": '["first", ""]'},
    state=JobState.FAILED,
    token=None,
    logs=[],
)
def test_a_hash_reads_as_stored_job_makes_it(
    fields: dict[str, str], state: JobState, token: str | None, logs: list[str]
) -> None:
    made = job_from_hash("7", "default", fields, state, logs=logs, token=token)
    assert made == through_stored_job("7", "default", fields, state, token, logs)
