"""The chaos test's side channel, and the checks made on it after a run.

The side channel is one append-only file, chaos.log, next to the app module.
Every line is a single short O_APPEND write, so its order is the order of the
writes across all processes, and a SIGKILL cannot tear a line:

    start <job> <execution> <pid> <attempt> <claimed_at> <time>   handler starts
    end   <job> <execution> <pid> <attempt> <claimed_at> <time>   handler returns
    acked <job> <execution> <pid> <attempt> <claimed_at> <time>   the backend took it
    kill|stop|cont|term|spawn <pid> <time>                        written by the harness

`execution` is a fresh random id per handler run; the handler returns it as
its result, so the stored result names the execution that completed the job.
`acked` comes from the worker's `job.completed` event, which fires only once
the backend accepted the completion. The harness writes `kill`/`stop`/`term`
before it sends the signal, so a run whose start comes before that line was
in flight when the signal landed, unless its `acked` also comes before.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from conveyor import Job, JobState

SIDE_CHANNEL = "chaos.log"
KILL, STOP, CONT, TERM, SPAWN = "kill", "stop", "cont", "term", "spawn"
HITS = (KILL, STOP, TERM)  # what may cut a run short (and so make it run again)
# Slack between a worker's look at a claim's lease and the handler's `start`
# line: a sync handler may wait for a pool thread that a handler abandoned
# after losing its lease still holds (for at most the longest job, 0.5 s).
START_GRACE = 0.5


# --------------------------------------------------------------------------- the side channel


@dataclass(slots=True)
class Execution:
    """One run of a handler, as the side channel tells it (line numbers)."""

    id: str
    job_id: str
    pid: int
    attempt: int
    claimed_at: float  # the claim's started_at: its lease ran from then
    started_at: float
    started: int
    ended: int | None = None
    acked: int | None = None

    @property
    def claim(self) -> tuple[int, float]:
        """Orders the claims of one job: a newer claim counts a higher attempt,
        or (a hand-back lowers the count again) the same attempt claimed later."""
        return (self.attempt, self.claimed_at)


@dataclass(frozen=True, slots=True)
class Signal:
    line: int
    kind: str
    pid: int
    at: float


@dataclass(slots=True)
class SideChannel:
    lines: list[str]
    executions: dict[str, Execution] = field(default_factory=dict)
    by_job: dict[str, list[Execution]] = field(default_factory=lambda: defaultdict(list))
    signals: list[Signal] = field(default_factory=list)
    orphans: list[int] = field(default_factory=list)  # end/acked lines with no start

    @classmethod
    def parse(cls, text: str) -> SideChannel:
        channel = cls(text.splitlines())
        for number, line in enumerate(channel.lines):
            fields = line.split()
            what = fields[0]
            if what in (*HITS, CONT, SPAWN):
                channel.signals.append(Signal(number, what, int(fields[1]), float(fields[2])))
                continue
            job_id, execution_id, pid, attempt, claimed_at, at = fields[1:7]
            if what == "start":
                execution = Execution(
                    execution_id,
                    job_id,
                    int(pid),
                    int(attempt),
                    float(claimed_at),
                    float(at),
                    number,
                )
                channel.executions[execution_id] = execution
                channel.by_job[job_id].append(execution)
                continue
            known = channel.executions.get(execution_id)
            if known is None:
                channel.orphans.append(number)
            elif what == "end":
                known.ended = number
            elif what == "acked":
                if known.acked is None:
                    known.acked = number
                else:
                    channel.orphans.append(number)  # acknowledged twice
        return channel

    def interrupted(self, execution: Execution) -> bool:
        """Whether a kill, stop or term of its process landed while it was in
        flight: after it started and before its completion was acknowledged;
        or whether it started in a worker already told to stop (see below)."""
        until = execution.acked if execution.acked is not None else len(self.lines)
        return any(
            s.pid == execution.pid
            and (
                (s.kind in HITS and execution.started < s.line < until)
                or (s.kind == TERM and s.line < execution.started)
                or (s.line < execution.started and self._landed_after(s, execution.started))
            )
            for s in self.signals
        )

    def _landed_after(self, hit: Signal, line: int) -> bool:
        """Whether a kill or stop noted before `line` (the harness writes its
        line, then sends the signal) landed after the process wrote `line`. A
        killed process writes nothing again, and a frozen one nothing before
        its `cont`: a line of it written between shows the signal was still
        on its way."""
        if hit.kind == KILL:
            return True
        if hit.kind != STOP:
            return False
        resumes = (s.line for s in self.signals if s.kind == CONT and s.pid == hit.pid)
        resumed = next((at for at in resumes if at > hit.line), len(self.lines))
        return line < resumed

    def after_term(self, execution: Execution) -> bool:
        """Whether it started after the harness sent its worker SIGTERM.

        Such a run came from a claim in flight at the signal and is handed
        back at once (the short shutdown timeout), so it may run again.
        Issue 7 point 10 wants such claims handed back unstarted, but the
        side channel cannot tell a run started after the worker handled the
        signal from one started in the same instant, before it did: so this
        is a figure, not a failure."""
        return any(
            s.kind == TERM and s.pid == execution.pid and s.line < execution.started
            for s in self.signals
        )

    def started_expired(self, execution: Execution, lease: float) -> bool:
        """Whether it started after its claim's lease ran out. Nothing renews a
        claim before its handler starts (the workers prefetch nothing), so the
        lease ended at `claimed_at + lease`. A freeze of the worker between
        claim and start excuses it: the worker may have checked the lease
        before it froze."""
        if execution.started_at <= execution.claimed_at + lease + START_GRACE:
            return False
        return not any(
            s.kind == STOP
            and s.pid == execution.pid
            and execution.claimed_at < s.at < execution.started_at
            for s in self.signals
        )

    def about(self, job_id: str) -> list[str]:
        """The job's lines, and the signals sent to its processes meanwhile."""
        runs = self.by_job.get(job_id, [])
        pids = {run.pid for run in runs}
        first = min((run.started for run in runs), default=0)
        out = []
        for number, line in enumerate(self.lines):
            fields = line.split()
            mine = len(fields) > 1 and fields[1] == job_id
            signalled = fields[0] in (*HITS, CONT) and int(fields[1]) in pids
            if mine or (signalled and number >= first):
                out.append(f"  {number:6d}: {line}")
        return out


# --------------------------------------------------------------------------- the checks


@dataclass(slots=True)
class Findings:
    """What a run showed. `problems()` is empty when the queue behaved."""

    jobs: int
    executions: int
    hits: int  # kills, stops or terms delivered
    lost: list[str] = field(default_factory=list)  # job ids not completed
    failed: list[str] = field(default_factory=list)  # job ids failed or cancelled
    duplicated: list[str] = field(default_factory=list)  # job ids run more than once
    extra_runs: int = 0
    unexplained: list[str] = field(default_factory=list)  # job ids
    stale_completions: list[str] = field(default_factory=list)  # job ids
    stale_starts: list[str] = field(default_factory=list)  # job ids
    expired_starts: list[str] = field(default_factory=list)  # job ids
    unknown_results: list[str] = field(default_factory=list)  # job ids
    orphan_lines: int = 0
    started_after_term: int = 0  # runs (a figure, not a failure: see after_term)
    complaints: list[str] = field(default_factory=list)  # workers that died or hung

    def problems(self) -> list[str]:
        found = []
        for label, ids in (
            ("lost (not completed)", self.lost),
            ("failed or cancelled", self.failed),
            ("completed by a stale claim", self.stale_completions),
            ("run again with no hit on its worker while in flight", self.unexplained),
            ("started on a claim already superseded", self.stale_starts),
            ("started on a claim whose lease had expired", self.expired_starts),
            ("result names no recorded execution", self.unknown_results),
        ):
            if ids:
                found.append(f"{len(ids)} job(s) {label}: {', '.join(ids[:5])}")
        if self.orphan_lines:
            found.append(f"{self.orphan_lines} end/acked line(s) with no start, or acked twice")
        found += self.complaints
        return found

    def summary(self, backend: str, mode: str, seed: int) -> str:
        return (
            f"chaos {backend} {mode}: seed={seed} jobs={self.jobs} kills={self.hits} "
            f"executions={self.executions} lost={len(self.lost)} failed={len(self.failed)} "
            f"duplicated={len(self.duplicated)} (extra runs {self.extra_runs}, "
            f"unexplained {len(self.unexplained)}) "
            f"stale_completions={len(self.stale_completions)} "
            f"stale_starts={len(self.stale_starts)} expired_starts={len(self.expired_starts)} "
            f"started_after_sigterm={self.started_after_term}"
        )


def analyse(
    enqueued: Sequence[str], final: dict[str, Job], channel: SideChannel, lease: float
) -> Findings:
    """Check every enqueued job against its final record and its executions."""
    findings = Findings(
        jobs=len(enqueued),
        executions=len(channel.executions),
        hits=sum(1 for s in channel.signals if s.kind in HITS),
        orphan_lines=len(channel.orphans),
        started_after_term=sum(map(channel.after_term, channel.executions.values())),
    )
    for job_id in enqueued:
        job = final.get(job_id)
        runs = channel.by_job.get(job_id, [])
        if job is None or not job.is_final:
            findings.lost.append(job_id)
            continue
        if job.state is not JobState.COMPLETED:
            findings.failed.append(job_id)
            continue
        if len(runs) > 1:
            findings.duplicated.append(job_id)
            findings.extra_runs += len(runs) - 1
        for later in runs:
            if any(run.claim > later.claim and run.started < later.started for run in runs):
                findings.stale_starts.append(job_id)
                break
        if any(channel.started_expired(run, lease) for run in runs):
            findings.expired_starts.append(job_id)
        execution_id = job.result.get("execution") if isinstance(job.result, dict) else None
        winner = channel.executions.get(execution_id) if execution_id else None
        if winner is None or winner.job_id != job_id:
            findings.unknown_results.append(job_id)
            continue
        # The completion must come from the newest claim of the job: a newer
        # one means the result was accepted after the job was taken over.
        if (
            winner.attempt < job.attempts
            or any(run.claim > winner.claim for run in runs)
            or any(run.acked is not None for run in runs if run is not winner)
        ):
            findings.stale_completions.append(job_id)
        # Every run but the one that counted must have been cut short by a
        # hit on its own process.
        if any(not channel.interrupted(run) for run in runs if run is not winner):
            findings.unexplained.append(job_id)
    return findings
