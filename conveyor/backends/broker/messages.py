"""What a broker message carries (SQS, Pub/Sub).

With a store, a message is a pointer: the job's id, name and queue (the name
so a worker can leave a job type it has no handler for without asking the
store). Without one, the message is the job: everything a worker needs to
run it, since there is nowhere else to read it from. Either way a body is one
JSON object with a version, so a future format can be told apart.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Final

from conveyor.backends.base import NewJob
from conveyor.backends.records import decode_headers
from conveyor.job import Job, JobState, utc

VERSION: Final = 1
COUNT_RECEIVES: Final = "count_receives"


@dataclass(slots=True)
class Pointer:
    id: str
    name: str
    queue: str
    group: str | None = None  # FIFO: the job's message group, when it named one
    # Bare messages only: the rest of the job.
    job: dict[str, Any] | None = None


def pointer_body(job_id: str, name: str, queue: str, group: str | None = None) -> str:
    data = {"v": VERSION, "id": job_id, "name": name, "queue": queue}
    if group is not None:
        data["group"] = group
    return json.dumps(data)


def job_body(new: NewJob, attempts: int = 0, count_receives: bool = True) -> str:
    """A bare message: the job itself. `attempts` counts the attempts made
    before this message was sent (a retry sent again); the receives of this
    message add to it, unless `count_receives` is False (a delayed Pub/Sub
    message, whose early pulls are deliveries too): then each receive is
    taken for the first."""
    extra = {} if count_receives else {COUNT_RECEIVES: False}
    head = json.dumps(
        {
            **extra,
            "v": VERSION,
            "id": new.id,
            "name": new.name,
            "queue": new.queue,
            "max_retries": new.max_retries,
            "timeout": new.timeout,
            "key": new.key,
            "group": new.group,
            "created_at": new.created_at,
            "run_at": new.run_at,
            "attempts": attempts,
            # The enqueue's trace context (Job.headers), when there is one.
            **({"headers": json.loads(new.headers)} if new.headers else {}),
        }
    )
    # The payload is JSON text already: spliced in, not decoded and encoded again.
    return f'{head[:-1]}, "payload": {new.payload}}}'


def body_size(body: str) -> int:
    return len(body.encode())


def parse(body: str) -> Pointer | None:
    """The message's job, or None for a body conveyor did not write."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("v") != VERSION:
        return None
    try:
        pointer = Pointer(id=str(data["id"]), name=str(data["name"]), queue=str(data["queue"]))
        group = data.get("group")
        pointer.group = None if group is None else str(group)
    except KeyError:
        return None
    if "payload" in data:
        pointer.job = data
    return pointer


def bare_job(data: dict[str, Any], receives: int, token: str, now: float | None = None) -> Job:
    """The running job a bare message describes, on its `receives`-th delivery."""
    now = time.time() if now is None else now
    return Job(
        id=str(data["id"]),
        name=str(data["name"]),
        queue=str(data["queue"]),
        payload=data.get("payload"),
        state=JobState.RUNNING,
        attempts=attempts_of(data, receives),
        max_retries=int(data.get("max_retries", 0)),
        key=data.get("key"),
        created_at=utc(data.get("created_at")),
        run_at=utc(data.get("run_at")),
        started_at=utc(now),
        timeout=data.get("timeout"),
        token=token,
        headers=decode_headers(data.get("headers")),
    )


def attempts_of(data: dict[str, Any], receives: int) -> int:
    """The attempts of a bare message's job on its `receives`-th delivery."""
    return int(data.get("attempts", 0)) + (receives if data.get(COUNT_RECEIVES, True) else 1)


def enqueued_record(new: NewJob, state: JobState, run_at: float) -> Job:
    """The record an enqueue returns for a job sent as a bare message."""
    return Job(
        id=new.id,
        name=new.name,
        queue=new.queue,
        payload=json.loads(new.payload),
        state=state,
        max_retries=new.max_retries,
        priority=new.priority,
        key=new.key,
        created_at=utc(new.created_at),
        run_at=utc(run_at),
        timeout=new.timeout,
        headers=decode_headers(new.headers),
    )
