"""`postgresql://` — jobs in PostgreSQL tables, claimed with SKIP LOCKED.

How it is built (see migrations.py for the tables and sql.py for the SQL):

* Every operation is one statement over arrays (`unnest`), so a batch of
  enqueues, acknowledgements or heartbeats is one round trip and one plan.
  A claim is two statements in one round trip (psycopg's pipeline mode): the
  due scheduled jobs of the queues are promoted, then
  `UPDATE ... WHERE seq IN (SELECT ... FOR UPDATE SKIP LOCKED)` leases up to
  N jobs, one walk of the partial claim index per (queue, job name), so the
  cost does not grow with the backlog. `finish_and_claim` sends the
  acknowledgements and the next claim in the same round trip.
* Idle workers wait on LISTEN/NOTIFY: one listening connection per event
  loop (per worker process), shared by its waiters. New jobs NOTIFY from an
  insert trigger, so jobs enqueued inside a caller's transaction wake
  workers when it commits. The worker's poll interval is the safety net for
  a lost notification.
* The server's clock decides leases, due times and expiries wherever the
  engine sends no time (it sends none), so workers' clocks may be skewed.
* Completed jobs beyond `keep_completed` are deleted in batches, and the
  backend VACUUMs its own tables when their dead rows pile up
  (maintenance.py), so claims stay fast with autovacuum off or behind.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from typing import Any, Final

import psycopg

from conveyor.backends.base import (
    CancelResult,
    Capabilities,
    ClaimToken,
    Heartbeat,
    LeaseStatus,
    NewJob,
    Outcome,
    Retention,
)
from conveyor.backends.postgres import caller
from conveyor.backends.postgres.connection import Params
from conveyor.backends.postgres.inserts import insert
from conveyor.backends.postgres.maintenance import Maintenance
from conveyor.backends.postgres.sql import COLS
from conveyor.backends.postgres.stores import PostgresStores
from conveyor.backends.records import by_ids, claim_order, logs_json, row_to_job
from conveyor.job import InvalidOptionError, Job, JobState

# How long an idle waiter waits between looks of its own while the LISTEN
# connection is down (notifications are lost then).
_UNLISTENED_POLL: Final = 1.0


class PostgresBackend(PostgresStores):
    """`postgresql://user@host:5432/db?schema=conveyor` (also `postgres://`).

    URL options besides libpq's own parameters (sslmode, connect_timeout,
    application_name, ...): `schema` (default `conveyor`), `migrate`
    (default true: create and upgrade the schema on first use), `pool_size`
    (connections per process and event loop, default 10), `vacuum` (default
    true: the backend VACUUMs its tables when dead rows pile up),
    `prepared_statements` (default true; false behind a pooler in
    transaction mode, which producers may use; workers need LISTEN, so
    session mode or a direct connection).
    """

    capabilities = Capabilities(recurring=True, locks=True, cache=True, transactional_enqueue=True)

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._maintenance = Maintenance(self)
        # With sync_acks=false the worker's statements commit without waiting
        # for the WAL flush (None keeps the server's setting).
        self._commit = None if self.settings.sync_acks else "off"

    async def close(self) -> None:
        await self._maintenance.stop()  # a VACUUM in flight is cancelled, not left behind
        await super().close()

    # ------------------------------------------------------------ producing

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[Job]:
        if not jobs:
            return []
        # No answer limit: one statement for the whole batch, however big.
        async with self._conn(bounded=False) as conn:
            return await insert(self.q, conn, jobs)

    async def enqueue_in(self, connection: Any, jobs: Sequence[NewJob]) -> list[Job]:
        if not jobs:
            return []
        conn = await caller.in_this_loop(connection)
        await self._pool()  # the schema exists before the caller's insert needs it
        try:
            return await insert(self.q, conn, jobs)
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as exc:
            raise InvalidOptionError(
                f"cannot enqueue on connection=: it has no table {self.schema}.jobs, so it is"
                f" not connected to conveyor's database ({self.settings.display}); the"
                " failed statement aborted its transaction"
            ) from exc

    def unwrap_connection(self, connection: Any) -> Any:
        return caller.in_this_thread(connection)

    # ------------------------------------------------------------ consuming

    async def claim(
        self,
        queues: Sequence[str],
        limit: int,
        lease: float,
        now: float | None = None,
        *,
        claim_id: str | None = None,
        names: Sequence[str] | None = None,
    ) -> list[Job]:
        params = self._claim_params(queues, limit, lease, now, claim_id, names)
        if params is None:
            return []
        rows = await self._fetch(self.q.exchange(names is not None, finish=False), params)
        return self._claimed(rows, params)

    def _claim_params(
        self,
        queues: Sequence[str],
        limit: int,
        lease: float,
        now: float | None,
        claim_id: str | None,
        names: Sequence[str] | None,
    ) -> dict[str, Any] | None:
        if limit <= 0 or not queues or (names is not None and not names):
            return None
        return {
            "now": now,
            "commit": self._commit,
            "queues": list(dict.fromkeys(queues)),
            "names": None if names is None else list(dict.fromkeys(names)),
            "limit": limit,
            "lease": lease,
            "token": claim_id if claim_id is not None else os.urandom(12).hex(),
        }

    @staticmethod
    def _claimed(rows: list[tuple[Any, ...]], params: Params) -> list[Job]:
        """The claimed jobs of an exchange's rows, in claim order."""
        claimed = [row[2:] for row in rows if row[0] == "c"]
        claimed.sort(key=claim_order)
        jobs = [row_to_job(row) for row in claimed]
        for job in jobs:
            job.token = params["token"]
        return jobs

    async def finish_and_claim(
        self,
        outcomes: Sequence[Outcome],
        retention: Retention,
        queues: Sequence[str],
        limit: int,
        lease: float,
        now: float | None = None,
        *,
        claim_id: str | None = None,
        names: Sequence[str] | None = None,
    ) -> tuple[list[bool], list[Job]]:
        params = self._claim_params(queues, limit, lease, now, claim_id, names)
        finish, sent = self._finish_statement(outcomes)
        if params is None:
            if finish is None:
                return [False] * len(outcomes), []
            return await self._finish_rows(outcomes, sent, finish, retention), []
        if finish is None:
            return [False] * len(outcomes), await self.claim(
                queues, limit, lease, now, claim_id=params["token"], names=names
            )
        rows = await self._fetch(
            self.q.exchange(names is not None, finish=True), {**finish[1], **params}
        )
        (finished,) = [row[1] for row in rows if row[0] == "f"]
        accepted = await self._finished(outcomes, sent, [tuple(f) for f in finished], retention)
        return accepted, self._claimed(rows, params)

    # A broker's store (base.DeliveryStore): the broker delivers job ids.

    async def claim_ids(
        self,
        ids: Sequence[str],
        lease: float,
        now: float | None = None,
        *,
        claim_id: str,
    ) -> list[Job | None]:
        if not ids:
            return []
        params = {
            "now": now,
            "commit": self._commit,
            "ids": list(dict.fromkeys(ids)),
            "lease": lease,
            "token": claim_id,
        }
        jobs = [row_to_job(row) for row in await self._fetch(self.q.claim_ids, params)]
        for job in jobs:
            job.token = claim_id
        return by_ids(ids, jobs)

    async def withdraw(self, ids: Sequence[str]) -> list[str]:
        if not ids:
            return []
        rows = await self._fetch(self.q.withdraw, {"ids": list(dict.fromkeys(ids))})
        return [row[0] for row in rows]

    async def release_due(
        self, queues: Sequence[str], limit: int, now: float | None = None
    ) -> list[Job]:
        if limit <= 0 or not queues:
            return []
        params = {"now": now, "queues": list(dict.fromkeys(queues)), "limit": limit}
        rows = await self._fetch(self.q.release_due, params)
        rows.sort(key=lambda row: (row[11], row[0]))  # (run_at, seq)
        # No NOTIFY: an idle worker of these queues already waits only until
        # the earliest run_at among them, and finds the work then.
        return [row_to_job(row) for row in rows]

    async def unclaim(self, claim_id: str, now: float | None = None) -> int:
        rows = await self._fetch(
            self.q.unclaim, {"now": now, "token": claim_id, "commit": self._commit}
        )
        await self._notify((queue, name) for queue, state, name in rows if state == "queued")
        return len(rows)

    async def heartbeat(
        self, beats: Sequence[Heartbeat], lease: float, now: float | None = None
    ) -> list[LeaseStatus]:
        if not beats:
            return []
        params = {
            "now": now,
            "commit": self._commit,
            "lease": lease,
            "rows": json.dumps([[b.job_id, b.token, logs_json(b.logs)] for b in beats]),
        }
        rows = await self._fetch(self.q.heartbeat, params)
        held = {(job_id, token): cancel for job_id, token, cancel in rows}
        statuses: list[LeaseStatus] = []
        for beat in beats:
            cancel = held.pop((beat.job_id, beat.token), None)  # a repeated beat: LOST
            if cancel is None:
                statuses.append(LeaseStatus.LOST)
            else:
                statuses.append(LeaseStatus.CANCEL if cancel else LeaseStatus.HELD)
        return statuses

    async def finish(self, outcomes: Sequence[Outcome], retention: Retention) -> list[bool]:
        statement, sent = self._finish_statement(outcomes)
        if statement is None:
            return [False] * len(outcomes)
        return await self._finish_rows(outcomes, sent, statement, retention)

    async def _finish_rows(
        self,
        outcomes: Sequence[Outcome],
        sent: list[int],
        statement: tuple[str, Params],
        retention: Retention,
    ) -> list[bool]:
        rows = await self._fetch(*statement)
        return await self._finished(outcomes, sent, rows, retention)

    def _finish_statement(
        self, outcomes: Sequence[Outcome]
    ) -> tuple[tuple[str, Params] | None, list[int]]:
        """The one UPDATE for a batch of outcomes, and the indexes it carries:
        a second outcome under the same claim in one batch is not sent (it
        finds the job no longer running, as it would in a later batch)."""
        sent: list[int] = []
        seen: set[tuple[str, str]] = set()
        for index, out in enumerate(outcomes):
            if (out.job_id, out.token) not in seen:
                seen.add((out.job_id, out.token))
                sent.append(index)
        if not sent:
            return None, sent
        chosen = [outcomes[i] for i in sent]
        rows = [
            [
                o.job_id,
                o.token,
                o.kind.value,
                o.at,
                o.result,
                o.error,
                o.run_at,
                o.retry_in,
                logs_json(o.logs),
                o.progress,
                o.traceback,
                o.timed_out,
            ]
            for o in chosen
        ]
        params = {"now": None, "commit": self._commit, "rows": json.dumps(rows)}
        return (self.q.finish, params), sent

    async def _finished(
        self,
        outcomes: Sequence[Outcome],
        sent: list[int],
        rows: list[tuple[Any, ...]],
        retention: Retention,
    ) -> list[bool]:
        """Accepted flags from the finish UPDATE's rows (id, token, queue,
        new state, name); then retention and wake-ups for what it made
        claimable."""
        changed = {
            (job_id, token): (queue, state, name) for job_id, token, queue, state, name in rows
        }
        accepted = [False] * len(outcomes)
        for index in sent:
            accepted[index] = (outcomes[index].job_id, outcomes[index].token) in changed
        ended = [(queue, state) for queue, state, _ in changed.values()]
        await self._maintenance.after_finish(ended, retention)
        await self._notify(
            (queue, name) for queue, state, name in changed.values() if state in _CLAIMABLE
        )
        return accepted

    async def progress(
        self,
        job_id: str,
        token: ClaimToken,
        progress: float | None,
        logs: Sequence[dict[str, Any]],
    ) -> bool:
        params = {"id": job_id, "token": token, "progress": progress, "logs": logs_json(logs)}
        return await self._write(self.q.progress, params) == 1

    async def recover_expired(
        self, now: float | None, max_stalled: int, retention: Retention | None = None
    ) -> list[Job]:
        rows = await self._fetch(
            self.q.recover, {"now": now, "max_stalled": max_stalled, "commit": self._commit}
        )
        retention = retention or Retention()
        rows.sort(key=lambda row: row[0])
        jobs = [row_to_job(row) for row in rows]
        await self._maintenance.after_finish([(j.queue, j.state.value) for j in jobs], retention)
        await self._notify((j.queue, j.name) for j in jobs if j.state is JobState.QUEUED)
        await self._maintenance.tick()
        return jobs

    async def wait_for_work(
        self, queues: Sequence[str], timeout: float, *, names: Sequence[str] | None = None
    ) -> None:
        if timeout <= 0 or not queues:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        served = list(dict.fromkeys(queues))
        wanted = None if names is None else list(dict.fromkeys(names))
        params = {"queues": served, "names": wanted}
        await self._pool()
        listener = self._listener()
        listening = await listener.start(wait=min(timeout, 1.0))
        # Read before probing, so a notification that lands after the probe
        # changes it and is not missed.
        mark = listener.mark(served, wanted)
        while True:
            (queued, next_run, server_now), *_ = await self._read(self.q.probe, params)
            if queued or (next_run is not None and next_run <= server_now):
                return
            until = deadline
            if next_run is not None:  # then the claim's promotion makes it work
                until = min(deadline, loop.time() + next_run - server_now)
            while True:
                remaining = until - loop.time()
                if remaining <= 0:
                    return
                step = remaining if listening else min(remaining, _UNLISTENED_POLL)
                await listener.notifier.wait(step, ready=listener.changed(served, wanted, mark))
                listener.check()  # LISTEN proved useless: BackendMisconfiguredError
                current = listener.mark(served, wanted)
                if current[1] != mark[1]:
                    return  # new work of ours: the claim looks, no probe first
                if current[0] != mark[0] or not listening:
                    break  # a new LISTEN connection, or none: look for ourselves
                # else: a notification for other work; wait on.
            mark, listening = current, listener.listening

    # ------------------------------------------------------------ inspecting

    async def get(self, job_id: str) -> Job | None:
        rows = await self._read(
            f"SELECT {COLS} FROM {self.q.s}.jobs WHERE id = %(v)s", {"v": job_id}
        )
        return row_to_job(rows[0]) if rows else None

    async def get_by_key(self, key: str) -> Job | None:
        rows = await self._read(f"SELECT {COLS} FROM {self.q.s}.jobs WHERE key = %(v)s", {"v": key})
        return row_to_job(rows[0]) if rows else None

    async def list_jobs(
        self,
        *,
        state: JobState | None,
        name: str | None,
        queue: str | None,
        limit: int,
        offset: int,
    ) -> list[Job]:
        where = ["true"]
        params: dict[str, Any] = {"limit": max(limit, 0), "offset": max(offset, 0)}
        for column, value in (("state", state), ("name", name), ("queue", queue)):
            if value is not None:
                where.append(f"{column} = %({column})s")
                params[column] = JobState(value).value if column == "state" else value
        rows = await self._read(
            f"SELECT {COLS} FROM {self.q.s}.jobs WHERE {' AND '.join(where)}"
            " ORDER BY seq DESC LIMIT %(limit)s OFFSET %(offset)s",
            params,
            bounded=False,  # a deep offset walks every job before it
        )
        return [row_to_job(row) for row in rows]

    async def cancel(self, job_id: str, now: float | None = None) -> CancelResult:
        rows = await self._fetch(self.q.cancel, {"id": job_id, "now": now})
        if not rows:
            return CancelResult.NOT_FOUND
        state, _ = rows[0]
        if state == "running":
            return CancelResult.REQUESTED
        if state in ("scheduled", "queued"):
            return CancelResult.CANCELLED
        return CancelResult.FINAL

    async def retry(self, job_id: str, now: float | None = None) -> Job | None:
        rows = await self._fetch(self.q.retry, {"id": job_id, "now": now})
        if not rows:
            return None
        job = row_to_job(rows[0])
        await self._notify([(job.queue, job.name)])
        return job

    async def stats(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for queue, state, count in await self._read(
            f"SELECT queue, state, count(*) FROM {self.q.s}.jobs GROUP BY queue, state",
            bounded=False,  # counts every job
        ):
            counts = out.get(queue)
            if counts is None:
                counts = out[queue] = {s.value: 0 for s in JobState}
            counts[state] = count
        return out

    async def purge(
        self, states: Sequence[JobState], older_than: float | None, queue: str | None
    ) -> int:
        wanted = [JobState(s).value for s in states if JobState(s) is not JobState.RUNNING]
        if not wanted:
            return 0
        return await self._write(
            self.q.purge,
            {"states": wanted, "queue": queue, "older_than": older_than},
            bounded=False,  # may delete millions of rows
        )


_CLAIMABLE: Final = frozenset({"queued", "scheduled"})
