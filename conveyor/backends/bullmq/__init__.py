"""The `bullmq://` backend: BullMQ's Redis layout and Lua scripts (see backend.py).

Modules: url.py (the URL), scripts.py (BullMQ's scripts from the pinned PyPI
`bullmq` package, the meta.version check), own_scripts.py (conveyor's own
scripts for what BullMQ's do not do), layout.py (keys, a job hash as a Job),
calls.py (connections, running scripts, reading jobs), admin.py (get, list,
stats, cancel, retry, purge), consume.py (claims, hand-backs, heartbeats,
progress, recovery), schedules.py and schedule_scripts.py (recurring
schedules as BullMQ job schedulers), backend.py (enqueue, outcomes).

State (first landing): the conformance suite passes with its capability skips;
tests/interop runs Node BullMQ 6.4.0 against conveyor both ways (producer,
worker, retries with backoff, failures, a mixed pool, SIGKILL recovery).
Recurring schedules are BullMQ job schedulers, both ways (schedules.py);
Bull Board and Node's QueueEvents see conveyor's work (tests/interop). The
benchmark against Node's worker: `python benchmarks/run.py --suite bullmq`.
Left: flows (a Node FlowProducer's parent/child jobs) are untested.
"""

from __future__ import annotations

from conveyor.backends.bullmq.backend import BullMQBackend

__all__ = ["BullMQBackend"]
