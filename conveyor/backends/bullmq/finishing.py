"""The finishing side of the BullMQ backend: an outcome is BullMQ's script
for it (moveToFinished to completed or failed, retryJob, moveToDelayed),
fenced by the claim's lock token; completions of jobs claimed here go in one
batch_scripts.FINISH call per queue, which does to each what moveToFinished
does. Outcomes ride in the next claim's round trip (finish_and_claim)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from conveyor.backends.base import Outcome, OutcomeKind, Retention, attempt_outcome
from conveyor.backends.bullmq.batch_scripts import LINKED
from conveyor.backends.bullmq.calls import flat, history_with, millis, now_ms, packed, stamp_ms
from conveyor.backends.bullmq.consume import BullConsumer, attempts_option
from conveyor.backends.bullmq.layout import (
    CANCEL_REQUESTED,
    CANCELLED,
    HISTORY,
    NO_KEEPS,
    OwnKeeps,
    QueueKeys,
    bull_id,
    own_keeps,
)
from conveyor.backends.redis.resp import Arg
from conveyor.job import Job


def bull_backoff(opts_json: str | None, attempts_made: int) -> float | None:
    """The wait (seconds) before the next attempt that a job's own BullMQ
    `backoff` option asks for (a Node producer's `{type, delay}` or a number),
    as BullMQ computes it; None when it has none (conveyor's backoff rules)."""
    opts = json.loads(opts_json or "{}")
    backoff = opts.get("backoff")
    if isinstance(backoff, int | float):
        backoff = {"type": "fixed", "delay": backoff}
    if not isinstance(backoff, dict) or not isinstance(backoff.get("delay"), int | float):
        return None
    delay = float(backoff["delay"])
    if backoff.get("type") == "exponential":
        return float(round(2 ** (attempts_made - 1) * delay)) / 1000
    if backoff.get("type") == "fixed":
        return delay / 1000
    return None  # a custom backoff strategy lives in the Node worker's code


@dataclass
class OutcomePlan:
    """A pipeline that ends a batch of outcomes, and where each one's answer
    will be: per outcome, the index of its command's reply, (index, position)
    in a FINISH call's reply, or its answer when already known (no such job,
    a hand-back); `linked`: how to make BullMQ's command for a completion
    FINISH leaves to it."""

    commands: list[list[Arg]] = field(default_factory=list)
    slots: list[bool | int | tuple[int, int]] = field(default_factory=list)
    # What _outcome_command needs, made only for those FINISH leaves (rare).
    linked: dict[int, tuple[QueueKeys, Outcome, Retention, str, int]] = field(default_factory=dict)


class BullFinishing(BullConsumer):
    # ------------------------------------------------------------------ finishing

    def _outcome_command(
        self,
        keys: QueueKeys,
        o: Outcome,
        retention: Retention,
        history: str,
        attempts: int,
        keeps: OwnKeeps = (None, None),
    ) -> Any:
        """BullMQ's script for the outcome; the job's fields it updates (once
        the lock token is checked) carry the history with this attempt;
        `attempts` is the job's BullMQ attempts (for a failure's events);
        `keeps` its own keepJobs, which win over `retention` (layout.own_keeps)."""
        at = millis(o.at)
        if o.kind is OutcomeKind.COMPLETED:
            result = o.result or "null"
            keep = retention.keep_completed if keeps[0] is None else keeps[0]
            return self.finished(
                keys,
                o.job_id,
                o.token,
                "completed",
                result,
                keep,
                at,
                {"progress": "100", HISTORY: history},
            )
        failure = {"stacktrace": json.dumps([o.traceback] if o.traceback else []), HISTORY: history}
        if o.kind in (OutcomeKind.FAILED, OutcomeKind.CANCELLED):
            fields = {**failure, CANCELLED: "1"} if o.kind is OutcomeKind.CANCELLED else failure
            reason = o.error or o.kind.value
            return self.finished(
                keys,
                o.job_id,
                o.token,
                "failed",
                reason,
                retention.keep_failed if keeps[1] is None else keeps[1],
                at,
                fields,
                attempts=attempts,
            )
        # SCHEDULED: a retry, counted as an attempt made; after its backoff
        # (moveToDelayed), or queued at once when it is already due (retryJob).
        now = time.time()
        delay = o.retry_in if o.retry_in is not None else (o.run_at or now) - now
        updates = flat({"failedReason": o.error or "", **failure})
        if delay <= 0:
            return self.call(
                "retryJob",
                [
                    *keys.many("active wait paused"),
                    keys.job(o.job_id),
                    *keys.many("meta events delayed prioritized pc marker"),
                    keys["stalled"],
                ],
                [keys.base, now_ms(None), "RPUSH", o.job_id, o.token, packed(updates)],
            )
        return self.call(
            "moveToDelayed",
            [
                *keys.many("marker active prioritized delayed"),
                keys.job(o.job_id),
                *keys.many("events meta stalled wait limiter pc"),
            ],
            [
                keys.base,
                stamp_ms(now),
                o.job_id,
                o.token,
                stamp_ms(delay),
                "0",
                packed(updates),
                "0",
            ],
        )

    async def finish(self, outcomes: Sequence[Outcome], retention: Retention) -> list[bool]:
        plan = await self._outcome_commands(outcomes, retention)
        return await self._settle(outcomes, plan, await self.run(plan.commands))

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
        """The outcomes' scripts go in the claim's first round trip."""
        plan = await self._outcome_commands(outcomes, retention)
        replies, jobs = await self.claim_after(
            plan.commands, queues, limit, lease, now, claim_id=claim_id, names=names
        )
        return await self._settle(outcomes, plan, replies), jobs

    async def _outcome_commands(
        self, outcomes: Sequence[Outcome], retention: Retention
    ) -> OutcomePlan:
        """One pipeline that ends `outcomes`: each one's log lines, then its
        script: completions of jobs claimed here in one batch_scripts.FINISH
        call per queue, the rest by BullMQ's script for each."""
        plan = OutcomePlan()
        completions: dict[str, list[tuple[int, list[Arg]]]] = {}  # queue: (outcome, FINISH args)
        claimed = self._claimed
        for o in outcomes:
            job_id = o.job_id  # conveyor's (layout.conveyor_id)
            queue = claimed.get(job_id)
            found = (queue, bull_id(queue, job_id)) if queue else await self.locate(job_id)
            if found is None:
                plan.slots.append(False)
                continue
            queue, bull = found
            if bull != job_id:  # outside the URL's queue: BullMQ's id from here on
                o = replace(o, job_id=bull)
            keys = self.keys(queue)
            if o.kind is OutcomeKind.QUEUED:
                await self.add_logs(keys, o.job_id, o.logs)
                plan.slots.append(await self.hand_back(queue, o.job_id, o.token, o.at))
                continue
            attempts = 0
            keeps = self._own_keeps.pop(job_id, NO_KEEPS)  # read by the claim here
            if o.kind is not OutcomeKind.COMPLETED:
                cancel, opts, made = await self._cmd(
                    "HMGET", keys.job(o.job_id), CANCEL_REQUESTED, "opts", "atm"
                )
                attempts, keeps = attempts_option(opts), own_keeps(opts)
                wait = bull_backoff(opts, int(made or 0) + 1)
                if o.kind is OutcomeKind.SCHEDULED and cancel:
                    o = replace(o, kind=OutcomeKind.CANCELLED, error=o.error or "cancelled")
                elif o.kind is OutcomeKind.SCHEDULED and wait is not None:
                    o = replace(o, retry_in=wait)
            if o.progress is not None:
                await self.progress(job_id, o.token, o.progress, [])
            outcome = attempt_outcome(o.kind, timed_out=o.timed_out)
            fields = self._claim_fields.pop(job_id, None)
            if fields is None:  # claimed by another process, or another backend here
                history = await self.history_after(keys, o.job_id, outcome, o.at, o.error)
                if o.kind is OutcomeKind.COMPLETED:
                    keeps = own_keeps(await self._cmd("HGET", keys.job(o.job_id), "opts"))
            else:
                history = history_with(fields, outcome, o.at, o.error)
            if o.logs:
                plan.commands += self.log_commands(keys, o.job_id, o.logs)
            index = len(plan.slots)
            if o.kind is OutcomeKind.COMPLETED and fields is not None and keeps[0] is None:
                # Known here to be running, so worth a place in the batch;
                # its BullMQ command is made only if FINISH leaves it (LINKED).
                # id, token, now, returnvalue, then 4 values: the fields to set.
                args: list[Arg] = [o.job_id, o.token, millis(o.at), o.result or "null", 4]
                args += ("progress", "100", HISTORY, history)
                completions.setdefault(queue, []).append((index, args))
                plan.slots.append(-1)  # placed below
                plan.linked[index] = (keys, o, retention, history, attempts)
            else:
                plan.slots.append(len(plan.commands))
                plan.commands.append(
                    self._outcome_command(keys, o, retention, history, attempts, keeps)
                )
        keep = -1 if retention.keep_completed is None else retention.keep_completed
        for queue, batch in completions.items():
            keys = self.keys(queue)
            flat_args: list[Arg] = [keys.base, keep]
            for position, (index, args) in enumerate(batch):
                plan.slots[index] = (len(plan.commands), position)
                flat_args += args
            plan.commands.append(
                self.call(
                    "finish",
                    keys.many("active stalled events meta completed wait prioritized"),
                    flat_args,
                )
            )
        return plan

    async def _settle(
        self, outcomes: Sequence[Outcome], plan: OutcomePlan, replies: Sequence[Any]
    ) -> list[bool]:
        """Whether each outcome was taken: a script's negative answer is
        BullMQ's refusal (the lock token no longer holds, the job is gone).
        The completions FINISH left to BullMQ (LINKED) are sent now."""
        answers: dict[int, Any] = {}
        for index, slot in enumerate(plan.slots):
            if isinstance(slot, tuple):
                answers[index] = replies[slot[0]][slot[1]]
            elif not isinstance(slot, bool):
                answers[index] = replies[slot]
        linked = [i for i, answer in answers.items() if answer == LINKED]
        if linked:
            again = await self.run([self._outcome_command(*plan.linked[i]) for i in linked])
            answers.update(zip(linked, again, strict=True))
        done: list[bool] = []
        for index, (o, slot) in enumerate(zip(outcomes, plan.slots, strict=True)):
            if isinstance(slot, bool):
                done.append(slot)
                continue
            reply = answers[index]
            ok = not isinstance(reply, int) or reply >= 0
            if ok:
                self._claimed.pop(o.job_id, None)
            done.append(ok)
        return done
