"""Google Cloud's push side: the endpoint Cloud Tasks delivers jobs to.

    from fastapi import FastAPI
    from conveyor.gcp import tasks_endpoint

    api = FastAPI()
    api.mount("/tasks", tasks_endpoint(app))   # target=https://host/tasks

Needs the `gcp` extra. See endpoint.py for what it answers and verify.py
for what it verifies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.gcp.endpoint import TasksEndpoint

if TYPE_CHECKING:
    from conveyor.app import Conveyor


def tasks_endpoint(
    app: Conveyor,
    *,
    secret: str | None = None,
    audience: str | None = None,
    service_account: str | None = None,
    lease: float = 60.0,
    max_stalled: int = 1,
    threads: int = 16,
) -> TasksEndpoint:
    """The ASGI app that runs the jobs Cloud Tasks pushes for `app` (an app
    on a `cloudtasks://` URL).

    secret: the shared secret every task must carry (X-Conveyor-Secret);
        default $CONVEYOR_CLOUDTASKS_SECRET, which producers send.
    audience: check the OIDC token Cloud Tasks signs (the URL's
        service_account=) for this audience; service_account: and its
        email (given alone, the audience is the URL's audience= or target).
    lease: the job's lease in the store, renewed by heartbeat while it runs;
        a dispatch that finds a job running under a lease run out recovers
        it (after `max_stalled` such stalls it fails).
    threads: the threads sync handlers run on.
    """
    return TasksEndpoint(
        app,
        secret=secret,
        audience=audience,
        service_account=service_account,
        lease=lease,
        max_stalled=max_stalled,
        threads=threads,
    )


__all__ = ["TasksEndpoint", "tasks_endpoint"]
