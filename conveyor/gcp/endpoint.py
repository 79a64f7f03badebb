"""The endpoint Cloud Tasks pushes jobs to: a plain ASGI app (no framework
needed; mount it in FastAPI or Starlette, or serve it with uvicorn).

For each POST it verifies the request (verify.py), leases the job in the
store, runs its handler within the job's timeout (worker/attempt.py, as a
worker would, keeping the lease by heartbeat meanwhile), records the
outcome in the store with the worker's acknowledgements (so the same
events fire), and answers:

* 200: the job completed, failed for good (Permanent, retries used up) or
  was cancelled, or there was nothing left to do (already final, gone):
  Cloud Tasks drops the task.
* 500: the attempt failed and the job has retries left: Cloud Tasks
  dispatches the task again when the queue's retry configuration says.
* 503 (Retry-After): not done now; try again: the job is not due yet by
  the store's clock, runs under another dispatch, lost its lease, has no
  handler here, or the store could not be reached.
* 400/401/403/405/413: a request that is not a task of ours; the job (if
  any) is untouched.

The attempt number is the store's (`ctx.attempt`), which counts the
handler's runs; Cloud Tasks' X-CloudTasks-TaskRetryCount also counts the
dispatches answered 503 above, so it is only logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from conveyor.backends.base import Heartbeat, LeaseStatus, Outcome, OutcomeKind
from conveyor.backends.cloudtasks.backend import CloudTasksBackend, Pushed
from conveyor.context import JobContext
from conveyor.gcp.verify import RETRY_HEADER, TASK_HEADER, Verifier
from conveyor.job import InvalidOptionError, Job
from conveyor.outage import Outage
from conveyor.registry import handled
from conveyor.worker.acks import CANCELLED, LOST, Acknowledgements, handed_back, token_of
from conveyor.worker.attempt import run_attempt
from conveyor.worker.threads import HandlerThreads

if TYPE_CHECKING:
    from conveyor.app import Conveyor

logger = logging.getLogger("conveyor.gcp")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY: Final = 64 * 1024  # a task's body is a job id and names
RECORD_TIMEOUT: Final = 30.0  # for the store to take an outcome
RETRY_AFTER: Final = "5"


class TasksEndpoint:
    """`conveyor.gcp.tasks_endpoint(app)`: see the module docstring."""

    def __init__(
        self,
        app: Conveyor,
        *,
        secret: str | None,
        audience: str | None,
        service_account: str | None,
        lease: float,
        max_stalled: int,
        threads: int,
    ) -> None:
        backend = app.backend
        if not isinstance(backend, CloudTasksBackend):
            raise InvalidOptionError(
                f"tasks_endpoint needs an app on a cloudtasks:// URL, not {app.url!r}"
            )
        if lease <= 0 or threads < 1 or max_stalled < 0:
            raise InvalidOptionError(
                f"tasks_endpoint: lease must be > 0, threads >= 1 and max_stalled >= 0 "
                f"(got lease={lease}, threads={threads}, max_stalled={max_stalled})"
            )
        self.app = app
        self.backend = backend
        self.lease = lease
        self.max_stalled = max_stalled
        if service_account is not None and audience is None:
            # The token's email means nothing unless the token is checked.
            audience = backend.config.audience or backend.config.target
        self.verifier = Verifier(
            backend.config,
            secret if secret is not None else backend.secret,
            audience,
            service_account,
        )
        if not self.verifier.authenticates:
            logger.warning(
                "the Cloud Tasks endpoint of %s checks only the Cloud Tasks headers, which "
                "anyone can send: set CONVEYOR_CLOUDTASKS_SECRET or an OIDC audience",
                backend.config.display,
            )
        self.threads = HandlerThreads(threads, threads, lambda: None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            await _answer(send, 405, {"error": "POST only"}, [(b"allow", b"POST")])
            return
        body = await _body(receive)
        if body is None:
            await _answer(send, 413, {"error": f"body over {MAX_BODY} bytes"})
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            status, answer = await self._handle(headers, body)
        except Exception as exc:
            logger.exception("the Cloud Tasks endpoint could not handle a task")
            status, answer = 503, {"error": f"{type(exc).__name__}: {exc}"}
        extra = [(b"retry-after", RETRY_AFTER.encode())] if status == 503 else []
        await _answer(send, status, answer, extra)

    async def _handle(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        refusal = await self.verifier.refuse(headers)
        if refusal is not None:
            logger.warning("refused a request to the Cloud Tasks endpoint: %s", refusal.reason)
            return refusal.status, {"error": refusal.reason}
        try:
            pointer = json.loads(body)
            job_id, task = pointer["id"], pointer["task"]
        except (ValueError, TypeError, KeyError):
            return 400, {"error": "the body is not a conveyor task"}
        if not isinstance(job_id, str):
            return 400, {"error": "the body is not a conveyor task"}
        if task != headers[TASK_HEADER]:
            return 403, {"error": "the body's task is not X-CloudTasks-TaskName"}
        await self.app.open()
        claim_id = f"push-{uuid.uuid4().hex}"
        pushed, job = await self.backend.claim_pushed(
            job_id, self.lease, claim_id, self.max_stalled
        )
        if job is None:
            return (200 if pushed is Pushed.DONE else 503), {"job": job_id, "outcome": pushed.value}
        logger.info(
            "job %s %s attempt %d (Cloud Tasks retry count %s)",
            job.name,
            job.id,
            job.attempts,
            headers.get(RETRY_HEADER, "?"),
        )
        outcome = await self._run(job)
        if outcome is None:
            return 503, {"job": job_id, "outcome": "lease lost"}
        if not await self._record(outcome, job):
            return 503, {"job": job_id, "outcome": "not recorded"}
        status = {OutcomeKind.SCHEDULED: 500, OutcomeKind.QUEUED: 503}.get(outcome.kind, 200)
        return status, {"job": job_id, "outcome": outcome.kind.value}

    async def _run(self, job: Job) -> Outcome | None:
        job_type = handled(self.app.registry).get(job.name)
        if job_type is None:
            logger.warning("job %s %s: no handler for it here; handed back", job.name, job.id)
            return handed_back(job)
        events = self.app.events
        if events.wants("job.started"):
            events.emit("job.started", job)
        token = token_of(job)

        async def sink(job: Job, percent: float | None, logs: list[dict[str, Any]]) -> bool:
            return await self.backend.progress(job.id, token, percent, logs)

        ctx = JobContext(job, sink, asyncio.get_running_loop())
        calls: list[asyncio.Task[Any]] = []
        # The lease's end as this process sees it (renewed by the keeper): a
        # sync handler whose thread begins after it is not run.
        lease_until = [time.monotonic() + self.lease]
        keeper = asyncio.get_running_loop().create_task(
            self._keep_lease(job, ctx, calls, job_type.is_async, lease_until)
        )
        try:
            outcome = await run_attempt(
                job,
                job_type,
                ctx,
                self.threads,
                may_begin=lambda: time.monotonic() < lease_until[0],
                on_task=calls.append,
            )
        finally:
            keeper.cancel()
        if outcome is not None:
            outcome.logs = ctx.take_logs()
            if outcome.kind is OutcomeKind.SCHEDULED:
                # Cloud Tasks' retry configuration times the next attempt:
                # the job waits queued in the store for that dispatch.
                outcome.retry_in = 0.0
        return outcome

    async def _keep_lease(
        self,
        job: Job,
        ctx: JobContext,
        calls: list[asyncio.Task[Any]],
        is_async: bool,
        lease_until: list[float],
    ) -> None:
        """Renew the lease while the handler runs; pass on a cancel or a lost lease."""
        while True:
            await asyncio.sleep(self.lease / 3)
            sent = time.monotonic()
            try:
                (status,) = await self.backend.heartbeat(
                    [Heartbeat(job.id, token_of(job))], self.lease
                )
            except Exception as exc:
                logger.warning("job %s: heartbeat failed (tried again): %s", job.id, exc)
                continue
            if status is LeaseStatus.HELD:
                lease_until[0] = sent + self.lease
                continue
            reason = CANCELLED if status is LeaseStatus.CANCEL else LOST
            ctx.mark_stopped(reason)
            # A sync handler is told through ctx; its thread cannot be stopped.
            if calls and (is_async or reason == LOST):
                calls[0].cancel()
            return

    async def _record(self, outcome: Outcome, job: Job) -> bool:
        """Store the outcome (events fire as a worker's would); False when the
        store refused it (lease lost) or did not answer in time."""
        acks = Acknowledgements(
            self.backend, self.app.retention, self.app.events, Outage("the Cloud Tasks endpoint")
        )
        acks.add(outcome, job)
        try:
            await asyncio.wait_for(acks.flush(), RECORD_TIMEOUT)
        except TimeoutError:
            return False
        return acks.finished + acks.handed_back == 1


async def _body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _answer(
    send: Send, status: int, body: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _lifespan(receive: Receive, send: Send) -> None:
    """Served on its own (uvicorn conveyor_tasks:endpoint): nothing to set up;
    the app opens its backend on the first task."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
