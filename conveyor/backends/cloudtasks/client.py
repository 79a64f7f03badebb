"""The Cloud Tasks calls conveyor makes, on Google's `google-cloud-tasks`
client (its blocking client, run on threads: the backend may be called
from more than one event loop, and a blocking gRPC channel is bound to
none).

The queue and task names follow Google's: `projects/P/locations/L/queues/Q`
and `<queue>/tasks/<task id>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import threading
from collections.abc import Mapping
from typing import Final

from google.api_core import exceptions as google_errors
from google.auth import exceptions as google_auth_errors
from google.cloud import tasks_v2

from conveyor.backends.cloudtasks.url import CloudTasksURL
from conveyor.job import BackendMisconfiguredError

# Cloud Tasks' bounds on an HTTP task's dispatch deadline.
MIN_DISPATCH_DEADLINE: Final = 15.0
MAX_DISPATCH_DEADLINE: Final = 1_800.0
CALL_TIMEOUT: Final = 30.0
# Errors after which a CreateTask may or may not have been done: the call is
# made again under the same name (ALREADY_EXISTS then tells), this many times.
AMBIGUOUS: Final = (
    google_errors.DeadlineExceeded,
    google_errors.ServiceUnavailable,
    google_errors.InternalServerError,
)
CREATE_TRIES: Final = 3


class QueueMissingError(BackendMisconfiguredError):
    """The Cloud Tasks queue does not exist and create=true was not given."""


class TasksClient:
    def __init__(self, config: CloudTasksURL) -> None:
        self.config = config
        self._client: tasks_v2.CloudTasksClient | None = None
        self._lock = threading.Lock()
        self._queues: set[str] = set()  # queues known to exist

    def _tasks(self) -> tasks_v2.CloudTasksClient:
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> tasks_v2.CloudTasksClient:
        if self.config.emulator is None:
            # Application Default Credentials, Google's endpoint.
            try:
                return tasks_v2.CloudTasksClient()
            except google_auth_errors.DefaultCredentialsError as exc:
                raise BackendMisconfiguredError(
                    f"{self.config.display}: no Google credentials ({exc}); set "
                    "GOOGLE_APPLICATION_CREDENTIALS, run `gcloud auth application-default "
                    "login`, run on Google Cloud, or use an emulator (emulator=host:port)"
                ) from None
        import grpc  # the emulator speaks plain gRPC, with no credentials
        from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

        channel = grpc.insecure_channel(self.config.emulator)
        return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))

    def forget_client(self) -> None:
        """Drop the client without closing it (in a forked child: the
        parent's gRPC channel must not be used or closed there)."""
        with self._lock:
            self._client = None

    async def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.transport.close)

    # ------------------------------------------------------------------ queues

    async def ensure_queue(self, path: str) -> None:
        if path not in self._queues:
            await asyncio.to_thread(self._ensure_queue, path)
            self._queues.add(path)

    def _ensure_queue(self, path: str) -> None:
        client = self._tasks()
        if self.config.create:
            # Unlimited attempts: conveyor's retries decide when a job fails
            # (the endpoint answers 2xx then, which ends the task).
            queue = tasks_v2.Queue(name=path, retry_config=tasks_v2.RetryConfig(max_attempts=-1))
            with contextlib.suppress(google_errors.AlreadyExists):
                client.create_queue(parent=self.config.parent, queue=queue, timeout=CALL_TIMEOUT)
            return
        try:
            client.get_queue(name=path, timeout=CALL_TIMEOUT)
        except google_errors.NotFound:
            raise self._missing(path) from None
        except google_errors.PermissionDenied:
            # roles/cloudtasks.enqueuer may not read queues, and the endpoint
            # needs no Cloud Tasks role: CreateTask's NOT_FOUND tells instead.
            pass

    def _missing(self, path: str) -> QueueMissingError:
        return QueueMissingError(
            f"Cloud Tasks queue {path} does not exist ({self.config.display}); create it "
            "(gcloud tasks queues create) or add create=true to the URL"
        )

    # ------------------------------------------------------------------ tasks

    async def create_task(
        self,
        queue_path: str,
        task_id: str,
        body: bytes,
        *,
        run_at: float | None,
        deadline: float | None,
        headers: Mapping[str, str],
    ) -> bool:
        """Create the task; False when a task of that name exists (or did
        lately: Google keeps a name taken for about an hour after its task
        ended, up to 9 days on queues made by queue.yaml)."""
        http = tasks_v2.HttpRequest(
            url=self.config.target,
            http_method=tasks_v2.HttpMethod.POST,
            headers={"Content-Type": "application/json", **headers},
            body=body,
        )
        if self.config.service_account:
            http.oidc_token = tasks_v2.OidcToken(
                service_account_email=self.config.service_account,
                audience=self.config.audience or self.config.target,
            )
        task = tasks_v2.Task(name=f"{queue_path}/tasks/{task_id}", http_request=http)
        if run_at is not None:
            task.schedule_time = dt.datetime.fromtimestamp(run_at, dt.UTC)
        if deadline is not None:
            seconds = min(max(deadline, MIN_DISPATCH_DEADLINE), MAX_DISPATCH_DEADLINE)
            task.dispatch_deadline = dt.timedelta(seconds=int(seconds))
        for attempt in range(CREATE_TRIES):
            try:
                await asyncio.to_thread(
                    self._tasks().create_task, parent=queue_path, task=task, timeout=CALL_TIMEOUT
                )
            except google_errors.AlreadyExists:
                return False  # perhaps our own try whose reply was lost: the caller looks
            except google_errors.NotFound:
                raise self._missing(queue_path) from None
            except AMBIGUOUS:
                if attempt == CREATE_TRIES - 1:
                    raise
                await asyncio.sleep(0.2 * 2**attempt)
            else:
                return True
        raise AssertionError("unreachable")

    async def task_body(self, name: str) -> bytes | None:
        """The body of an existing task; None when there is none. Raises
        PermissionDenied without cloudtasks.tasks.get and tasks.fullView."""
        try:
            task = await asyncio.to_thread(
                self._tasks().get_task,
                request={"name": name, "response_view": tasks_v2.Task.View.FULL},
                timeout=CALL_TIMEOUT,
            )
        except google_errors.NotFound:
            return None
        body: bytes = task.http_request.body
        return body
