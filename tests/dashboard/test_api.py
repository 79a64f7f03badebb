"""The dashboard's JSON API and page, through httpx's ASGI transport,
against a real SQLite app: every route, who may act (401/403, CSRF),
redaction, and two dashboards in one process."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from conveyor import Conveyor, JobContext, JobState
from conveyor.backends.stores import RunningJobInfo, WorkerInfo, WorkerRegistry
from conveyor.dashboard import Dashboard, create_app
from conveyor.dashboard.auth import SESSION_COOKIE
from conveyor.settings import CONVEYOR_DASHBOARD_TOKEN

pytestmark = pytest.mark.sqlite

TOKEN = "a-long-enough-dashboard-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def make_app(url: str) -> Conveyor:
    app = Conveyor(url)

    @app.job("email.welcome", retries=0)
    def welcome(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        ctx.log("sending", to=payload["to"], password=payload.get("password"))
        if payload.get("fail"):
            raise RuntimeError("the mail server said no")
        return {"sent": True, "token": "t-123"}

    @app.job("report.build", queue="reports", retries=0)
    def build(payload: dict[str, Any], ctx: JobContext) -> None:
        return None

    return app


@pytest.fixture
async def app(sqlite_urls: Callable[[], str]) -> AsyncIterator[Conveyor]:
    app = make_app(sqlite_urls())
    async with app:
        yield app


def client(web: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://testserver")


@pytest.fixture
async def web(app: Conveyor) -> AsyncIterator[httpx.AsyncClient]:
    async with client(create_app(app, token=TOKEN)) as http:
        yield http


async def failed_job(app: Conveyor, **payload: Any) -> str:
    job = await app.enqueue("email.welcome", {"to": "a@b.c", "fail": True, **payload})
    await app.drain()
    assert (await app.wait(job.id, timeout=5)).state is JobState.FAILED
    return job.id


# --------------------------------------------------------------------------- reads


async def test_overview_counts_activity_and_oldest_waiting(
    app: Conveyor, web: httpx.AsyncClient
) -> None:
    await failed_job(app)
    await app.enqueue("email.welcome", {"to": "ok@b.c"})
    await app.drain()
    waiting = await app.enqueue("report.build", {})
    response = await web.get("/api/overview")
    assert response.status_code == 200
    queues = {q["name"]: q for q in response.json()["queues"]}
    default = queues["default"]
    assert default["counts"]["failed"] == 1 and default["counts"]["completed"] == 1
    activity = default["activity"]
    assert sum(activity["completed"]) == 1 and sum(activity["failed"]) == 1
    assert activity["failure_rate"] == 0.5 and activity["complete"] is True
    assert activity["failed"][-1] == 1  # finished just now: the newest bucket
    reports = queues["reports"]
    assert reports["counts"]["queued"] == 1
    assert reports["oldest_waiting_seconds"] is not None
    assert 0 <= reports["oldest_waiting_seconds"] < 60
    assert default["oldest_waiting_seconds"] is None
    assert waiting.id


async def test_activity_counts_only_the_last_hour(app: Conveyor) -> None:
    await failed_job(app)
    await app.enqueue("email.welcome", {"to": "ok@b.c"})
    await app.drain()
    dashboard = Dashboard(app)
    in_50_minutes = await dashboard.overview(now=time.time() + 50 * 60)
    activity = in_50_minutes["queues"][0]["activity"]
    assert activity["completed_total"] == 1 and activity["failed_total"] == 1
    assert activity["failed"][1] == 1  # 50 minutes on, it sits in the second bucket
    in_2_hours = await dashboard.overview(now=time.time() + 7200)
    activity = in_2_hours["queues"][0]["activity"]
    assert activity["completed_total"] == activity["failed_total"] == 0
    assert activity["failure_rate"] is None


async def test_job_lists_filter_and_page(app: Conveyor, web: httpx.AsyncClient) -> None:
    ids = [
        (await app.enqueue("email.welcome", {"to": f"{n}@b.c"}, key=f"k{n}")).id for n in range(5)
    ]
    await app.enqueue("report.build", {})
    page = (await web.get("/api/jobs", params={"name": "email.welcome", "limit": 2})).json()
    assert [j["id"] for j in page["jobs"]] == ids[::-1][:2]  # newest first
    assert page["has_more"] is True
    last = (
        await web.get("/api/jobs", params={"name": "email.welcome", "limit": 2, "offset": 4})
    ).json()
    assert [j["id"] for j in last["jobs"]] == [ids[0]] and last["has_more"] is False
    by_queue = (await web.get("/api/jobs", params={"queue": "reports"})).json()
    assert [j["name"] for j in by_queue["jobs"]] == ["report.build"]
    by_key = (await web.get("/api/jobs", params={"key": "k3"})).json()
    assert [j["id"] for j in by_key["jobs"]] == [ids[3]]
    wrong_state = (await web.get("/api/jobs", params={"key": "k3", "state": "failed"})).json()
    assert wrong_state["jobs"] == []
    queued = (await web.get("/api/jobs", params={"state": "queued"})).json()
    assert len(queued["jobs"]) == 6
    bad = await web.get("/api/jobs", params={"state": "nonsense"})
    assert bad.status_code == 400 and "unknown job state" in bad.json()["error"]
    assert (await web.get("/api/jobs", params={"limit": "0"})).status_code == 400


async def test_job_detail_has_traceback_history_and_logs(
    app: Conveyor, web: httpx.AsyncClient
) -> None:
    job_id = await failed_job(app)
    job = (await web.get(f"/api/jobs/{job_id}")).json()
    assert job["state"] == "failed"
    assert "the mail server said no" in job["error"]
    assert "Traceback (most recent call last)" in job["traceback"]
    assert job["history"][0]["outcome"] == "failed"
    assert job["logs"][0]["msg"] == "sending"
    missing = await web.get("/api/jobs/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["error"]


async def test_workers_and_recurring(app: Conveyor, web: httpx.AsyncClient) -> None:
    await app.recurring(
        "digest", "email.welcome", {"to": "d@b.c"}, cron="0 9 * * *", tz="America/New_York"
    )
    (schedule,) = (await web.get("/api/recurring")).json()
    assert schedule["name"] == "digest" and schedule["enabled"] is True
    # 09:00 in New York is 13:00 or 14:00 UTC, depending on daylight saving.
    assert schedule["next_run_local"][11:19] == "09:00:00"
    assert schedule["next_run"][11:19] in ("13:00:00", "14:00:00")
    async with app.worker(concurrency=3):
        workers = (await web.get("/api/workers")).json()
    assert workers["supported"] is True
    (worker,) = workers["workers"]
    assert worker["concurrency"] == 3 and worker["running"] == [] and worker["stale"] is False
    assert worker["queues"] == ["default", "reports"] or set(worker["queues"]) == {
        "default",
        "reports",
    }
    assert isinstance(worker["pid"], int)


async def test_stale_workers_are_shown_as_such(app: Conveyor, web: httpx.AsyncClient) -> None:
    backend = app.backend
    assert isinstance(backend, WorkerRegistry)
    # A worker whose last beat ran out a minute ago: killed, stuck or cut off.
    gone = WorkerInfo(
        id="w-gone",
        host="db-host",
        pid=4242,
        queues=("default",),
        names=("email.welcome",),
        started_at=time.time() - 120,
        last_seen=time.time() - 65,
        concurrency=4,
        running=(RunningJobInfo("j1", "email.welcome", time.time() - 70),),
    )
    await backend.worker_beat(gone, ttl=5, now=time.time() - 65)
    (worker,) = (await web.get("/api/workers")).json()["workers"]
    assert worker["id"] == "w-gone" and worker["stale"] is True
    assert worker["running"][0]["id"] == "j1" and worker["concurrency"] == 4


# --------------------------------------------------------------------------- actions


async def test_retry_cancel_retry_all_and_purge(app: Conveyor, web: httpx.AsyncClient) -> None:
    first = await failed_job(app)
    retried = await web.post(f"/api/jobs/{first}/retry", headers=BEARER)
    assert retried.status_code == 200 and retried.json()["state"] == "queued"
    again = await web.post(f"/api/jobs/{first}/retry", headers=BEARER)
    assert again.status_code == 404  # queued, not failed
    pending = await app.enqueue("report.build", {}, delay=3600)
    cancelled = await web.post(f"/api/jobs/{pending.id}/cancel", headers=BEARER)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert (await web.post(f"/api/jobs/{pending.id}/cancel", headers=BEARER)).status_code == 404

    await app.drain()  # `first` fails again
    await failed_job(app)
    both = await web.post(
        "/api/jobs/retry", params={"state": "failed", "name": "email.welcome"}, headers=BEARER
    )
    assert both.json() == {"retried": 2}
    assert await app.list_jobs(state=JobState.FAILED) == []
    refused = await web.post("/api/jobs/retry", params={"state": "queued"}, headers=BEARER)
    assert refused.status_code == 400

    await app.drain()
    purged = await web.post("/api/jobs/purge", params={"state": "failed"}, headers=BEARER)
    assert purged.json() == {"purged": 2}
    assert (
        await web.post("/api/jobs/purge", params={"state": "running"}, headers=BEARER)
    ).status_code == 400


async def test_bulk_actions_act_on_what_the_filter_shows_or_refuse(
    app: Conveyor, web: httpx.AsyncClient
) -> None:
    # A list filtered by key shows one job: "retry all matching" retries that
    # one, not every failed job; purge, which cannot filter by name or key,
    # refuses such a filter rather than delete every failed job.
    keyed = await app.enqueue("email.welcome", {"to": "k", "fail": True}, key="k0")
    await app.drain()
    for n in range(3):
        await failed_job(app, n=n)
    one = await web.post("/api/jobs/retry", params={"state": "failed", "key": "k0"}, headers=BEARER)
    assert one.json() == {"retried": 1}
    stored = await app.get_job(keyed.id)
    assert stored is not None and stored.state is JobState.QUEUED
    assert len(await app.list_jobs(state=JobState.FAILED)) == 3
    for narrowed in ({"name": "email.welcome"}, {"key": "k0"}):
        refused = await web.post(
            "/api/jobs/purge", params={"state": "failed", **narrowed}, headers=BEARER
        )
        assert refused.status_code == 400, refused.text
    assert len(await app.list_jobs(state=JobState.FAILED)) == 3


async def test_cancel_a_queued_and_a_running_job(app: Conveyor, web: httpx.AsyncClient) -> None:
    started = asyncio.Event()

    @app.job("slow.task", retries=0)
    async def slow(payload: Any, ctx: JobContext) -> None:
        started.set()
        await asyncio.sleep(30)

    queued = await app.enqueue("report.build", {})
    cancelled = await web.post(f"/api/jobs/{queued.id}/cancel", headers=BEARER)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    running = await app.enqueue("slow.task", {})
    async with app.worker(queues=["default"], poll_interval=0.05):
        await asyncio.wait_for(started.wait(), 10)
        asked = await web.post(f"/api/jobs/{running.id}/cancel", headers=BEARER)
        assert asked.status_code == 200
        assert asked.json()["state"] in ("running", "cancelled")  # the handler stops soon after
        assert (await app.wait(running.id, timeout=10)).state is JobState.CANCELLED


async def test_recurring_actions(app: Conveyor, web: httpx.AsyncClient) -> None:
    await app.recurring("tick", "report.build", {}, every="1 hour")
    disabled = await web.post("/api/recurring/tick/disable", headers=BEARER)
    assert disabled.status_code == 200
    assert (await app.get_recurring("tick")).enabled is False  # type: ignore[union-attr]
    await web.post("/api/recurring/tick/enable", headers=BEARER)
    assert (await app.get_recurring("tick")).enabled is True  # type: ignore[union-attr]
    ran = (await web.post("/api/recurring/tick/run", headers=BEARER)).json()
    job = await app.get_job(ran["job"]["id"])
    assert job is not None and job.name == "report.build" and job.queue == "reports"
    assert (await web.post("/api/recurring/nope/run", headers=BEARER)).status_code == 404
    assert (await web.post("/api/recurring/tick/explode", headers=BEARER)).status_code == 404


async def test_names_and_ids_with_a_slash_are_acted_on(
    app: Conveyor, web: httpx.AsyncClient
) -> None:
    """The browser sends a name percent-encoded; the slash in it arrives
    decoded, and must still be part of the name, not a route's separator."""
    await app.recurring("reports/daily", "report.build", {}, every="1 day")
    for path in ("/api/recurring/reports%2Fdaily/disable", "/api/recurring/reports/daily/disable"):
        assert (await web.post(path, headers=BEARER)).status_code == 200, path
    assert (await app.get_recurring("reports/daily")).enabled is False  # type: ignore[union-attr]
    keyed = await app.enqueue("report.build", {}, key="2026/11/27")
    shown = await web.get(f"/api/jobs/{keyed.id}")
    assert shown.status_code == 200 and shown.json()["id"] == keyed.id
    assert (await web.post("/api/queues/a%2Fb/pause", headers=BEARER)).status_code == 200
    assert await app.paused() == ["a/b"]


async def test_pause_and_resume_a_queue(app: Conveyor, web: httpx.AsyncClient) -> None:
    assert (await web.post("/api/queues/reports/pause")).status_code == 401
    paused = await web.post("/api/queues/reports/pause", headers=BEARER)
    assert paused.json() == {"queue": "reports", "paused": True, "changed": True}
    assert await app.paused() == ["reports"]
    again = await web.post("/api/queues/reports/pause", headers=BEARER)
    assert again.json()["changed"] is False
    # Shown though it holds no job: a pause is a setting of the queue.
    queues = {q["name"]: q for q in (await web.get("/api/overview")).json()["queues"]}
    assert queues["reports"]["paused"] is True and sum(queues["reports"]["counts"].values()) == 0
    resumed = await web.post("/api/queues/reports/resume", headers=BEARER)
    assert resumed.json()["changed"] is True and await app.paused() == []
    queues = {q["name"]: q for q in (await web.get("/api/overview")).json()["queues"]}
    assert "reports" not in queues  # no jobs, no pause: nothing to show
    assert (await web.post("/api/queues/reports/stop", headers=BEARER)).status_code == 404


# --------------------------------------------------------------------------- who may act


async def test_actions_need_the_token(app: Conveyor, web: httpx.AsyncClient) -> None:
    job_id = await failed_job(app)
    for path in (
        f"/api/jobs/{job_id}/retry",
        f"/api/jobs/{job_id}/cancel",
        "/api/jobs/retry",
        "/api/jobs/purge",
        "/api/recurring/x/run",
        "/api/queues/default/pause",
    ):
        missing = await web.post(path)
        assert missing.status_code == 401, path
        assert missing.headers["www-authenticate"].startswith("Bearer")
        wrong = await web.post(path, headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status_code == 403, path
    assert (await app.get_job(job_id)).state is JobState.FAILED  # type: ignore[union-attr]
    assert (await web.get("/api/overview")).status_code == 200  # reading needs nothing


async def test_read_only_without_a_token(app: Conveyor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONVEYOR_DASHBOARD_TOKEN, raising=False)
    job_id = await failed_job(app)
    async with client(create_app(app)) as http:
        session = (await http.get("/api/session")).json()
        assert session["actions"] is False
        refused = await http.post(f"/api/jobs/{job_id}/retry", headers=BEARER)
        assert refused.status_code == 403 and "read-only" in refused.json()["error"]
    monkeypatch.setenv(CONVEYOR_DASHBOARD_TOKEN, TOKEN)
    async with client(create_app(app)) as http:
        assert (await http.get("/api/session")).json()["actions"] is True
        assert (await http.post(f"/api/jobs/{job_id}/retry", headers=BEARER)).status_code == 200
    async with client(create_app(app, actions=False)) as http:
        assert (await http.post(f"/api/jobs/{job_id}/cancel", headers=BEARER)).status_code == 403


async def test_login_session_and_csrf(app: Conveyor, web: httpx.AsyncClient) -> None:
    job_id = await failed_job(app)
    assert (await web.post("/api/login", json={"token": "wrong"})).status_code == 403
    assert (await web.post("/api/login", json={})).status_code == 401
    login = await web.post("/api/login", json={"token": TOKEN})
    assert login.status_code == 200
    cookie = login.headers["set-cookie"]
    assert SESSION_COOKIE in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    csrf = login.json()["csrf"]
    session = (await web.get("/api/session")).json()
    assert session["authenticated"] is True and session["csrf"] == csrf
    # The cookie alone is what a hostile page could make the browser send.
    no_csrf = await web.post(f"/api/jobs/{job_id}/retry")
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.json()["error"]
    wrong_csrf = await web.post(f"/api/jobs/{job_id}/retry", headers={"X-CSRF-Token": "0" * 64})
    assert wrong_csrf.status_code == 403
    assert (await app.get_job(job_id)).state is JobState.FAILED  # type: ignore[union-attr]
    ok = await web.post(f"/api/jobs/{job_id}/retry", headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200
    # A forged or altered cookie proves nothing.
    web.cookies.set(SESSION_COOKIE, "abc.99999999999.deadbeef")
    assert (
        await web.post(f"/api/jobs/{job_id}/cancel", headers={"X-CSRF-Token": csrf})
    ).status_code == 401
    await web.post("/api/logout")
    assert (await web.get("/api/session")).json()["authenticated"] is False


async def test_basic_auth_guards_reads_and_needs_csrf_to_act(app: Conveyor) -> None:
    job_id = await failed_job(app)
    guarded = create_app(app, token=TOKEN, basic_auth=("ops", "pw-of-ops"))
    async with client(guarded) as http:
        anonymous = await http.get("/api/overview")
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"].startswith("Basic")
        assert (await http.get("/")).status_code == 401
        assert (await http.get("/api/overview", auth=("ops", "wrong"))).status_code == 403
        assert (await http.get("/api/overview", auth=("ops", "pw-of-ops"))).status_code == 200
        csrf = (await http.get("/api/session", auth=("ops", "pw-of-ops"))).json()["csrf"]
        path = f"/api/jobs/{job_id}/retry"
        assert (await http.post(path, auth=("ops", "pw-of-ops"))).status_code == 403
        done = await http.post(path, auth=("ops", "pw-of-ops"), headers={"X-CSRF-Token": csrf})
        assert done.status_code == 200
        # The token still works for scripts, basic auth or not.
        assert (await http.get("/api/overview", headers=BEARER)).status_code == 200
    # Basic auth alone guards reading; actions stay off without a token.
    async with client(create_app(app, basic_auth=("ops", "pw-of-ops"))) as http:
        assert (await http.get("/api/overview", auth=("ops", "pw-of-ops"))).status_code == 200
        csrf = (await http.get("/api/session", auth=("ops", "pw-of-ops"))).json()["csrf"]
        off = await http.post(
            f"/api/jobs/{job_id}/cancel", auth=("ops", "pw-of-ops"), headers={"X-CSRF-Token": csrf}
        )
        assert off.status_code == 403 and "read-only" in off.json()["error"]


async def test_odd_bytes_in_credentials_are_refused_not_a_server_error(app: Conveyor) -> None:
    from conveyor.dashboard.auth import SESSION_COOKIE

    guarded = create_app(app, token=TOKEN, basic_auth=("ops", "pw-of-ops"))
    async with client(guarded) as http:
        # Header bytes beyond ASCII (read as Latin-1): not base64's alphabet.
        odd = {"Authorization": b"Basic \xe9\xe9=="}
        assert (await http.get("/api/overview", headers=odd)).status_code in (401, 403)
    async with client(create_app(app, token=TOKEN)) as http:
        cookie = {"Cookie": f"{SESSION_COOKIE}=abc.9999999999.sign".encode() + b"\xe9"}
        assert (await http.get("/api/session", headers=cookie)).status_code == 200  # anonymous
        login = await http.post("/api/login", content=b"\xff\xfe{not utf-8")
        assert login.status_code in (400, 401, 403), login.text
        session = await http.post("/api/login", json={"token": TOKEN})
        assert session.status_code == 200
        csrf = {"X-CSRF-Token": b"t\xe9"}
        retried = await http.post("/api/jobs/retry", params={"state": "failed"}, headers=csrf)
        assert retried.status_code == 403, retried.text


async def test_a_job_holding_a_lone_surrogate_is_listed(
    app: Conveyor, web: httpx.AsyncClient
) -> None:
    # A file name decoded from bytes that are not UTF-8 (os.fsdecode) holds
    # a lone surrogate: conveyor refuses it at enqueue now, but another
    # producer (or an older release) may have stored one: it must not make
    # the list a 500.
    import json
    import time

    from conveyor.backends.base import NewJob
    from conveyor.job import new_job_id

    now = time.time()
    payload = json.dumps({"file": "report-\udcff.csv"})
    [job] = await app.backend.enqueue(
        [
            NewJob(
                new_job_id(), "report.build", "default", payload, 0, 0, None, None, now, now + 3600
            )
        ]
    )
    listed = await web.get("/api/jobs", headers=BEARER)
    assert listed.status_code == 200, listed.text
    shown = await web.get(f"/api/jobs/{job.id}", headers=BEARER)
    assert shown.status_code == 200 and "report-" in shown.text


# --------------------------------------------------------------------------- redaction


async def test_redaction_in_every_view(app: Conveyor) -> None:
    job_id = await failed_job(app, password="hunter2", profile={"api_key": "k-1", "name": "A"})
    await app.recurring("nightly", "email.welcome", {"to": "x", "password": "hunter2"}, every=60)
    async with client(create_app(app, token=TOKEN)) as http:
        detail = (await http.get(f"/api/jobs/{job_id}")).text
        listing = (await http.get("/api/jobs")).text
        schedules = (await http.get("/api/recurring")).text
        retried = (await http.post(f"/api/jobs/{job_id}/retry", headers=BEARER)).text
    for text in (detail, listing, schedules, retried):
        assert "hunter2" not in text and "k-1" not in text
        assert "[redacted]" in text
    assert '"name":"A"' in detail.replace(" ", "")  # other fields are shown

    # Rules of one's own: per job type, replacing the defaults.
    custom = create_app(app, token=TOKEN, redact={"email.welcome": ["to"]})
    async with client(custom) as http:
        job = (await http.get(f"/api/jobs/{job_id}")).json()
    assert job["payload"]["to"] == "[redacted]" and job["payload"]["password"] == "hunter2"
    assert job["logs"][0]["to"] == "[redacted]"
    async with client(create_app(app, redact=None)) as http:
        assert "hunter2" in (await http.get(f"/api/jobs/{job_id}")).text


async def test_a_redacted_value_is_hidden_where_the_handler_echoed_it(app: Conveyor) -> None:
    """A handler that puts its payload in an error message (or a log line's
    text) would show the password in the error, the traceback and the
    attempt history: the redacted fields' values are hidden there too."""

    @app.job("login.check", retries=0)
    def check(payload: dict[str, Any], ctx: JobContext) -> None:
        ctx.log(f"checking {payload}")
        raise PermissionError(f"login refused for {payload}")

    job = await app.enqueue("login.check", {"user": "ada", "password": "hunter2", "pin": 9876})
    await app.drain()
    assert (await app.wait(job.id, timeout=5)).state is JobState.FAILED
    async with client(create_app(app, token=TOKEN)) as http:
        detail = (await http.get(f"/api/jobs/{job.id}")).json()
        listing = (await http.get("/api/jobs", params={"state": "failed"})).text
    shown = [detail["error"], detail["traceback"], detail["history"][0]["error"]]
    shown.append(detail["logs"][0]["msg"])
    for text in [*shown, listing]:
        assert "hunter2" not in text
        assert "[redacted]" in text
    assert "ada" in detail["error"]  # what is not secret stays readable
    custom = create_app(app, redact={"login.check": ["password", "pin"]})
    async with client(custom) as http:
        error = (await http.get(f"/api/jobs/{job.id}")).json()["error"]
    assert "hunter2" not in error and "9876" not in error


@pytest.mark.parametrize(
    "secret", ["C:\\vault\\s3cr3t", "line1\nline2-secret", "p\u00e4ssw\u00f6rd-42"]
)
async def test_a_redacted_value_echoed_escaped_is_hidden_too(app: Conveyor, secret: str) -> None:
    """repr() and json.dumps, as an f-string or a log line writes a payload,
    double backslashes, escape newlines and non-ASCII: the secret must be
    hidden in those spellings as well."""

    @app.job("login.check", retries=0)
    def check(payload: dict[str, Any], ctx: JobContext) -> None:
        ctx.log(f"checking {json.dumps(payload)}")
        raise PermissionError(f"login refused for {payload}")

    job = await app.enqueue("login.check", {"user": "ada", "password": secret})
    await app.drain()
    async with client(create_app(app, token=TOKEN)) as http:
        detail = (await http.get(f"/api/jobs/{job.id}")).json()
    shown = [detail["error"], detail["traceback"], detail["logs"][0]["msg"]]
    spellings = {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1]}
    for text in shown:
        assert not [s for s in spellings if s in text], text
        assert "[redacted]" in text


# --------------------------------------------------------------------------- the page, mounts


async def test_two_mounts_in_one_process_keep_their_own_app_and_sessions(
    sqlite_urls: Callable[[], str],
) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    first, second = make_app(sqlite_urls()), make_app(sqlite_urls())
    async with first, second:
        one = await failed_job(first)
        two = (await second.enqueue("report.build", {})).id
        site = Starlette(
            routes=[
                Mount("/one", app=create_app(first, token=TOKEN)),
                Mount("/two", app=create_app(second, token="another-long-token-here")),
            ]
        )
        async with client(site) as http:
            assert [j["id"] for j in (await http.get("/one/api/jobs")).json()["jobs"]] == [one]
            assert [j["id"] for j in (await http.get("/two/api/jobs")).json()["jobs"]] == [two]
            page = (await http.get("/two/")).text
            assert '<base href="/two/">' in page
            assert (await http.get("/two/static/app.js")).status_code == 200
            login = await http.post("/one/api/login", json={"token": TOKEN})
            assert "Path=/one/" in login.headers["set-cookie"]
            # One mount's token means nothing to the other.
            assert (
                await http.post(f"/two/api/jobs/{two}/cancel", headers=BEARER)
            ).status_code == 403


async def test_page_headers(web: httpx.AsyncClient) -> None:
    page = await web.get("/")
    assert page.status_code == 200
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert re.search(r'<base href="/">', page.text)
    assert (await web.get("/static/app.css")).status_code == 200


async def test_mounted_in_fastapi(app: Conveyor) -> None:
    from fastapi import FastAPI

    api = FastAPI()

    @api.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    api.mount("/jobs", create_app(app, token=TOKEN))
    job_id = await failed_job(app)
    async with client(api) as http:
        assert (await http.get("/health")).json() == {"ok": True}
        page = await http.get("/jobs/")
        assert page.status_code == 200 and '<base href="/jobs/">' in page.text
        assert (await http.get(f"/jobs/api/jobs/{job_id}")).json()["state"] == "failed"
        retried = await http.post(f"/jobs/api/jobs/{job_id}/retry", headers=BEARER)
        assert retried.json()["state"] == "queued"
