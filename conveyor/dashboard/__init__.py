"""The web dashboard: queues, workers, jobs and schedules in a browser.

`create_app(app)` is an ASGI app (Starlette) to mount in FastAPI/Starlette or
to serve alone (`conveyor dashboard`); it needs the `dashboard` extra
(starlette, uvicorn). The core (`Dashboard`: plain data in, plain data out)
needs no web framework. Layout:

* core.py      what each page and JSON route shows or does
* activity.py  throughput and failure rate over the last hour
* redact.py    the per-job-type redaction of payload fields
* auth.py      tokens, sessions, CSRF: who may read and who may act
* asgi.py      the Starlette app: routes, responses, the page
* server.py    serving it with uvicorn (the CLI's `conveyor dashboard`)
* static/      the page: plain HTML, CSS and JavaScript, no build step
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.dashboard.auth import Access, Gate
from conveyor.dashboard.core import Dashboard, DashboardError, JobQuery
from conveyor.dashboard.redact import DEFAULT_FIELDS, Redaction
from conveyor.settings import CONVEYOR_DASHBOARD_BASIC_AUTH, CONVEYOR_DASHBOARD_TOKEN

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from conveyor.app import Conveyor
    from conveyor.dashboard.redact import RedactRules

__all__ = [
    "CONVEYOR_DASHBOARD_BASIC_AUTH",
    "CONVEYOR_DASHBOARD_TOKEN",
    "DEFAULT_FIELDS",
    "Dashboard",
    "DashboardError",
    "JobQuery",
    "Redaction",
    "create_app",
]


def create_app(
    app: Conveyor,
    *,
    token: str | None = None,
    basic_auth: tuple[str, str] | None = None,
    actions: bool | None = None,
    redact: RedactRules = ...,
) -> Starlette:
    """The dashboard of `app` as an ASGI app (Starlette), to mount or serve.

    `token` (else $CONVEYOR_DASHBOARD_TOKEN) turns actions on: without it
    the dashboard is read-only, and `actions=False` keeps it so anyway.
    `basic_auth` ((user, password), else $CONVEYOR_DASHBOARD_BASIC_AUTH)
    guards every page and route; its users may act too when actions are on.
    `redact` maps job names (or "*" for all) to payload fields never shown;
    the default hides common secret names (redact.py), None shows all.
    """
    gate = Gate(Access.build(token, basic_auth, actions))  # bad settings fail before the import
    try:
        from conveyor.dashboard.asgi import starlette_app
    except ImportError as exc:
        raise ImportError(
            f"the dashboard needs starlette: pip install 'conveyor[dashboard]' ({exc})"
        ) from exc
    return starlette_app(Dashboard(app, Redaction(redact)), gate)
