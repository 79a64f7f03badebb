"""FastAPI (or Starlette): the app's lifespan opens conveyor, runs a worker in
the same event loop, and closes both on shutdown; an endpoint enqueues.

    CONVEYOR_URL=sqlite:///jobs.db uvicorn fastapi_app:api

Web processes that should not run jobs (or several uvicorn workers that share
one job worker) leave out `conveyor.worker(...)` and run a worker of their own:
`conveyor worker fastapi_app:conveyor`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from conveyor import Conveyor, JobContext

conveyor = Conveyor()  # $CONVEYOR_URL, else sqlite:///conveyor.db


class Welcome(BaseModel):
    to: str
    name: str


@conveyor.job("email.welcome", retries=3, timeout=30)
async def send_welcome(payload: Welcome, ctx: JobContext) -> dict[str, bool]:
    ctx.log("sending", to=payload.to)  # shown on stderr under uvicorn, kept on the job
    return {"sent": True}


@asynccontextmanager
async def lifespan(api: FastAPI) -> AsyncIterator[None]:
    # Opened now (a bad URL fails the start-up), the worker runs in this event
    # loop; on shutdown the worker stops gracefully, then conveyor is closed.
    async with conveyor, conveyor.worker(concurrency=4):
        yield


api = FastAPI(lifespan=lifespan)


@api.post("/signup", status_code=202)
async def signup(body: Welcome) -> dict[str, str]:
    job = await send_welcome.enqueue(body, key=f"welcome:{body.to}")
    return {"job": job.id}


@api.get("/jobs/{job_id}")
async def job_status(job_id: str) -> dict[str, Any]:
    job = await conveyor.get_job(job_id)
    if job is None:
        raise HTTPException(status_code=404, detail="no such job")
    return {"state": job.state.value, "result": job.result}
