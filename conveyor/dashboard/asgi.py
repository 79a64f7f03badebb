"""The dashboard as a Starlette app, to serve alone (`conveyor dashboard`) or
mount in FastAPI/Starlette: `api.mount("/jobs", create_app(app))`.

Everything a request needs hangs off the objects `create_app` builds for it
(the core `Dashboard`, the `Gate`), closed over by its routes: no module
state, so two mounts over two apps never see each other's. Only this module
and server.py import starlette.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from conveyor.dashboard.auth import CSRF_HEADER, SESSION_COOKIE, Credentials, Gate, Refusal
from conveyor.dashboard.core import Dashboard, DashboardError, JobQuery
from conveyor.job import ConveyorError, NotSupportedError

logger = logging.getLogger("conveyor.dashboard")

STATIC = Path(__file__).resolve().parent / "static"
Handler = Callable[[Request], Awaitable[Any]]


def starlette_app(dashboard: Dashboard, gate: Gate) -> Starlette:
    """The routes of one dashboard (see `conveyor.dashboard.create_app`)."""
    routes = _Routes(dashboard, gate)

    def get(path: str, call: Callable[..., Awaitable[Any]]) -> Route:
        """A read route calling `call` with the path's parameters."""
        return Route(path, routes.read(lambda r: call(**r.path_params)))

    def post(path: str, call: Callable[..., Awaitable[Any]]) -> Route:
        """An action route calling `call` with the path's parameters."""
        return Route(path, routes.act(lambda r: call(**r.path_params)), methods=["POST"])

    starlette = Starlette(
        routes=[
            Route("/", routes.index),
            Route("/api/session", routes.read(routes.session)),
            Route("/api/login", routes.login, methods=["POST"]),
            Route("/api/logout", routes.logout, methods=["POST"]),
            get("/api/overview", dashboard.overview),
            Route("/api/jobs", routes.read(routes.jobs)),
            Route("/api/jobs/retry", routes.act(routes.retry_matching), methods=["POST"]),
            Route("/api/jobs/purge", routes.act(routes.purge), methods=["POST"]),
            # Names and ids may hold a slash, which the browser encodes and
            # the path arrives with decoded: `:path` keeps it in the name.
            get("/api/jobs/{job_id:path}", dashboard.job),
            post("/api/jobs/{job_id:path}/retry", dashboard.retry),
            post("/api/jobs/{job_id:path}/cancel", dashboard.cancel),
            get("/api/workers", dashboard.workers),
            get("/api/recurring", dashboard.recurring),
            post("/api/recurring/{name:path}/{action}", dashboard.recurring_action),
            post("/api/queues/{queue:path}/{action}", dashboard.queue_action),
            Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        ],
    )
    starlette.state.dashboard = dashboard
    starlette.state.gate = gate
    return starlette


def credentials(request: Request) -> Credentials:
    return Credentials(
        authorization=request.headers.get("authorization"),
        cookie=request.cookies.get(SESSION_COOKIE),
        csrf=request.headers.get(CSRF_HEADER),
    )


def refused(refusal: Refusal) -> JSONResponse:
    headers = {"WWW-Authenticate": refusal.challenge} if refusal.challenge else None
    return JSONResponse({"error": refusal.message}, status_code=refusal.status, headers=headers)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _answer(handler: Handler, request: Request) -> Response:
    """Run a core call; its expected errors become JSON error responses."""
    try:
        result = await handler(request)
    except DashboardError as exc:
        return _error(exc.status, str(exc))
    except NotSupportedError as exc:
        return _error(501, str(exc))
    except ConveyorError as exc:  # a bad option, an unknown state...
        return _error(400, str(exc))
    return AsciiJSON(result)


class AsciiJSON(JSONResponse):
    """JSON with every non-ASCII character escaped: a job's text may hold a
    lone surrogate (a file name decoded from undecodable bytes), which UTF-8
    cannot encode (Starlette's JSONResponse answered 500 for the whole list)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class _Routes:
    """The request handlers of one dashboard."""

    def __init__(self, dashboard: Dashboard, gate: Gate) -> None:
        self.dashboard = dashboard
        self.gate = gate

    def read(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def route(request: Request) -> Response:
            refusal = self.gate.may_read(credentials(request))
            return refused(refusal) if refusal else await _answer(handler, request)

        return route

    def act(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def route(request: Request) -> Response:
            refusal = self.gate.may_act(credentials(request))
            if refusal is not None:
                return refused(refusal)
            response = await _answer(handler, request)
            logger.info(
                "dashboard action %s %s: %s", request.method, request.url.path, response.status_code
            )
            return response

        return route

    async def index(self, request: Request) -> Response:
        refusal = self.gate.may_read(credentials(request))
        if refusal is not None:
            return refused(refusal)
        # <base> makes every relative URL of the page (assets, API calls)
        # resolve under the mount point, wherever the dashboard is mounted.
        base = html.escape(request.scope.get("root_path", "").rstrip("/") + "/", quote=True)
        page = (STATIC / "index.html").read_text().replace("{{base}}", base)
        return HTMLResponse(page, headers=_PAGE_HEADERS)

    async def session(self, request: Request) -> dict[str, Any]:
        creds = credentials(request)
        who = self.gate.principal(creds)
        principal = who if isinstance(who, str) else None
        return {
            "actions": self.gate.access.actions,
            "login": self.gate.access.token is not None,
            "authenticated": principal is not None,
            "via": principal.partition(":")[0] if principal else None,  # session or basic
            "csrf": self.gate.sessions.csrf_for(principal) if principal else None,
        }

    async def login(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:  # not JSON, or not UTF-8 (JSONDecodeError, UnicodeDecodeError)
            body = None
        token = body.get("token") if isinstance(body, dict) else None
        outcome = self.gate.login(token if isinstance(token, str) else None)
        if isinstance(outcome, Refusal):
            return refused(outcome)
        principal = self.gate.sessions.principal(outcome)
        assert principal is not None
        response = JSONResponse({"csrf": self.gate.sessions.csrf_for(principal)})
        response.set_cookie(
            SESSION_COOKIE,
            outcome,
            max_age=int(self.gate.sessions.max_age),
            path=_cookie_path(request),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request) -> Response:
        response = JSONResponse({"ok": True})
        response.delete_cookie(SESSION_COOKIE, path=_cookie_path(request))
        return response

    async def jobs(self, request: Request) -> dict[str, Any]:
        return await self.dashboard.jobs(JobQuery.parse(request.query_params))

    async def retry_matching(self, request: Request) -> dict[str, Any]:
        return await self.dashboard.retry_matching(JobQuery.parse(request.query_params))

    async def purge(self, request: Request) -> dict[str, Any]:
        return await self.dashboard.purge(request.query_params)


def _cookie_path(request: Request) -> str:
    # The cookie goes only to this mount: two dashboards in one site keep
    # sessions of their own.
    return str(request.scope.get("root_path", "")).rstrip("/") + "/"


# The page runs only its own script and style, never in a frame (clickjacking).
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; base-uri 'self'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
