"""The markdown report of benchmarks/run.py: one table per run, ratios in brackets."""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
from dataclasses import dataclass
from typing import Any

from peers import PYTHON_PEERS, SUITES


@dataclass
class Column:
    title: str
    phase: str
    key: str
    higher_is_better: bool
    unit: str


COLUMNS = [
    Column("enqueue/s, one at a time", "enqueue_single", "rate", True, "/s"),
    Column("enqueue/s, batched", "enqueue_batched", "rate", True, "/s"),
    Column("drain/s (1 worker process)", "drain", "rate", True, "/s"),
    Column("p50 enqueue→start", "latency", "p50_ms", False, " ms"),
    Column("p99 enqueue→start", "latency", "p99_ms", False, " ms"),
]

#: the peer every ratio is taken against, per suite; None: the best Python peer
#: of each column. procrastinate is the reference the PostgreSQL targets name;
#: Celery is the one other job queue of the SQS suite; BullMQ's own Node worker
#: is what conveyor on bullmq:// is measured against.
RATIO_PEER: dict[str, str | None] = {
    "redis": None,
    "postgres": "procrastinate",
    "sqs": "celery",
    "bullmq": "bullmq",
}
TITLES = {
    "redis": "Redis job queues",
    "postgres": "PostgreSQL job queues",
    "sqs": "SQS job queues (on moto, a local SQS emulator)",
    "bullmq": "conveyor on BullMQ's layout (bullmq://) and BullMQ's Node worker",
}
#: printed with every bullmq report, and in benchmarks/README.md
BULLMQ_NOTE = (
    "**One layout, two workers.** conveyor's rows run on "
    "`bullmq://127.0.0.1:6379/<db>?queue=bench&prefix=bull`: BullMQ's Redis layout, moved by "
    "BullMQ's own Lua scripts (those of npm bullmq 6.4.0, shipped by PyPI bullmq 3.4.4), "
    "except a worker's claims and completions: conveyor's own scripts do, job by job, what "
    "BullMQ's moveToActive and moveToFinished do, a batch per call. conveyor's worker writes "
    "two log lines per job (its default, INFO), BullMQ's none. The "
    "bullmq rows are BullMQ 6.4.0's own Node `Queue` and `Worker` on the same queue and "
    "prefix, each peer in a Redis DB of its own. Retention differs by default: BullMQ keeps "
    "every completed job, conveyor the last 1,000, which BullMQ's moveToFinished script trims "
    "at every completion; bullmq_keep1000 is BullMQ's worker told to keep 1,000 too "
    "(`removeOnComplete: {count: 1000}`), the same work per job as conveyor's rows."
)
#: printed with every SQS report, and in benchmarks/README.md
SQS_NOTE = (
    "**moto is not AWS.** moto is a local Python emulator of SQS: these figures compare the "
    "peers on the same emulator; they do not predict AWS's throughput or latency. On AWS "
    "every call is a network round trip of several ms, and SendMessageBatch and "
    "ReceiveMessage of 10 messages dominate. On moto every message sent or received costs "
    "time in proportion to the depth of its queue (moto recounts the queue's messages for "
    "each one), so the figures fall as --jobs grows: compare runs of the same --jobs only."
)


def value_of(result: dict[str, Any], column: Column) -> float | None:
    data = result.get("phases", {}).get(column.phase)
    if not data or data.get("timeout") or column.key not in data:
        return None
    return float(data[column.key])


def fmt_number(value: float, unit: str) -> str:
    if unit == " ms":
        return f"{value:,.1f} ms" if value >= 10 else f"{value:,.2f} ms"
    return f"{value:,.0f}"


def cell(result: dict[str, Any], column: Column, base: float | None) -> str:
    status = result.get("status", "")
    data = result.get("phases", {}).get(column.phase)
    if not data:
        if status != "ok":
            return status if column is COLUMNS[0] else "n/a"
        if column.phase == "enqueue_batched":
            return "—"
        return "n/a"
    if "error" in data:
        return "error (see details)"
    if "skipped" in data:
        return f"skipped ({data['skipped']})"
    if column.phase == "drain" and data.get("timeout"):
        return f"timeout after {data['seconds']:.0f} s ({data['done']:,} jobs done)"
    if column.phase == "latency" and data.get("timeout"):
        return f"timeout ({data['done']} of {data['count']} started)"
    value = float(data[column.key])
    text = fmt_number(value, column.unit)
    if column.phase.startswith("enqueue") and data.get("timeout"):
        text += f" (timeout after {data['seconds']:.0f} s, {data['count']:,} enqueued)"
    if column.phase == "latency" and data.get("min_ms", 0.0) < 0:
        text += " (clock error: negative samples)"
    if base:
        ratio = value / base
        text += f" ({ratio:.2f}x)" if ratio < 10 else f" ({ratio:.0f}x)"
    return text


def name_of(result: dict[str, Any]) -> str:
    return str(result.get("label") or result["peer"])


def versions_text(result: dict[str, Any]) -> str:
    versions: dict[str, str] = result.get("versions") or {}
    return ", ".join(f"{k} {v}" for k, v in versions.items()) or "?"


def ratio_bases(results: list[dict[str, Any]], suite: str) -> tuple[dict[str, float | None], str]:
    """The value each column's ratios divide by, and a sentence saying what it is."""
    python_peers = PYTHON_PEERS if suite == "redis" else SUITES[suite]
    reference = RATIO_PEER[suite]
    bases: dict[str, float | None] = {}
    fallback = False
    for column in COLUMNS:
        ref = next((r for r in results if r["peer"] == reference and "label" not in r), None)
        value = value_of(ref, column) if ref is not None else None
        if value is None:
            fallback |= reference is not None
            values = [
                v
                for r in results
                if r["peer"] in python_peers
                and "label" not in r
                and (v := value_of(r, column)) is not None
            ]
            value = (max(values) if column.higher_is_better else min(values)) if values else None
        bases[column.title] = value
    if reference is None:
        text = (
            "ratio in brackets = value ÷ the best **Python** peer's value in that column "
            "(throughput: 1.00x is the fastest, lower is slower; latency: 1.00x is the lowest, "
            "higher is slower)"
        )
    else:
        text = (
            f"ratio in brackets = value ÷ **{reference}**'s value in that column "
            f"(throughput: above 1 is faster than {reference}; latency: below 1 is lower)"
        )
        if fallback:
            text += f"; where {reference} has no figure, ÷ the best peer's value in that column"
    return bases, text


def merged(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One peer's result from its rounds (run.py --rounds): each figure the
    median of the rounds that have it (a phase that timed out or failed has
    none), every column's value per round under "rounds", and the status of
    each round that was not ok. One round is returned as it is."""
    if len(rounds) == 1:
        return rounds[0]
    good = [r for r in rounds if r.get("status") == "ok"] or rounds
    result = copy.deepcopy(good[0])
    for phase, data in result.get("phases", {}).items():
        runs = [r["phases"][phase] for r in good if phase in r.get("phases", {})]
        finished = [run for run in runs if not run.get("timeout") and "error" not in run]
        if not finished:
            continue
        result["phases"][phase] = data = copy.deepcopy(finished[0])
        for key, value in data.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                data[key] = statistics.median(run[key] for run in finished if key in run)
    problems = [
        f"round {n}: {r.get('status')}" for n, r in enumerate(rounds, 1) if r.get("status") != "ok"
    ]
    result["status"] = "; ".join([result.get("status", "?"), *problems])
    result["elapsed_s"] = sum(r.get("elapsed_s", 0.0) for r in rounds)
    result["rounds"] = {c.title: [value_of(r, c) for r in rounds] for c in COLUMNS}
    return result


def render(results: list[dict[str, Any]], args: argparse.Namespace, meta: dict[str, str]) -> str:
    suite = args.suite
    bases, ratio_text = ratio_bases(results, suite)
    lines = [
        f"# {TITLES[suite]}, side by side",
        "",
        f"- run: {meta['date']} · conveyor {meta['git']}",
        f"- Python {platform.python_version()} · {meta['server']} · {os.cpu_count()} CPUs · "
        f"{platform.system()} {platform.machine()} · load average at start {meta['load']}",
        f"- workload: {args.jobs:,} no-op jobs per phase; batches of {args.batch_size:,}; "
        f"ONE worker process at concurrency {args.concurrency}; latency: "
        f"{args.latency_jobs} jobs, one every {args.interval * 1000:.0f} ms, on an idle worker",
        f"- {ratio_text}",
        *(
            [
                f"- each figure is the median of {args.rounds} rounds (every peer in turn, "
                "round after round); every round's figures are under 'Every round'"
            ]
            if getattr(args, "rounds", 1) > 1
            else []
        ),
        *([f"- {SQS_NOTE}"] if suite == "sqs" else []),
        *([f"- {BULLMQ_NOTE}"] if suite == "bullmq" else []),
        "",
        "| peer | versions | " + " | ".join(c.title for c in COLUMNS) + " |",
        "|---|---|" + "--:|" * len(COLUMNS),
    ]
    for r in results:
        cells = [cell(r, c, bases[c.title]) for c in COLUMNS]
        lines.append(f"| {name_of(r)} | {versions_text(r)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Settings per peer",
        "",
        "| peer | worker | batch call | notes |",
        "|---|---|---|---|",
    ]
    for r in results:
        batch = r.get("batch_call") or f"— ({r.get('no_batch_reason') or 'none'})"
        lines.append(
            f"| {name_of(r)} | {r.get('settings', '?')} | {batch} | {r.get('notes') or ''} |"
        )
    lines += [
        "",
        "## Details",
        "",
        "| peer | drain s | worker start → 1st job s | spawn → worker start s "
        "| latency mean ms | latency max ms | peer wall time s | status |",
        "|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in results:
        drain = r.get("phases", {}).get("drain") or {}
        lat = r.get("phases", {}).get("latency") or {}
        errors = [f"{k}: {v['error']}" for k, v in r.get("phases", {}).items() if "error" in v]

        def num(data: dict[str, Any], key: str, fmt: str = "{:.2f}") -> str:
            return fmt.format(data[key]) if key in data and not data.get("timeout") else "—"

        lines.append(
            f"| {name_of(r)} | {num(drain, 'seconds')} | {num(drain, 'startup_s', '{:.3f}')} "
            f"| {num(drain, 'spawn_to_start_s')} | {num(lat, 'mean_ms')} | {num(lat, 'max_ms')} "
            f"| {r.get('elapsed_s', 0):.0f} | {'; '.join([r.get('status', '?'), *errors])} |"
        )
    if any("rounds" in r for r in results):
        lines += ["", "## Every round", ""]
        for column in COLUMNS[:3]:
            count = max(len(r.get("rounds", {}).get(column.title, [])) for r in results)
            lines += [
                f"{column.title}:",
                "",
                "| peer | " + " | ".join(f"round {n}" for n in range(1, count + 1)) + " |",
                "|---|" + "--:|" * count,
            ]
            for r in results:
                values = r.get("rounds", {}).get(column.title, [])
                shown = ["—" if v is None else fmt_number(v, column.unit) for v in values]
                lines.append(f"| {name_of(r)} | " + " | ".join(shown) + " |")
            lines.append("")
    lines += [
        "",
        "Reproduce (from the repository root, in the environment where "
        "`pip install -e '.[bench]'` was run):",
        "",
        "```",
        meta["command"],
        "```",
        "",
        "How each figure is measured, and the caveats: benchmarks/README.md.",
        "",
    ]
    return "\n".join(lines)


def summary(result: dict[str, Any]) -> str:
    parts = []
    for column in COLUMNS:
        value = value_of(result, column)
        if value is not None:
            parts.append(f"{column.phase}.{column.key}={fmt_number(value, column.unit)}")
    return f"{result['peer']}: {result.get('status')} " + " ".join(parts)
