"""The dashboard end to end, in a real headless Chromium: a real worker
process and a real `conveyor dashboard` server over one SQLite file.

A job fails and its traceback shows on its page; an action without logging
in is refused; after logging in, retry from the page makes it complete. The
overview and the failed job's page are saved as screenshots (the README
shows them: docs/screenshots/).
"""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import _free_port
from recipes.helpers import Child, python

from conveyor import Conveyor, JobState

pytestmark = [pytest.mark.sqlite, pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(600)]

SCREENSHOTS = Path(
    os.environ.get("CONVEYOR_SCREENSHOTS")
    or Path(__file__).resolve().parents[2] / "docs" / "screenshots"
)
TOKEN = "browser-test-token-0123456789"
WAIT_MS = 20_000
T = TypeVar("T")

APP_SOURCE = """
from pathlib import Path

from conveyor import Conveyor, JobContext

HERE = Path(__file__).resolve().parent
app = Conveyor()  # CONVEYOR_URL


@app.job("email.welcome", retries=0)
def welcome(payload: dict, ctx: JobContext) -> dict:
    ctx.log("connecting to the mail server", to=payload["to"])
    if not (HERE / "mail-server-up").exists():
        raise ConnectionError("the mail server at smtp.example.com refused the connection")
    ctx.log("sent", to=payload["to"])
    return {"sent": True}


@app.job("report.build", queue="reports")
def build(payload: dict, ctx: JobContext) -> dict:
    return {"rows": payload.get("rows", 0)}
"""


def blocking(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking conveyor call on a thread of its own: Playwright's sync
    API keeps an event loop running in the test's thread, where conveyor's
    `_sync` twins refuse to run."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call, *args, **kwargs).result()


def wait_until_up(url: str, server: Child) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url + "api/session", timeout=2):
                return
        except OSError:
            if server.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the dashboard did not start:\n{server.output}") from None
            time.sleep(0.1)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, Conveyor, Path]]:
    """(dashboard URL, a producer app, the app's directory): a worker and the
    dashboard server run as processes of their own."""
    (tmp_path / "webapp.py").write_text(APP_SOURCE)
    url = f"sqlite:///{tmp_path}/jobs.db"
    env = dict(os.environ, CONVEYOR_URL=url, CONVEYOR_DASHBOARD_TOKEN=TOKEN)
    producer = Conveyor(url)
    producer.declare("email.welcome", retries=0)
    producer.declare("report.build", queue="reports")
    blocking(producer.enqueue_sync, "report.build", {"rows": 1})  # creates the database file
    port = _free_port()
    worker = Child(python("-m", "conveyor", "worker", "webapp:app"), cwd=tmp_path, env=env)
    server = Child(
        python("-m", "conveyor", "dashboard", "webapp:app", "--port", str(port)),
        cwd=tmp_path,
        env=env,
    )
    try:
        base = f"http://127.0.0.1:{port}/"
        wait_until_up(base, server)
        worker.wait_for(" started: ")
        yield base, producer, tmp_path
    finally:
        for child in (worker, server):
            child.stop()
        blocking(producer.close_sync)


def test_a_failed_job_is_retried_from_the_page(
    browser: Any, site: tuple[str, Conveyor, Path]
) -> None:
    base, producer, app_dir = site
    for rows in range(2, 6):
        blocking(producer.enqueue_sync, "report.build", {"rows": rows})
    blocking(producer.enqueue_sync, "report.build", {"rows": 9}, delay=3600)
    blocking(
        producer.recurring_sync,
        "nightly-report",
        "report.build",
        {"rows": 0},
        cron="0 2 * * *",
        tz="Europe/Berlin",
    )
    failing = blocking(
        producer.enqueue_sync, "email.welcome", {"to": "ada@example.com", "password": "hunter2"}
    )
    assert blocking(producer.wait_sync, failing.id, timeout=20).state is JobState.FAILED

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(WAIT_MS)
    page.goto(base)
    card = page.locator('[data-queue="default"]')
    card.locator('[data-count="failed"] b').filter(has_text="1").wait_for()
    page.locator('[data-queue="reports"] [data-count="completed"] b').filter(
        has_text="5"
    ).wait_for()
    assert page.locator('[data-auth="login"]').is_visible()  # a token is set: actions need a login
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "overview.png"), full_page=True)

    # From the failed list to the job's page: its traceback is there.
    page.locator('a[data-nav="failed"]').click()
    page.locator(f'[data-job="{failing.id}"] a').click()
    traceback = page.locator("[data-traceback]")
    traceback.wait_for()
    assert "ConnectionError: the mail server at smtp.example.com refused" in traceback.inner_text()
    assert "Traceback (most recent call last)" in traceback.inner_text()
    assert "hunter2" not in page.content()  # redacted by default
    page.screenshot(path=str(SCREENSHOTS / "job.png"), full_page=True)

    # Not logged in: the action is refused, and nothing changes.
    page.locator('[data-action="retry"]').click()
    refused = page.locator('[data-flash="error"]')
    refused.wait_for()
    assert "401" in refused.inner_text()
    assert blocking(producer.get_job_sync, failing.id).state is JobState.FAILED  # type: ignore[union-attr]

    # A wrong token does not log in.
    page.locator('[data-auth="login"] input').fill("not-the-token")
    page.locator('[data-auth="login"] button').click()
    page.locator('[data-flash="error"]').filter(has_text="Login refused").wait_for()

    # Logged in, retry makes it complete; the page follows without a reload.
    page.locator('[data-auth="login"] input').fill(TOKEN)
    page.locator('[data-auth="login"] button').click()
    page.locator('[data-auth="signed-in"]').wait_for()
    (app_dir / "mail-server-up").write_text("")
    page.locator('[data-action="retry"]').click()
    page.locator('[data-flash="ok"]').wait_for()
    page.locator('h1 + [data-state="completed"]').wait_for()
    assert blocking(producer.get_job_sync, failing.id).state is JobState.COMPLETED  # type: ignore[union-attr]
    assert page.locator("[data-traceback]").count() == 0
    page.close()
