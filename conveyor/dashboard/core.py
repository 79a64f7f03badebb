"""The dashboard's core: what each page and each JSON route shows or does,
as plain data, with no web framework in sight.

A `Dashboard` holds one Conveyor app and its redaction rules, and nothing
else: no module state, so any number of dashboards (two mounts in one
process, over two apps) live side by side. The Starlette layer (asgi.py)
only parses requests, checks who may act, and turns these results and
errors into responses.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from conveyor.backends import scheme_of
from conveyor.dashboard.activity import last_hour
from conveyor.dashboard.redact import Redaction
from conveyor.durations import InvalidDurationError, parse_duration
from conveyor.job import ConveyorError, Job, JobState, NotSupportedError
from conveyor.options import check_state

if TYPE_CHECKING:
    from conveyor.app import Conveyor

MAX_PAGE = 200  # jobs per page of a list
MAX_RETRY_ALL = 10_000  # jobs one "retry all matching" retries


class DashboardError(ConveyorError):
    """A request the dashboard refuses; `status` is its HTTP status."""

    status = 400


class NotFoundError(DashboardError):
    status = 404


@dataclass(frozen=True, slots=True)
class JobQuery:
    """A job list's filter and page, as the list page and GET /api/jobs take it."""

    state: JobState | None = None
    name: str | None = None
    queue: str | None = None
    key: str | None = None
    limit: int = 50
    offset: int = 0

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> JobQuery:
        """From query parameters; empty ones count as absent."""

        def text(name: str) -> str | None:
            value = params.get(name, "").strip()
            return value or None

        try:
            state = check_state(text("state"))
        except ConveyorError as exc:
            raise DashboardError(str(exc)) from None
        return cls(
            state=state,
            name=text("name"),
            queue=text("queue"),
            key=text("key"),
            limit=_int(params, "limit", 50, 1, MAX_PAGE),
            offset=_int(params, "offset", 0, 0, 10**9),
        )


def _int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise DashboardError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise DashboardError(f"{name} must be from {low} to {high}, got {value}")
    return value


class Dashboard:
    """The dashboard of one app: every read and action, returning plain data."""

    def __init__(self, app: Conveyor, redaction: Redaction | None = None) -> None:
        self.app = app
        self.redaction = redaction if redaction is not None else Redaction()

    # ------------------------------------------------------------------ reads

    async def overview(self, now: float | None = None) -> dict[str, Any]:
        """Per queue: counts by state, the last hour's activity, the age of
        the oldest job waiting."""
        now = time.time() if now is None else now
        stats = await self.app.stats()
        # A broker without a store (bare SQS) counts its messages but keeps
        # no job records: no chart, no oldest job, the counts alone.
        listing = self.app.backend.capabilities.list_jobs
        paused = await self._paused()
        queues = []
        # A paused queue shows even with no job in it: it is a setting.
        for queue in sorted(set(stats) | (paused or set())):
            counts = {state.value: stats.get(queue, {}).get(state.value, 0) for state in JobState}
            queued = counts[JobState.QUEUED.value]
            queues.append(
                {
                    "name": queue,
                    "counts": counts,
                    "oldest_waiting_seconds": (
                        await self._oldest_waiting(queue, queued, now) if listing else None
                    ),
                    "activity": await last_hour(self.app, queue, now) if listing else None,
                    # None: the backend cannot pause (a broker without a store).
                    "paused": None if paused is None else queue in paused,
                }
            )
        return {"now": now, "backend": scheme_of(self.app.url), "queues": queues}

    async def _paused(self) -> set[str] | None:
        if not self.app.backend.capabilities.pause:
            return None
        return set(await self.app.paused())

    async def _oldest_waiting(self, queue: str, queued: int, now: float) -> float | None:
        """Seconds the oldest queued job of `queue` has been due; lists are
        newest first, so it is the last one."""
        if not queued:
            return None
        oldest = await self.app.list_jobs(
            state=JobState.QUEUED, queue=queue, limit=1, offset=queued - 1
        )
        if not oldest:
            return None  # it was claimed meanwhile
        since = oldest[0].run_at or oldest[0].created_at
        return None if since is None else max(0.0, now - since.timestamp())

    async def jobs(self, query: JobQuery) -> dict[str, Any]:
        """A page of jobs, newest first. With `key`, the one job holding that
        idempotency key (when it matches the other filters)."""
        if query.key is not None:
            job = await self.app.get_job_by_key(query.key)
            found = [job] if job is not None and _matches(job, query) else []
            page = found[query.offset : query.offset + query.limit]
            more = False
        else:
            # One more than asked tells whether a next page exists.
            page = await self.app.list_jobs(
                state=query.state,
                name=query.name,
                queue=query.queue,
                limit=query.limit + 1,
                offset=query.offset,
            )
            more = len(page) > query.limit
            page = page[: query.limit]
        return {
            "jobs": [self.view(job) for job in page],
            "limit": query.limit,
            "offset": query.offset,
            "has_more": more,
        }

    async def job(self, job_id: str) -> dict[str, Any]:
        job = await self.app.get_job(job_id)
        if job is None:
            raise NotFoundError(f"no job with id {job_id!r}")
        return self.view(job)

    def view(self, job: Job) -> dict[str, Any]:
        """A job as every page and route shows it: redacted."""
        return self.redaction.job(job.name, job.to_dict())

    async def workers(self) -> dict[str, Any]:
        """Live workers, and those whose beats stopped in the last minutes
        (`stale`), as the backend's presence records say; `supported` is
        False on a backend that keeps none."""
        try:
            live = await self.app.workers(include_stale=True)
        except NotSupportedError as exc:
            return {"supported": False, "reason": str(exc), "workers": [], "unserved": {}}
        return {
            "supported": True,
            "workers": [_plain(dataclasses.asdict(w)) for w in live],
            "unserved": await self.app.unserved(),
        }

    async def recurring(self) -> list[dict[str, Any]]:
        """Every schedule: its spec, zone, next run (UTC and its zone's wall
        clock), last run and last error."""
        schedules = await self.app.list_recurring()
        return [
            {
                "name": s.name,
                "job_name": s.job_name,
                "payload": self.redaction.apply(s.job_name, s.payload),
                "spec": s.spec,
                "tz": s.tz,
                "enabled": s.enabled,
                "next_run": _iso(s.next_run),
                "next_run_local": _iso(s.next_run, s.tz),
                "last_run": _iso(s.last_run),
                "last_error": s.last_error,
            }
            for s in schedules
        ]

    # ------------------------------------------------------------------ actions

    async def retry(self, job_id: str) -> dict[str, Any]:
        job = await self.app.retry(job_id)
        if job is None:
            raise NotFoundError(f"no failed or cancelled job with id {job_id!r}")
        return self.view(job)

    async def cancel(self, job_id: str) -> dict[str, Any]:
        if not await self.app.cancel(job_id):
            raise NotFoundError(f"no queued, scheduled or running job with id {job_id!r}")
        return await self.job(job_id)

    async def retry_matching(self, query: JobQuery) -> dict[str, Any]:
        """Retry every failed (or cancelled) job matching the filter."""
        state = query.state or JobState.FAILED
        if state not in (JobState.FAILED, JobState.CANCELLED):
            raise DashboardError(f"only failed or cancelled jobs can be retried, not {state}")
        # Ids first, then retries: a retried job leaves the state, which
        # would shift the pages under a loop that retried as it read.
        ids: list[str] = []
        if query.key is not None:  # the one job holding the key, as the list shows
            held = await self.app.get_job_by_key(query.key)
            if held is not None and _matches(held, replace(query, state=state)):
                ids.append(held.id)
        while query.key is None and len(ids) < MAX_RETRY_ALL:
            page = await self.app.list_jobs(
                state=state, name=query.name, queue=query.queue, limit=MAX_PAGE, offset=len(ids)
            )
            ids += [job.id for job in page]
            if len(page) < MAX_PAGE:
                break
        retried = 0
        for job_id in ids:
            if await self.app.retry(job_id) is not None:
                retried += 1
        return {"retried": retried}

    async def purge(self, params: Mapping[str, str]) -> dict[str, Any]:
        """Delete the failed (or completed, or cancelled) jobs of a queue or
        of all, optionally only those older than a duration ("7d")."""
        narrowed = [name for name in ("name", "key") if params.get(name, "").strip()]
        if narrowed:
            # Purging deletes by state, queue and age only: refused rather
            # than delete more than the filtered list shows.
            raise DashboardError(
                f"purge cannot filter by {' or '.join(narrowed)}: it deletes every job of"
                " the state (in a queue, older than an age); retry or cancel them one by one"
            )
        raw_state = params.get("state", "").strip() or JobState.FAILED.value
        state = check_state(raw_state)
        if state not in (JobState.FAILED, JobState.COMPLETED, JobState.CANCELLED):
            raise DashboardError(f"only final jobs can be purged, not {raw_state}")
        older = params.get("older_than", "").strip()
        try:
            older_than = (
                parse_duration(older, what="older_than", allow_zero=True) if older else None
            )
        except InvalidDurationError as exc:
            raise DashboardError(str(exc)) from None
        queue = params.get("queue", "").strip() or None
        purged = await self.app.purge(state, older_than=older_than, queue=queue)
        return {"purged": purged}

    async def recurring_action(self, name: str, action: str) -> dict[str, Any]:
        """enable, disable or run (one job now) the schedule `name`."""
        if action == "enable":
            done = await self.app.enable_recurring(name)
        elif action == "disable":
            done = await self.app.disable_recurring(name)
        elif action == "run":
            job = await self.app.run_recurring(name)
            if job is None:
                raise NotFoundError(f"no recurring schedule named {name!r}")
            return {"job": self.view(job)}
        else:
            raise NotFoundError(f"unknown action {action!r}; known: enable, disable, run")
        if not done:
            raise NotFoundError(f"no recurring schedule named {name!r}")
        return {"ok": True}

    async def queue_action(self, queue: str, action: str) -> dict[str, Any]:
        """pause or resume `queue`; `changed` is False when it already was."""
        if action == "pause":
            changed = await self.app.pause(queue)
        elif action == "resume":
            changed = await self.app.resume(queue)
        else:
            raise NotFoundError(f"unknown action {action!r}; known: pause, resume")
        return {"queue": queue, "paused": action == "pause", "changed": changed}


def _matches(job: Job, query: JobQuery) -> bool:
    return (
        (query.state is None or job.state == query.state)
        and (query.name is None or job.name == query.name)
        and (query.queue is None or job.queue == query.queue)
    )


def _plain(value: Any) -> Any:
    """Tuples as lists, for JSON."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _iso(value: Any, tz: str | None = None) -> str | None:
    if value is None:
        return None
    if tz is not None:
        try:
            return str(value.astimezone(ZoneInfo(tz)).isoformat())
        except (ValueError, KeyError):  # a zone this machine does not know
            return None
    return str(value.isoformat())
