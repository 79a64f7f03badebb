"""`conveyor dashboard`: serve the web dashboard (conveyor/dashboard/)."""

from __future__ import annotations

import logging

import click

from conveyor.backends.url_options import without_secrets
from conveyor.cli.core import CliError, admin_app, options
from conveyor.cli.loading import load_app_with_url
from conveyor.dashboard.server import DEFAULT_HOST, DEFAULT_PORT
from conveyor.logs import PLAIN_FORMAT
from conveyor.settings import CONVEYOR_DASHBOARD_BASIC_AUTH, CONVEYOR_DASHBOARD_TOKEN


@click.command()
@click.argument("app_path", metavar="[APP]", required=False)
@click.option(
    "--host",
    default=DEFAULT_HOST,
    show_default=True,
    help="Address to listen on; anything but loopback without basic auth logs a warning.",
)
@click.option(
    "--port",
    default=DEFAULT_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on.",
)
@click.option(
    "--read-only",
    is_flag=True,
    help=f"No actions even when {CONVEYOR_DASHBOARD_TOKEN} is set.",
)
@click.pass_context
def dashboard(
    ctx: click.Context, app_path: str | None, host: str, port: int, read_only: bool
) -> None:
    """Serve the web dashboard of APP (MODULE:APP; without it, of --url).

    Read-only unless ${token} is set: then actions (retry, cancel, purge,
    pause, schedules) need it, given by the page's login form or as
    `Authorization: Bearer <token>`. ${basic}=USER:PASSWORD guards every
    page with basic auth.
    """
    try:
        from conveyor.dashboard import create_app
        from conveyor.dashboard.server import serve
    except ImportError as exc:
        raise CliError(f"the dashboard needs starlette and uvicorn: {exc}") from exc
    try:
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise CliError("the dashboard needs uvicorn: pip install 'conveyor[dashboard]'") from exc
    url = options(ctx).url
    app = load_app_with_url(app_path, url) if app_path else admin_app(ctx)
    if not logging.getLogger("conveyor").hasHandlers():
        logging.basicConfig(level=logging.INFO, format=PLAIN_FORMAT)
    served = create_app(app, actions=False if read_only else None)
    click.echo(
        f"conveyor dashboard of {without_secrets(app.url)} on http://{host}:{port}/", err=True
    )
    serve(app, served, host=host, port=port)


assert dashboard.help is not None
dashboard.help = dashboard.help.replace("${token}", CONVEYOR_DASHBOARD_TOKEN).replace(
    "${basic}", CONVEYOR_DASHBOARD_BASIC_AUTH
)
