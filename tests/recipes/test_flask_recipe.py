"""docs/recipes/flask_app.py: views enqueue with the blocking twins, and the
app's `flask worker` command (a real process) runs the job."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from .helpers import RECIPES, WAIT, Child, load_recipe, python


def test_a_view_enqueues_and_the_flask_worker_command_runs_it(tmp_path: Path) -> None:
    pytest.importorskip("flask")
    url = f"sqlite:///{tmp_path}/jobs.db"
    recipe = load_recipe("flask_app.py")
    app = recipe.create_app(url)
    client = app.test_client()
    response = client.post("/signup", json={"to": "ada@example.com", "name": "Ada"})
    assert response.status_code == 202, response.get_data(as_text=True)
    job_id = response.get_json()["job"]
    assert client.get(f"/jobs/{job_id}").get_json()["state"] == "queued"
    assert client.get("/jobs/nope").status_code == 404

    env = dict(os.environ, CONVEYOR_URL=url)
    worker = Child(python("-m", "flask", "--app", "flask_app", "worker"), cwd=RECIPES, env=env)
    try:
        worker.wait_for(" started: queues=")
        deadline = time.monotonic() + WAIT
        while (body := client.get(f"/jobs/{job_id}").get_json())["state"] != "completed":
            assert body["state"] in ("queued", "running"), body
            assert time.monotonic() < deadline, body
            time.sleep(0.02)
        assert body["result"] == {"sent": True}
        assert "sending" in worker.wait_for("conveyor.job: email.welcome")
    finally:
        code = worker.stop()
    assert code == 0, worker.output
    worker.wait_for(" stopped: ")
    app.extensions["conveyor"].close_sync()
