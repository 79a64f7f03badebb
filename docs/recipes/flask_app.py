"""Flask: an app factory that builds one Conveyor per app and closes it at
exit; views use the blocking twins (`enqueue_sync`, `get_job_sync`).

    CONVEYOR_URL=sqlite:///jobs.db flask --app flask_app run      # the web app
    CONVEYOR_URL=sqlite:///jobs.db flask --app flask_app worker   # its worker
"""

from __future__ import annotations

import asyncio
import atexit
from typing import Any

import click
from flask import Flask, abort, current_app, request
from pydantic import BaseModel

from conveyor import Conveyor, JobContext


class Welcome(BaseModel):
    to: str
    name: str


def build_conveyor(url: str | None = None) -> Conveyor:
    """A Conveyor with this project's job types; the URL defaults to $CONVEYOR_URL."""
    conveyor = Conveyor(url)

    @conveyor.job("email.welcome", retries=3, timeout=30)
    def send_welcome(payload: Welcome, ctx: JobContext) -> dict[str, bool]:
        ctx.log("sending", to=payload.to)
        return {"sent": True}

    return conveyor


def jobs() -> Conveyor:
    """The current Flask app's Conveyor."""
    conveyor: Conveyor = current_app.extensions["conveyor"]
    return conveyor


def create_app(conveyor_url: str | None = None) -> Flask:
    app = Flask(__name__)
    conveyor = build_conveyor(conveyor_url)
    app.extensions["conveyor"] = conveyor
    # Opened on first use, by the twins' helper thread; closed when the process exits.
    atexit.register(conveyor.close_sync)

    @app.post("/signup")
    def signup() -> tuple[dict[str, str], int]:
        welcome = Welcome.model_validate(request.get_json())
        job = jobs().enqueue_sync("email.welcome", welcome, key=f"welcome:{welcome.to}")
        return {"job": job.id}, 202

    @app.get("/jobs/<job_id>")
    def job_status(job_id: str) -> dict[str, Any]:
        job = jobs().get_job_sync(job_id)
        if job is None:
            abort(404)
        return {"state": job.state.value, "result": job.result}

    @app.cli.command("worker")
    @click.option("--concurrency", type=int, default=None, help="Jobs run at once.")
    def worker(concurrency: int | None) -> None:
        """Run a conveyor worker for this app's jobs until SIGTERM/SIGINT."""

        async def serve() -> None:
            try:
                await conveyor.worker(concurrency=concurrency).run()
            finally:
                await conveyor.close()

        asyncio.run(serve())

    return app
