"""The dashboard end to end, in a real headless Chromium: a real worker
process and a real `conveyor dashboard` server over one SQLite file.

A job fails and its traceback shows on its page; an action without logging
in is refused; after logging in, retry from the page makes it complete; a
queue paused from the page stops being served until resumed. The
overview and the failed job's page are saved as screenshots (the README
shows them: docs/screenshots/).
"""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from availability import free_port
from recipes.helpers import Child, python

from conveyor import Conveyor, JobState, settings

pytestmark = [pytest.mark.sqlite, pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(600)]

SCREENSHOTS = Path(
    settings.env_str(settings.CONVEYOR_TEST_SCREENSHOTS)
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


@dataclass
class Site:
    base: str  # the dashboard's URL
    producer: Conveyor  # an app of the test's own, to enqueue and look
    app_dir: Path  # where webapp.py is
    worker: Child


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """A worker and the dashboard server, processes of their own, over one
    SQLite file."""
    (tmp_path / "webapp.py").write_text(APP_SOURCE)
    url = f"sqlite:///{tmp_path}/jobs.db"
    env = dict(os.environ, CONVEYOR_URL=url, CONVEYOR_DASHBOARD_TOKEN=TOKEN)
    producer = Conveyor(url)
    producer.declare("email.welcome", retries=0)
    producer.declare("report.build", queue="reports")
    blocking(producer.enqueue_sync, "report.build", {"rows": 1})  # creates the database file
    port = free_port()
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
        yield Site(base, producer, tmp_path, worker)
    finally:
        for child in (worker, server):
            child.stop()
        blocking(producer.close_sync)


def log_in(page: Any) -> None:
    page.locator('[data-auth="login"] input').fill(TOKEN)
    page.locator('[data-auth="login"] button').click()
    page.locator('[data-auth="signed-in"]').wait_for()


def test_a_failed_job_is_retried_from_the_page(browser: Any, site: Site) -> None:
    base, producer, app_dir = site.base, site.producer, site.app_dir
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
    log_in(page)
    (app_dir / "mail-server-up").write_text("")
    page.locator('[data-action="retry"]').click()
    page.locator('[data-flash="ok"]').wait_for()
    page.locator('h1 + [data-state="completed"]').wait_for()
    assert blocking(producer.get_job_sync, failing.id).state is JobState.COMPLETED  # type: ignore[union-attr]
    assert page.locator("[data-traceback]").count() == 0
    page.close()


def test_lists_workers_and_schedules_from_the_page(browser: Any, site: Site) -> None:
    producer = site.producer
    later = [
        blocking(producer.enqueue_sync, "report.build", {"rows": n}, delay=3600, key=f"r{n}")
        for n in range(30)
    ]
    blocking(producer.recurring_sync, "hourly-report", "report.build", {"rows": 7}, every=3600)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(WAIT_MS)
    page.goto(site.base)
    log_in(page)

    # Workers: the worker process, live.
    page.locator('a[data-nav="workers"]').click()
    row = page.locator("[data-worker]")
    row.wait_for()
    assert str(site.worker.proc.pid) in row.inner_text()

    # Job lists: paged, filtered by the form, found by key and by id.
    page.goto(site.base + "#/jobs?state=scheduled")
    page.locator(f'[data-job="{later[-1].id}"]').wait_for()  # newest first
    assert page.locator("[data-job]").count() == 25
    page.locator('[data-page="next"]').click()
    page.locator(f'[data-job="{later[0].id}"]').wait_for()
    assert page.locator("[data-job]").count() == 5
    page.locator('[data-form="filters"] input[name="key"]').fill("r7")
    page.locator('[data-form="filters"] button').click()
    page.locator(f'[data-job="{later[7].id}"]').wait_for()
    assert page.locator("[data-job]").count() == 1
    # Cancel a scheduled job from the list.
    page.locator(f'[data-job="{later[7].id}"] [data-action="cancel"]').click()
    page.locator('[data-flash="ok"]').wait_for()
    assert blocking(producer.get_job_sync, later[7].id).state is JobState.CANCELLED  # type: ignore[union-attr]
    # Purge the cancelled set, once the page's question is answered yes.
    page.goto(site.base + "#/jobs?state=cancelled")
    page.locator(f'[data-job="{later[7].id}"]').wait_for()
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator('[data-action="purge"]').click()
    page.locator('[data-flash="ok"]').filter(has_text="Purged 1 job(s)").wait_for()
    assert blocking(producer.get_job_sync, later[7].id) is None
    page.locator('[data-form="search"] input').fill(later[3].id)
    page.locator('[data-form="search"] button').click()
    page.locator('h1 + [data-state="scheduled"]').wait_for()

    # Recurring: disable, enable, run now; the job it enqueues runs.
    page.locator('a[data-nav="recurring"]').click()
    schedule = page.locator('[data-schedule="hourly-report"]')
    schedule.locator('[data-action="disable"]').click()
    schedule.locator('[data-action="enable"]').wait_for()
    assert blocking(producer.get_recurring_sync, "hourly-report").enabled is False  # type: ignore[union-attr]
    schedule.locator('[data-action="enable"]').click()
    schedule.locator('[data-action="disable"]').wait_for()
    schedule.locator('[data-action="run"]').click()
    ran = page.locator('[data-flash="ok"]').filter(has_text="enqueued")
    ran.wait_for()
    job_id = ran.inner_text().split("job ")[1].split()[0]
    assert blocking(producer.wait_sync, job_id, timeout=20).result == {"rows": 7}
    page.close()


def test_a_paused_queue_stops_being_served(browser: Any, site: Site) -> None:
    producer = site.producer
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(WAIT_MS)
    page.goto(site.base)
    log_in(page)
    reports = page.locator('[data-queue="reports"]')
    reports.locator('[data-action="pause"]').click()
    reports.locator("[data-paused]").wait_for()
    site.worker.wait_for("queue reports paused")  # the worker has seen it

    held = blocking(producer.enqueue_sync, "report.build", {"rows": 3})
    (site.app_dir / "mail-server-up").write_text("")
    served = blocking(producer.enqueue_sync, "email.welcome", {"to": "b@example.com"})
    # The worker goes on serving the other queue, after the held job was enqueued.
    assert blocking(producer.wait_sync, served.id, timeout=20).state is JobState.COMPLETED
    assert blocking(producer.get_job_sync, held.id).state is JobState.QUEUED  # type: ignore[union-attr]
    reports.locator('[data-count="queued"] b').filter(has_text="1").wait_for()

    reports.locator('[data-action="resume"]').click()
    reports.locator('[data-action="pause"]').wait_for()
    assert reports.locator("[data-paused]").count() == 0
    assert blocking(producer.wait_sync, held.id, timeout=20).result == {"rows": 3}
    page.close()


def test_slow_answers_do_not_pile_up_refreshes(browser: Any, site: Site) -> None:
    """The page refreshes every 2 s; when the server takes longer to answer
    (many queues, a busy store), the next refresh waits for the last one
    instead of adding to a pile of requests in flight."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(WAIT_MS)
    # Every overview answer comes 3 s late (longer than the refresh interval);
    # the page's requests in flight are counted.
    page.add_init_script(
        """
        window.__flight = { now: 0, most: 0, sent: 0 };
        const realFetch = window.fetch;
        window.fetch = async (...args) => {
          const url = String(args[0] instanceof Request ? args[0].url : args[0]);
          if (!url.includes("api/overview")) return realFetch(...args);
          const flight = window.__flight;
          flight.now += 1; flight.sent += 1; flight.most = Math.max(flight.most, flight.now);
          try {
            await new Promise((done) => setTimeout(done, 3000));
            return await realFetch(...args);
          } finally { flight.now -= 1; }
        };
        """
    )
    page.goto(site.base)
    page.wait_for_timeout(10_000)
    flight = page.evaluate("window.__flight")
    assert flight["sent"] >= 2, flight  # it did refresh
    assert flight["most"] == 1, flight
