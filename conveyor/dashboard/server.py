"""Serving a dashboard with uvicorn: what `conveyor dashboard` runs."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from conveyor.settings import CONVEYOR_DASHBOARD_BASIC_AUTH, CONVEYOR_DASHBOARD_TOKEN

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from conveyor.app import Conveyor
    from conveyor.dashboard.auth import Access

logger = logging.getLogger("conveyor.dashboard")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: may resolve to anything


def exposure_warning(host: str, access: Access) -> str | None:
    """What to warn about before binding `host`: None on loopback or behind
    basic auth. A token guards only the actions: every page and the JSON
    API, payloads included, stay open to whoever reaches the port."""
    if is_loopback(host) or access.basic is not None:
        return None
    if access.token is not None:
        return (
            f"the dashboard listens on {host}, beyond this machine, and only its actions "
            "need the token: anyone who reaches it sees every job's payload. Set "
            f"{CONVEYOR_DASHBOARD_BASIC_AUTH} to guard reading too, or bind to 127.0.0.1"
        )
    return (
        f"the dashboard listens on {host}, beyond this machine, with no authentication: "
        f"anyone who reaches it sees every job's payload. Set {CONVEYOR_DASHBOARD_TOKEN} "
        f"and {CONVEYOR_DASHBOARD_BASIC_AUTH}, or bind to 127.0.0.1"
    )


def standalone(app: Conveyor, dashboard: Starlette, host: str = DEFAULT_HOST) -> Starlette:
    """The dashboard as a server's whole app: it opens the Conveyor app at
    start-up (a wrong URL fails there, not at the first request) and closes
    it at shutdown. Bound to loopback, it answers only requests for a
    loopback name: a web page whose own name was made to point at 127.0.0.1
    (DNS rebinding) must not read the jobs a browser on this machine sees."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.routing import Mount

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with app:
            yield

    middleware = [Middleware(_LoopbackHostOnly, bound=host)] if is_loopback(host) else []
    return Starlette(routes=[Mount("/", app=dashboard)], lifespan=lifespan, middleware=middleware)


class _LoopbackHostOnly:
    """ASGI middleware: HTTP requests whose Host is no loopback name get 400."""

    def __init__(self, app: Any, bound: str) -> None:
        self.app = app
        self.bound = bound

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            name = _host_name(headers.get(b"host", b"").decode("latin-1"))
            if name != self.bound and not is_loopback(name):
                from starlette.responses import PlainTextResponse

                refused = PlainTextResponse(
                    f"this dashboard listens on {self.bound} and answers loopback names only,"
                    f" not {name!r}",
                    status_code=400,
                )
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _host_name(host: str) -> str:
    """A Host header's name, without its port ("[::1]:8000" -> "::1")."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def serve(
    app: Conveyor,
    dashboard: Starlette,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
) -> None:
    """Serve until Ctrl-C or SIGTERM."""
    import uvicorn

    warning = exposure_warning(host, dashboard.state.gate.access)
    if warning is not None:
        logger.warning("%s", warning)
    uvicorn.run(standalone(app, dashboard, host), host=host, port=port, log_level="info")
