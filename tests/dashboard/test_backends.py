"""Every read route on every backend: an answer, or 501 saying what the
backend cannot do, as its declared capabilities say."""

from __future__ import annotations

import httpx

from conveyor import Conveyor

ROUTES = ("/api/overview", "/api/jobs", "/api/workers", "/api/recurring")


async def test_every_read_route_answers_as_the_backend_can(backend_url: str) -> None:
    from conveyor.dashboard import create_app

    app = Conveyor(backend_url)
    app.declare("report.build", retries=0)
    caps = app.backend.capabilities
    transport = httpx.ASGITransport(app=create_app(app))
    async with app, httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        delay = 600 if caps.max_delay is None else None  # SQS FIFO queues cannot delay
        job = await app.enqueue("report.build", {"rows": 1}, delay=delay)
        answers = {path: await http.get(path) for path in ROUTES}
        answers["detail"] = await http.get(f"/api/jobs/{job.id}")
    expected = {
        "/api/overview": caps.stats,
        "/api/jobs": caps.list_jobs,
        "/api/workers": True,  # `supported: false` where there is no presence
        "/api/recurring": caps.recurring,
        "detail": caps.lookup,
    }
    for route, supported in expected.items():
        response = answers[route]
        if supported:
            assert response.status_code == 200, (route, response.text)
        else:
            assert response.status_code == 501, (route, response.text)
            assert "does not" in response.json()["error"], response.text
    if caps.lookup:
        assert answers["detail"].json()["state"] in ("scheduled", "queued")
    if caps.stats:
        for queue in answers["/api/overview"].json()["queues"]:
            assert (queue["activity"] is None) is (not caps.list_jobs)


async def test_pause_from_the_dashboard_where_the_backend_can(backend_url: str) -> None:
    from conveyor.dashboard import create_app

    app = Conveyor(backend_url)
    app.declare("report.build", queue="reports")
    token = "a-long-enough-dashboard-token"
    web = create_app(app, token=token)
    transport = httpx.ASGITransport(app=web)
    async with app, httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        pause = await http.post(
            "/api/queues/reports/pause", headers={"Authorization": f"Bearer {token}"}
        )
        overview = await http.get("/api/overview")
        if app.backend.capabilities.pause:
            assert pause.status_code == 200, pause.text
            assert await app.paused() == ["reports"]
        else:
            assert pause.status_code == 501 and "store=" in pause.json()["error"]
        if overview.status_code == 200:
            queues = {q["name"]: q["paused"] for q in overview.json()["queues"]}
            if app.backend.capabilities.pause:
                assert queues["reports"] is True
            else:
                assert all(paused is None for paused in queues.values())
