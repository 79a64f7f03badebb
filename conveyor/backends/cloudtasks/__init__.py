"""Google Cloud Tasks (push): the store keeps the jobs, Cloud Tasks pushes
each to the app's endpoint (`conveyor.gcp.tasks_endpoint(app)`).

`cloudtasks://<project>/<location>/<queue>?target=..&store=..` (url.py)
names them; backend.py is the backend; client.py makes the Cloud Tasks
calls on Google's `google-cloud-tasks` client. Needs the `gcp` extra.

What the `gcloud-tasks-emulator` package (0.6.2, the emulator the tests
run) does, as tried against it:

* It pushes HTTP tasks to their URL with the X-CloudTasks-QueueName (the
  queue's full path, where Google sends its id), -TaskName,
  -TaskRetryCount and -TaskExecutionCount headers, one task at a time per
  queue, and honours schedule_time.
* It does not deduplicate task names: a second task of the same name is
  created and dispatched too (Google refuses it with ALREADY_EXISTS).
* A failed task (any 4xx or 5xx) is retried at once and for ever: a
  queue's retry configuration (backoff, max attempts) is ignored.
* No OIDC tokens, no dispatch deadlines, no GetTask or DeleteTask. A
  GetQueue of a missing queue fails with UNKNOWN (a KeyError inside it) and
  a CreateTask in one with FAILED_PRECONDITION, where Google answers
  NOT_FOUND.
"""

from __future__ import annotations

from conveyor.backends.cloudtasks.backend import MAX_DELAY, CloudTasksBackend, Pushed
from conveyor.backends.cloudtasks.client import QueueMissingError, TasksClient
from conveyor.backends.cloudtasks.url import CloudTasksURL, parse_url

__all__ = [
    "MAX_DELAY",
    "CloudTasksBackend",
    "CloudTasksURL",
    "Pushed",
    "QueueMissingError",
    "TasksClient",
    "parse_url",
]
