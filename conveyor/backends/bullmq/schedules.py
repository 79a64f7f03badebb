"""Recurring schedules on bullmq:// as BullMQ job schedulers.

A conveyor schedule is stored where Node's `queue.upsertJobScheduler` puts
one, in the BullMQ queue of the schedule's jobs: the `<prefix>:<queue>:repeat`
sorted set (member: the schedule's name as the scheduler id; score: its next
run in ms) and the `repeat:<name>` hash with BullMQ's fields (`name` = the
job name, `pattern` = the cron, or `every` in ms, `tz`, `data` = the payload,
`opts` = the job template's options, `ic` = iterations), so Node's
`getJobSchedulers()` lists it; conveyor's own fields ride beside them
(`cv...`: next run to the microsecond, enabled, catch-up, last run and error,
the stored job options). A hash index `{<prefix>:conveyor}:bull-schedules`
says which conveyor queue each conveyor schedule is in.

Who fires what:

* a schedule conveyor wrote (it has `cvnext`) is fired by conveyor's
  scheduler, exactly as on the other backends (catch-up policy, misfire
  grace, the job key `recurring:<name>:<tick>`), the compare-and-set and the
  adds in one script (schedule_scripts.FIRE_SCHEDULE). BullMQ keeps no
  iteration job ahead for it (conveyor makes the tick's job at the tick), so
  a Node worker runs its jobs but a Node process alone does not tick it;
* a scheduler Node made is fired BullMQ's way: its iteration job
  `repeat:<id>:<ms>` waits in `delayed`; the worker that takes it, Node's or
  conveyor's (`next_iteration`, called by the claim), adds the next one by
  BullMQ's updateJobScheduler script, which lets only the current
  iteration's job do so (once per tick). conveyor's scheduler leaves it
  alone; `list_recurring()` shows it. Writing it from conveyor (recurring(),
  enable, disable) takes it over (schedule_scripts.PUT_SCHEDULE);
  cancelling its pending iteration job skips that tick (`cancel`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

from conveyor.backends.base import CancelResult, NewJob
from conveyor.backends.bullmq.admin import BullAdmin
from conveyor.backends.bullmq.calls import now_ms, packed
from conveyor.backends.bullmq.layout import TIMEOUT_OPTION, QueueKeys, pairs
from conveyor.backends.bullmq.schedule_scripts import PUT_SCHEDULE, fire_script
from conveyor.backends.redis.resp import RedisReplyError
from conveyor.backends.redis.rows import num_arg
from conveyor.backends.redis.stores import RedisStores
from conveyor.backends.stores import ScheduleRecord
from conveyor.job import Job

logger = logging.getLogger("conveyor.backends.bullmq")

# The hash field that marks a scheduler as conveyor's (its exact next run).
OWNED: Final = "cvnext"


def _float(text: str | None) -> float | None:
    return None if text in (None, "") else float(text)


class BullSchedules(BullAdmin):
    """`ScheduleStore` over BullMQ's job schedulers, and the next iteration
    of a Node scheduler's job taken here."""

    _fire_source: str | None = None  # FIRE_SCHEDULE's source, built on first use

    def _add(self, job: NewJob, keys: QueueKeys) -> list[Any]:
        """The call of the BullMQ add script for `job` (backend.py's)."""
        raise NotImplementedError

    @property
    def _schedule_index(self) -> str:
        return f"{self.prefix}:bull-schedules"

    async def _eval(self, source: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        sha = hashlib.sha1(source.encode()).hexdigest()
        try:
            return await self._cmd("EVALSHA", sha, len(keys), *keys, *args)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self._cmd("SCRIPT", "LOAD", source)
        return await self._cmd("EVALSHA", sha, len(keys), *keys, *args)

    async def adopt_stored_schedules(self) -> None:
        """Move the schedules an earlier conveyor kept in its own keys
        (RedisStores', under `{<prefix>:conveyor}`) to job schedulers."""
        for name in await self._cmd("SMEMBERS", f"{self.prefix}:schedules"):
            old = await RedisStores.schedule_get(self, name)
            if old is not None and await self._cmd("HGET", self._schedule_index, name) is None:
                await self.schedule_put(old)
            await RedisStores.schedule_delete(self, name)

    # ------------------------------------------------------------------ reading

    async def _located(self, name: str) -> list[str]:
        """The conveyor queues whose BullMQ queue has a scheduler `name`:
        where conveyor put it, else any known queue where Node did."""
        queue = await self._cmd("HGET", self._schedule_index, name)
        if queue is not None:
            return [queue]
        queues = await self.known_queues()
        scores = await self.run([("ZSCORE", self.keys(q)["repeat"], name) for q in queues])
        return [q for q, score in zip(queues, scores, strict=True) if score is not None]

    async def _read(
        self, wanted: Sequence[tuple[str, str]], *, owned_only: bool = False
    ) -> list[ScheduleRecord]:
        """The records of (conveyor queue, scheduler id) pairs that exist
        (with `owned_only`, of conveyor's schedules only)."""
        commands: list[Sequence[Any]] = []
        for queue, name in wanted:
            keys = self.keys(queue)
            commands += [("HGETALL", keys["repeat"] + ":" + name), ("ZSCORE", keys["repeat"], name)]
        replies = await self.run(commands)
        out: list[ScheduleRecord] = []
        for index, (queue, name) in enumerate(wanted):
            flat, score = replies[2 * index : 2 * index + 2]
            if not flat:
                continue
            fields = pairs(flat)
            if OWNED in fields:
                out.append(_conveyor_record(name, fields))
            elif score is not None and not owned_only:
                out.append(_node_record(name, queue, fields, float(score)))
        return out

    async def schedule_get(self, name: str) -> ScheduleRecord | None:
        found = await self._read([(q, name) for q in await self._located(name)])
        return found[0] if found else None

    async def schedule_list(self) -> list[ScheduleRecord]:
        ours: dict[str, str] = pairs(await self._cmd("HGETALL", self._schedule_index))
        queues = sorted(set(await self.known_queues()) | set(ours.values()))
        members = await self.run([("ZRANGE", self.keys(q)["repeat"], 0, -1) for q in queues])
        wanted = [(queue, name) for name, queue in ours.items()]
        for queue, ids in zip(queues, members, strict=True):
            wanted += [(queue, i) for i in ids if i not in ours]
        by_name: dict[str, ScheduleRecord] = {}
        for rec in await self._read(wanted):
            by_name.setdefault(rec.name, rec)  # one id in two queues: the first
        return [by_name[name] for name in sorted(by_name)]

    async def schedule_due(self, now: float | None, limit: int) -> list[ScheduleRecord]:
        """conveyor's own schedules that are due (Node's fire by their jobs)."""
        if now is None:
            now = await self.clock()
        ours: dict[str, str] = pairs(await self._cmd("HGETALL", self._schedule_index))
        queues = sorted(set(ours.values()))
        due = await self.run(
            [
                (
                    "ZRANGEBYSCORE",
                    self.keys(q)["repeat"],
                    "-inf",
                    repr(now * 1000),
                    "LIMIT",
                    0,
                    limit,
                )
                for q in queues
            ]
        )
        wanted = [
            (queue, name)
            for queue, names in zip(queues, due, strict=True)
            for name in names
            if ours.get(name) == queue
        ]
        found = [
            r for r in await self._read(wanted, owned_only=True) if r.enabled and r.next_run <= now
        ]
        return sorted(found, key=lambda r: r.next_run)[:limit]

    # ------------------------------------------------------------------ writing

    async def schedule_put(
        self, record: ScheduleRecord, expected: ScheduleRecord | None = None
    ) -> bool:
        queue = _queue_of(record)
        await self.note_queues([queue])
        expect = ("", "") if expected is None else _turn(expected)
        moved_from = [old for old in await self._located(record.name) if old != queue]
        if moved_from and expected is not None:
            # Moving to another queue: compared there (apart from the write;
            # a change of queue is rare), then written here with no compare,
            # then removed there.
            for old in moved_from:
                hash_key = self.keys(old)["repeat"] + ":" + record.name
                at, on = await self._cmd("HMGET", hash_key, OWNED, "cvenabled")
                if at is not None and (float(at), on) != (expected.next_run, expect[1]):
                    return False
            expect = ("", "")
        keys = self.keys(queue)
        fields = _fields(record)
        written = await self._cmd(
            "EVAL",
            PUT_SCHEDULE,
            4,
            keys["repeat"],
            keys["repeat"] + ":" + record.name,
            keys["delayed"],
            keys["events"],
            record.name,
            keys.base,
            "1" if record.enabled else "0",
            _score(record.next_run),
            *expect,
            *[item for pair in fields.items() for item in pair],
        )
        if not int(written):
            return False
        await self._cmd("HSET", self._schedule_index, record.name, queue)
        for old in moved_from:
            await self._remove(old, record.name)
        return True

    async def _remove(self, queue: str, name: str) -> bool:
        """BullMQ's removeJobScheduler (its pending iteration job goes too),
        and the hash of a disabled schedule, which is in no sorted set."""
        keys = self.keys(queue)
        gone, deleted = await self.run(
            [
                self.call(
                    "removeJobScheduler", keys.many("repeat delayed events"), [name, keys.base]
                ),
                ("DEL", keys["repeat"] + ":" + name),
            ]
        )
        return int(gone) == 0 or bool(deleted)

    async def schedule_delete(self, name: str) -> bool:
        removed = False
        for queue in await self._located(name):
            removed = await self._remove(queue, name) or removed
        await self._cmd("HDEL", self._schedule_index, name)
        return removed

    async def schedule_fire(
        self,
        name: str,
        expected_next_run: float,
        next_run: float,
        last_run: float | None,
        last_error: str | None,
        jobs: Sequence[NewJob],
    ) -> list[Job] | None:
        """The compare-and-set and the tick's adds in one script."""
        queue = await self._cmd("HGET", self._schedule_index, name)
        if queue is None:
            return None
        keys = self.keys(queue)
        by_sha = {script.sha: script.name for script in self.scripts.values()}
        adds: list[Any] = []
        for job in jobs:
            # A tick's jobs go to the schedule's queue (its stored options).
            _, sha, count, *rest = self._add(job, self.keys(job.queue))
            adds += [by_sha[str(sha)], count, *rest]
        await self.note_queues({job.queue for job in jobs})
        if self._fire_source is None:
            self._fire_source = fire_script(self.scripts)
        reply = await self._eval(
            self._fire_source,
            [keys["repeat"], keys["repeat"] + ":" + name],
            [
                name,
                repr(expected_next_run),
                repr(next_run),
                _score(next_run),
                num_arg(last_run),
                last_error or "",
                len(jobs),
                *adds,
            ],
        )
        if not isinstance(reply, list):
            return None
        ids = [str(reply[1 + 2 * i]) for i in range(len(jobs))]
        records = await self.read_jobs([(job.queue, i) for job, i in zip(jobs, ids, strict=True)])
        out: list[Job] = []
        for index, record in enumerate(records):
            if record is not None:
                record.duplicate = bool(int(reply[2 + 2 * index]))
                out.append(record)
        return out

    # ------------------------------------------------------------------ Node's schedulers

    async def cancel(self, job_id: str, now: float | None = None) -> CancelResult:
        """Cancelling a Node scheduler's pending iteration skips that tick:
        the next iteration is added as if a worker had taken it (BullMQ
        refuses to remove that job, or the scheduler would stop for good)."""
        result = await super().cancel(job_id, now)
        found = await self.locate(job_id) if result is CancelResult.CANCELLED else None
        if found is not None and found[1].startswith("repeat:"):
            queue, bull = found
            keys = self.keys(queue)
            fields = pairs(await self._cmd("HGETALL", keys.job(bull)))
            if "rjk" in fields:
                await self.next_iteration(keys, bull, fields, now)
        return result

    async def next_iteration(
        self, keys: QueueKeys, job_id: str, fields: dict[str, str], now: float | None
    ) -> None:
        """What Node's worker does when it takes a job scheduler's iteration
        job: add the next iteration (BullMQ's updateJobScheduler, which does
        nothing unless `job_id` is the scheduler's current iteration). A
        failure is logged, not raised: the job taken still runs (Node's
        worker emits an error and the scheduler stops there, as here)."""
        try:
            await self._next_iteration(keys, job_id, fields, now_ms(now))
        except Exception:
            logger.exception(
                "job scheduler %s: adding the next iteration failed", fields.get("rjk")
            )

    async def _next_iteration(
        self, keys: QueueKeys, job_id: str, fields: dict[str, str], now: int
    ) -> None:
        scheduler = fields.get("rjk")
        opts = json.loads(fields.get("opts") or "{}")
        repeat = opts.get("repeat")
        if not scheduler or not isinstance(repeat, dict):
            return
        count = int(repeat.get("count") or 0) + 1
        limit, end = repeat.get("limit"), repeat.get("endDate")
        if (limit is not None and count > int(limit)) or (end and now > int(float(end))):
            return  # BullMQ's end of a scheduler: no next iteration
        next_ms = 0  # an `every` scheduler's next is the script's to compute
        if repeat.get("pattern"):
            found = _cron_next(
                str(repeat["pattern"]),
                repeat.get("tz"),
                repeat.get("startDate"),
                max(now, int(opts.get("prevMillis") or 0)),
            )
            if found is None:
                logger.error(
                    "job scheduler %s: cannot compute the next run of pattern %r here; "
                    "no next iteration was added",
                    scheduler,
                    repeat["pattern"],
                )
                return
            next_ms = found
        delayed = {
            **opts,
            "jobId": f"repeat:{scheduler}:{next_ms}",
            "delay": max(next_ms - now, 0),
            "timestamp": now,
            "prevMillis": next_ms,
            "repeatJobKey": scheduler,
            "repeat": {**repeat, "count": count},
        }
        await self.run(
            [
                self.call(
                    "updateJobScheduler",
                    [
                        *keys.many(
                            "repeat delayed wait paused meta prioritized marker id events pc"
                        ),
                        keys.job(job_id),
                        keys["active"],
                    ],
                    [
                        next_ms,
                        scheduler,
                        fields.get("data") or "{}",
                        packed(delayed),
                        now,
                        keys.base,
                        job_id,
                    ],
                )
            ]
        )


def _score(next_run: float) -> int:
    """A next run as the `repeat` set's score: whole ms, as BullMQ's are
    (rounded down, so the set never says due later than `cvnext` does)."""
    return math.floor(next_run * 1000)


def _queue_of(record: ScheduleRecord) -> str:
    queue = json.loads(record.options or "{}").get("queue")
    return queue if isinstance(queue, str) and queue else "default"


def _turn(record: ScheduleRecord) -> tuple[str, str]:
    """A record's next run and enabled as its hash stores them (what
    schedule_put compares)."""
    return repr(record.next_run), "1" if record.enabled else "0"


def _fields(record: ScheduleRecord) -> dict[str, str]:
    """The scheduler hash of a conveyor schedule: BullMQ's fields, then conveyor's."""
    options = json.loads(record.options or "{}")
    template: dict[str, Any] = {}
    if isinstance(options.get("retries"), int):
        template["attempts"] = options["retries"] + 1
    if options.get("priority"):
        template["priority"] = options["priority"]
    if isinstance(options.get("timeout"), int | float):
        template[TIMEOUT_OPTION] = options["timeout"]
    fields = {"name": record.job_name, "data": record.payload, "opts": json.dumps(template)}
    if record.cron is not None:
        fields |= {"pattern": record.cron, "tz": record.tz}
    else:
        assert record.every is not None
        fields["every"] = str(max(round(record.every * 1000), 1))
    return fields | {
        OWNED: repr(record.next_run),
        "cvenabled": "1" if record.enabled else "0",
        "cvevery": num_arg(record.every),
        "cvtz": record.tz,
        "cvkey": record.key or "",
        "cvcreated": repr(record.created_at),
        "cvupdated": repr(record.updated_at),
        "cvlast_run": num_arg(record.last_run),
        "cvlast_error": record.last_error or "",
        "cvcatch_up": record.catch_up,
        "cvmax_catch_up": str(record.max_catch_up),
        "cvmisfire_grace": repr(record.misfire_grace),
        "cvoptions": record.options,
    }


def _conveyor_record(name: str, f: dict[str, str]) -> ScheduleRecord:
    return ScheduleRecord(
        name=name,
        job_name=f.get("name", ""),
        payload=f.get("data") or "null",
        cron=f.get("pattern") or None,
        every=_float(f.get("cvevery")),
        tz=f.get("cvtz") or "UTC",
        key=f.get("cvkey") or None,
        enabled=f.get("cvenabled") == "1",
        next_run=float(f[OWNED]),
        created_at=float(f.get("cvcreated") or 0),
        updated_at=float(f.get("cvupdated") or 0),
        last_run=_float(f.get("cvlast_run")),
        last_error=f.get("cvlast_error") or None,
        catch_up=f.get("cvcatch_up") or "once",
        max_catch_up=int(f.get("cvmax_catch_up") or 100),
        misfire_grace=float(f.get("cvmisfire_grace") or 60),
        options=f.get("cvoptions") or "{}",
    )


def _node_record(name: str, queue: str, f: dict[str, str], score: float) -> ScheduleRecord:
    """A scheduler Node made, as conveyor lists it: always enabled (BullMQ
    has no disabled scheduler), catch-up BullMQ's (one late run, then the
    next tick after now: conveyor's "once"), no last run or error kept."""
    template = json.loads(f.get("opts") or "{}")
    timeout = template.get(TIMEOUT_OPTION)
    options = {
        "queue": queue,
        "priority": int(template.get("priority") or 0),
        "retries": max(int(template.get("attempts") or 1) - 1, 0),
        "timeout": timeout if isinstance(timeout, int | float) else None,
    }
    every = f.get("every")
    return ScheduleRecord(
        name=name,
        job_name=f.get("name", ""),
        payload=f.get("data") or "{}",
        cron=f.get("pattern") or None,
        every=int(every) / 1000 if every else None,
        tz=f.get("tz") or "UTC",
        key=None,
        enabled=True,
        next_run=score / 1000,
        created_at=0.0,  # BullMQ does not keep it
        updated_at=0.0,
        options=json.dumps(options),
    )


def _cron_next(pattern: str, tz: Any, start: Any, after_ms: int) -> int | None:
    """The first tick of a Node scheduler's pattern after `after_ms` (and not
    before its startDate), as cron-parser computes it for standard 5-field
    patterns; a 6-field one only when its seconds field is 0.

    conveyor's own rule (cronsim's) runs a wall time skipped by
    spring-forward at the end of the gap; cron-parser runs it the gap's
    length later (02:30 in a one-hour gap at 03:30), which is the skipped
    wall time read with the offset from before the change."""
    fields = pattern.split()
    if len(fields) == 6 and fields[0] in ("0", "00"):
        fields = fields[1:]
    expr = " ".join(fields)
    try:
        zone = ZoneInfo(str(tz)) if tz else ZoneInfo("UTC")
        after = datetime.fromtimestamp(max(after_ms, int(float(start or 0))) / 1000, zone)
        found = next(iter(CronSim(expr, after)))
        wall = next(iter(CronSim(expr, after.replace(tzinfo=None))))
    except (CronSimError, ValueError, KeyError, StopIteration):
        return None
    skipped = wall.replace(tzinfo=zone)
    if skipped.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != wall:
        found = skipped  # zoneinfo reads a skipped wall time with the old offset
    return round(found.timestamp() * 1000)
