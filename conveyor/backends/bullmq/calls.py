"""How the BullMQ backend talks to Redis: conveyor's RESP client (the Redis
backend's connections, one pair per event loop), BullMQ's scripts by
EVALSHA, the queues conveyor has seen, and reading jobs back."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import msgpack

from conveyor.backends.bullmq.batch_scripts import BATCH_SCRIPTS
from conveyor.backends.bullmq.layout import (
    HISTORY,
    STATES,
    OwnKeeps,
    QueueKeys,
    bull_id,
    job_from_hash,
    pairs,
)
from conveyor.backends.bullmq.own_scripts import FAIL_PENDING
from conveyor.backends.bullmq.scripts import Script, load_scripts, version_problem
from conveyor.backends.bullmq.url import DEFAULT_QUEUE, parse_url
from conveyor.backends.records import entry_text, stored_entry, with_entry
from conveyor.backends.redis.resp import Arg, RedisReplyError
from conveyor.backends.redis.stores import RedisStores
from conveyor.job import AttemptOutcome, BackendUnavailableError, InvalidOptionError, Job, JobState


def packed(value: Any) -> bytes:
    """msgpack, as BullMQ's scripts unpack their options (cmsgpack)."""
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def flat(fields: dict[str, str]) -> list[str]:
    """Hash fields as the scripts' "fields to update" take them: k1, v1, k2, ..."""
    return [item for pair in fields.items() for item in pair]


def millis(seconds: float) -> int:
    """Whole milliseconds, rounded down: the clock that decides what is due
    (a job stamped with `stamp_ms` is never due early by it)."""
    return math.floor(seconds * 1000)


def stamp_ms(seconds: float) -> int:
    """Whole milliseconds, rounded up: a job's creation time and delay, so
    the due time stored is never earlier than the one asked for."""
    return math.ceil(seconds * 1000)


def now_ms(now: float | None) -> int:
    """BullMQ's scripts take the caller's clock (Node passes Date.now()), so
    conveyor does the same: an explicit `now`, else this host's time."""
    return millis(time.time() if now is None else now)


#: what an attempt's history entry is built from, as a job hash holds it:
#: `ats` (attempts started), `processedOn` and conveyor's history (JSON)
AttemptFields = tuple[str | None, str | None, str | None]


def history_with(
    fields: AttemptFields, outcome: AttemptOutcome, finished_at: float, error: str | None
) -> str:
    """The history (JSON) of a job whose hash holds `fields`, with the
    attempt that ends now appended."""
    attempts, started, history = fields
    attempt, started_at = int(attempts or 0), int(started) / 1000 if started else None
    if history and history != "[]":  # earlier attempts: decoded, this one added
        entry = stored_entry(attempt, started_at, finished_at, outcome, error)
        return json.dumps(with_entry(json.loads(history), entry))
    if outcome is AttemptOutcome.COMPLETED and error is None:
        # The usual case, from the texts as they are (entry_text's output).
        fast = _completed_entry(attempts, started, finished_at)
        if fast is not None:
            return fast
    return "[" + entry_text(attempt, started_at, finished_at, outcome, error) + "]"


def _completed_entry(attempts: str | None, started: str | None, finished_at: float) -> str | None:
    """A first attempt's history, completed, as `entry_text` writes it, made
    from the hash's texts where they are plain integers' (an attempt count,
    a start in epoch milliseconds: what BullMQ's scripts and conveyor's
    write); None otherwise. A float's repr is the shortest text that reads
    back as it, which for milliseconds over 1000 (up to 15 digits) is
    seconds.millis with the zeros at the end dropped."""
    if (
        not attempts
        or not started
        or type(finished_at) is not float
        or not math.isfinite(finished_at)
        or not (attempts.isascii() and attempts.isdigit())
        or not (started.isascii() and started.isdigit())
        or not 4 <= len(started) <= 15
        or started[0] == "0"
        or (attempts[0] == "0" and attempts != "0")
    ):
        return None
    millis = started[-3:].rstrip("0") or "0"
    return (
        f'[{{"attempt": {attempts}, "started_at": {started[:-3]}.{millis}, '
        f'"finished_at": {finished_at!r}, "outcome": "completed", "error": null}}]'
    )


class BullConnection(RedisStores):
    """The Redis side of `BullMQBackend` (its base class). What BullMQ's
    layout has no place for (locks, the cache, worker presence) is the
    Redis backend's, under keys of conveyor's own beside the queues:
    `{<prefix>:conveyor}:...` (see `RedisStores`); recurring schedules are
    BullMQ job schedulers (schedules.py)."""

    def __init__(self, url: str) -> None:
        self.config = parse_url(url)
        try:
            super().__init__(self.config.redis_url)
        except InvalidOptionError as exc:
            # Quote the URL the user wrote, not the redis:// one made from it.
            raise InvalidOptionError(str(exc).replace(self.config.redis_url, url)) from None
        self.url = url
        self.prefix = "{" + self.config.prefix + ":conveyor}"
        self.scripts: dict[str, Script] = {**load_scripts(), **BATCH_SCRIPTS}
        # The conveyor queues whose BullMQ queue this process has used; with
        # the registry set in Redis, what get/list/stats look through.
        self._seen: set[str] = {DEFAULT_QUEUE}
        # Which conveyor queue a job claimed here is in: heartbeats and
        # outcomes carry only the job's id.
        self._claimed: dict[str, str] = {}
        # Jobs a claim here failed as stalled too often (BullMQ's deferred
        # failure), (conveyor queue, id): the next lease recovery reports
        # them, so the worker says job.failed for them as for its own.
        self._failed_at_claim: list[tuple[str, str]] = []
        # The history fields a claim here read back from each job it took
        # (the claim script answers with the hash). Nothing else writes them while
        # the claim's lock holds, and the outcome's write is fenced by that
        # lock, so the outcome builds its history entry from them instead of
        # reading the hash again.
        self._claim_fields: dict[str, AttemptFields] = {}
        # Of the jobs claimed here whose opts carry their own removeOnComplete
        # or removeOnFail (layout.own_keeps): the keepJobs of each.
        self._own_keeps: dict[str, OwnKeeps] = {}
        self._keys: dict[str, QueueKeys] = {}

    def __repr__(self) -> str:
        return f"<BullMQBackend {self._settings.display()} queue={self.config.queue}>"

    # ------------------------------------------------------------------ keys

    def keys(self, queue: str) -> QueueKeys:
        found = self._keys.get(queue)
        if found is None:  # every claim and outcome asks: made once per queue
            found = self._keys[queue] = QueueKeys(self.config.prefix, self.config.bull_queue(queue))
        return found

    @property
    def registry(self) -> str:
        """A set of the conveyor queues used through this prefix (not a key
        BullMQ reads: it sits beside its queues, as `<prefix>:conveyor:queues`)."""
        return f"{self.config.prefix}:conveyor:queues"

    async def known_queues(self) -> list[str]:
        stored = await self._cmd("SMEMBERS", self.registry)
        return sorted(self._seen | set(stored))

    async def note_queues(self, queues: Iterable[str]) -> None:
        new = set(queues) - self._seen
        if new:
            await self._cmd("SADD", self.registry, *sorted(new))
            self._seen |= new

    # ------------------------------------------------------------------ scripts

    def call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> list[Arg]:
        script = self.scripts[name]
        assert len(keys) == script.keys, (name, len(keys))
        return ["EVALSHA", script.sha, len(keys), *keys, *args]

    async def run(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Pipeline commands (script calls from `call` among them); where the
        server lacks the scripts (a restart), load them all and send again.
        A restart drops every script at once, so no call of the batch ran."""
        try:
            return await self._pipe(commands)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self._pipe([("SCRIPT", "LOAD", s.source) for s in self.scripts.values()])
        return await self._pipe(commands)

    async def check_meta(self) -> None:
        """Refuse a queue another BullMQ major made; stamp a new one as Node does."""
        meta = self.keys(DEFAULT_QUEUE)["meta"]
        version = await self._cmd("HGET", meta, "version")
        problem = version_problem(version)
        if problem:
            raise BackendUnavailableError(f"{self.url}: {problem}")
        if version is None:
            from conveyor.backends.bullmq.scripts import LIBRARY, NODE_VERSION

            await self._cmd("HSETNX", meta, "version", f"{LIBRARY}:{NODE_VERSION}")

    async def fail_pending(
        self, keys: QueueKeys, job_id: str, at: int, reason: str, mark: str = ""
    ) -> bool:
        """own_scripts.FAIL_PENDING: False when the job was not pending."""
        failed = await self._cmd(
            "EVAL",
            FAIL_PENDING,
            7,
            *keys.many("wait paused prioritized delayed failed events"),
            keys.job(job_id),
            job_id,
            at,
            reason,
            mark,
        )
        return bool(int(failed))

    async def history_after(
        self,
        keys: QueueKeys,
        job_id: str,
        outcome: AttemptOutcome,
        finished_at: float,
        error: str | None,
        attempts: str | None = None,
        started: str | None = None,
    ) -> str:
        """The job's conveyor history (JSON) with the attempt that ends now
        appended (its number and start as read before it ended, where that
        cleared them)."""
        now_attempts, now_started, history = await self._cmd(
            "HMGET", keys.job(job_id), "ats", "processedOn", HISTORY
        )
        fields = (attempts or now_attempts, started or now_started, history)
        return history_with(fields, outcome, finished_at, error)

    async def record_attempt(
        self,
        keys: QueueKeys,
        job_id: str,
        outcome: AttemptOutcome,
        finished_at: float,
        error: str | None,
        attempts: str | None = None,
        started: str | None = None,
    ) -> None:
        """Append the attempt that ended to the job's conveyor history."""
        history = await self.history_after(
            keys, job_id, outcome, finished_at, error, attempts, started
        )
        await self._cmd("HSET", keys.job(job_id), HISTORY, history)

    # ------------------------------------------------------------------ reading jobs

    def _read_commands(self, keys: QueueKeys, job_id: str) -> list[list[Arg]]:
        state_keys = keys.many(
            "completed failed delayed active wait paused waiting-children prioritized"
        )
        return [
            ["HGETALL", keys.job(job_id)],
            self.call("getState", state_keys, [job_id]),
            ["LRANGE", keys.job(job_id) + ":logs", 0, -1],
            ["ZSCORE", keys["delayed"], job_id],
        ]

    async def read_jobs(self, wanted: Sequence[tuple[str, str]]) -> list[Job | None]:
        """The records of (conveyor queue, job id) pairs, None where absent."""
        if not wanted:
            return []  # no round trip for nothing (recovery asks this at every pass)
        commands: list[list[Arg]] = []
        for queue, job_id in wanted:
            commands += self._read_commands(self.keys(queue), job_id)
        replies = await self.run(commands)
        out: list[Job | None] = []
        for index, (queue, job_id) in enumerate(wanted):
            flat, state, logs, score = replies[4 * index : 4 * index + 4]
            if not flat:
                out.append(None)
                continue
            due = int(float(score)) // 0x1000 if score is not None else None
            out.append(
                job_from_hash(
                    job_id,
                    queue,
                    pairs(flat),
                    STATES.get(state, JobState.QUEUED),
                    logs,
                    due_ms=due,
                )
            )
        return out

    async def find(self, job_id: str) -> Job | None:
        """A job by conveyor's id (layout.conveyor_id): in the queue it was
        claimed from here, or the queue its id names, else the first known
        queue that has it: the URL's own queue first, then the others, so
        that an id given bare, as BullMQ shows it, is found too."""
        claimed = self._claimed.get(job_id)
        queues = [claimed] if claimed else []
        known = await self.known_queues()
        named, colon, _ = job_id.partition(":")
        if colon and named in known:
            queues.append(named)
        queues += sorted(known, key=lambda q: q != DEFAULT_QUEUE)
        for queue in dict.fromkeys(queues):
            (job,) = await self.read_jobs([(queue, bull_id(queue, job_id))])
            if job is not None:
                return job
        return None

    async def locate(self, job_id: str) -> tuple[str, str] | None:
        """(conveyor queue, BullMQ id) of conveyor's `job_id`, None if absent."""
        queue = self._claimed.get(job_id)
        if queue is None:
            job = await self.find(job_id)
            if job is None:
                return None
            queue = job.queue
        return queue, bull_id(queue, job_id)

    # ------------------------------------------------------------------ waiting

    async def wait_markers(self, queues: Sequence[str], timeout: float) -> None:
        """Block on the queues' marker sets as BullMQ's workers do: an add or
        a due delayed job puts a marker there (its score: when, 0 = now)."""
        markers = [self.keys(q)["marker"] for q in queues]
        wait = max(timeout, 0.01)
        try:
            reply = await self._pair()[1].call("BZPOPMIN", *markers, wait, wait=wait)
        except RedisReplyError:
            return
        if reply:
            key, member, score = reply
            ahead = float(score) / 1000 - time.time()
            if ahead > timeout:
                # Not due before this wait ends: leave the wake-up for who
                # waits then (an idle Node worker blocks on this set until its
                # drain delay otherwise). LT: never push back a sooner marker
                # another add left meanwhile.
                await self._cmd("ZADD", key, "LT", score, member)
            if ahead > 0:
                await asyncio.sleep(min(ahead, timeout))

    @staticmethod
    def log_line(entry: dict[str, Any]) -> str:
        return json.dumps(entry, separators=(",", ":"), default=str)
