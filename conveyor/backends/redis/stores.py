"""Recurring schedules, locks, the cache, worker presence and paused queues
(a set, `P:paused`) on Redis, a class the backend inherits. Lock and cache
expiry are Redis TTLs, so they run on the server's clock."""

from __future__ import annotations

import json
from collections.abc import Sequence

from conveyor.backends.base import NewJob
from conveyor.backends.records import present_workers, stored_worker
from conveyor.backends.redis.connection import RedisConnection
from conveyor.backends.redis.layout import server_time
from conveyor.backends.redis.rows import jobs_json, num_arg, schedule_record
from conveyor.backends.stores import STALE_WORKER_KEPT, ScheduleRecord, WorkerInfo
from conveyor.job import Job


class RedisStores(RedisConnection):
    """Schedules, locks, cache, worker presence and pauses of `RedisBackend`."""

    # ------------------------------------------------------------------ schedules

    async def schedule_put(
        self, record: ScheduleRecord, expected: ScheduleRecord | None = None
    ) -> bool:
        mapping = {
            "name": record.name,
            "job_name": record.job_name,
            "payload": record.payload,
            "cron": record.cron or "",
            "every": num_arg(record.every),
            "tz": record.tz,
            "key": record.key or "",
            "enabled": "1" if record.enabled else "0",
            "next_run": repr(record.next_run),
            "created_at": repr(record.created_at),
            "updated_at": repr(record.updated_at),
            "last_run": num_arg(record.last_run),
            "last_error": record.last_error or "",
            "catch_up": record.catch_up,
            "max_catch_up": str(record.max_catch_up),
            "misfire_grace": repr(record.misfire_grace),
            "options": record.options,
        }
        written = await self._run(
            "schedule_put",
            record.name,
            "0" if expected is None else "1",
            "" if expected is None else repr(expected.next_run),
            "1" if expected is not None and expected.enabled else "0",
            mapping["enabled"],
            mapping["next_run"],
            *[item for pair in mapping.items() for item in pair],
        )
        return bool(int(written))

    async def _schedules(self, names: Sequence[str]) -> list[ScheduleRecord]:
        if not names:
            return []
        rows = await self._pipe([("HGETALL", self._schedule_key(name)) for name in names])
        return [schedule_record(dict(zip(raw[::2], raw[1::2], strict=True))) for raw in rows if raw]

    async def schedule_get(self, name: str) -> ScheduleRecord | None:
        found = await self._schedules([name])
        return found[0] if found else None

    async def schedule_list(self) -> list[ScheduleRecord]:
        names = sorted(await self._cmd("SMEMBERS", f"{self.prefix}:schedules"))
        return await self._schedules(names)

    async def schedule_delete(self, name: str) -> bool:
        replies = await self._pipe(
            [
                ("MULTI",),
                ("DEL", self._schedule_key(name)),
                ("SREM", f"{self.prefix}:schedules", name),
                ("ZREM", f"{self.prefix}:schedules:due", name),
                ("EXEC",),
            ]
        )
        return bool(replies[-1][0])

    async def schedule_due(self, now: float | None, limit: int) -> list[ScheduleRecord]:
        if now is None:
            now = await self.clock()
        names = await self._cmd(
            "ZRANGEBYSCORE", f"{self.prefix}:schedules:due", "-inf", repr(now), "LIMIT", 0, limit
        )
        return [r for r in await self._schedules(names) if r.enabled and r.next_run <= now]

    async def schedule_fire(
        self,
        name: str,
        expected_next_run: float,
        next_run: float,
        last_run: float | None,
        last_error: str | None,
        jobs: Sequence[NewJob],
    ) -> list[Job] | None:
        reply = await self._run(
            "schedule_fire",
            "",  # the tick's jobs are stored by the server's clock
            name,
            repr(expected_next_run),
            repr(next_run),
            num_arg(last_run),
            last_error or "",
            jobs_json(jobs),
        )
        if reply is None:
            return None
        return await self._inserted(jobs, reply)

    # ------------------------------------------------------------------ locks

    async def lock_acquire(
        self, key: str, token: str, ttl: float, now: float | None = None
    ) -> bool:
        # The TTL runs on the Redis clock, so expiry is the same for every client.
        ms = max(1, int(ttl * 1000))
        reply = await self._cmd("SET", f"{self.prefix}:lock:{key}", token, "NX", "PX", ms)
        return reply is not None

    async def lock_release(self, key: str, token: str) -> bool:
        return bool(int(await self._run("lock_release", key, token)))

    async def lock_extend(self, key: str, token: str, ttl: float, now: float | None = None) -> bool:
        ms = max(1, int(ttl * 1000))
        return bool(int(await self._run("lock_extend", key, token, ms)))

    # ------------------------------------------------------------------ cache

    async def cache_get(self, key: str, now: float | None = None) -> str | None:
        value: str | None = await self._cmd("GET", f"{self.prefix}:cache:{key}")
        return value

    async def cache_set(
        self, key: str, value: str, ttl: float | None, now: float | None = None
    ) -> None:
        if ttl is None:
            await self._cmd("SET", f"{self.prefix}:cache:{key}", value)
        else:
            await self._cmd(
                "SET", f"{self.prefix}:cache:{key}", value, "PX", max(1, int(ttl * 1000))
            )

    async def cache_delete(self, key: str) -> bool:
        return bool(await self._cmd("DEL", f"{self.prefix}:cache:{key}"))

    # ------------------------------------------------------------------ workers

    async def worker_beat(self, info: WorkerInfo, ttl: float, now: float | None = None) -> None:
        record = json.dumps(
            {
                "host": info.host,
                "pid": info.pid,
                "queues": info.queues,
                "names": info.names,
                "started_at": info.started_at,
                "last_seen": info.last_seen,
                "details": info.details(),
            }
        )
        await self._run(
            "worker_beat", info.id, record, repr(ttl), num_arg(now), repr(STALE_WORKER_KEPT)
        )

    async def worker_gone(self, worker_id: str) -> None:
        p = self.prefix
        await self._pipe(
            [
                ("MULTI",),
                ("HDEL", f"{p}:workers", worker_id),
                ("ZREM", f"{p}:workers:expires", worker_id),
                ("EXEC",),
            ]
        )

    async def workers(
        self, now: float | None = None, *, include_stale: bool = False
    ) -> list[WorkerInfo]:
        p = self.prefix
        (seconds, micros), expiries, records = await self._pipe(
            [
                ("TIME",),
                ("ZRANGE", f"{p}:workers:expires", 0, -1, "WITHSCORES"),
                ("HGETALL", f"{p}:workers"),
            ]
        )
        if now is None:
            now = server_time(seconds, micros)
        found = dict(zip(records[::2], records[1::2], strict=True))
        listed = []
        for worker_id, expires in zip(expiries[::2], expiries[1::2], strict=True):
            if worker_id in found:
                raw = json.loads(found[worker_id])
                info = stored_worker(
                    id=worker_id,
                    host=raw["host"],
                    pid=raw["pid"],
                    queues=raw["queues"],
                    names=raw["names"],
                    started_at=raw["started_at"],
                    last_seen=raw["last_seen"],
                    details=raw.get("details"),
                )
                listed.append((info, float(expires)))
        return present_workers(listed, now, include_stale)

    async def queued_by_name(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for queue, name, count in await self._run("queued_by_name"):
            out.setdefault(queue, {})[name] = int(count)
        return out

    # ------------------------------------------------------------------ pauses

    async def pause_queue(self, queue: str) -> bool:
        return bool(await self._cmd("SADD", f"{self.prefix}:paused", queue))

    async def resume_queue(self, queue: str) -> bool:
        return bool(await self._cmd("SREM", f"{self.prefix}:paused", queue))

    async def paused_queues(self) -> set[str]:
        members = await self._cmd("SMEMBERS", f"{self.prefix}:paused")
        return {str(queue) for queue in members}
