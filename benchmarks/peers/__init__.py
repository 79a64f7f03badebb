"""One module per job system: `peers.<name>_peer.PEER` is its `Peer` subclass.

BullMQ is not here: it runs in Node (benchmarks/node/bench.mjs) and reports the
same figures in the same JSON shape.

Peers come in suites, one per kind of server; a run of benchmarks/run.py runs
one suite. conveyor is in every suite, on that suite's server.
"""

from __future__ import annotations

#: Python peers on Redis, in table order; conveyor first
PYTHON_PEERS = ("conveyor", "conveyor_prefetch", "arq", "saq", "rq", "celery", "dramatiq", "taskiq")
NODE_PEERS = ("bullmq",)
ALL_PEERS = PYTHON_PEERS + NODE_PEERS
#: peers on PostgreSQL, in table order; conveyor first
POSTGRES_PEERS = ("conveyor", "conveyor_prefetch", "procrastinate", "pgqueuer", "oban")
#: peers on SQS (a moto server of their own each), in table order
SQS_PEERS = ("conveyor", "conveyor_sqlite", "celery")
SUITES: dict[str, tuple[str, ...]] = {
    "redis": ALL_PEERS,
    "postgres": POSTGRES_PEERS,
    "sqs": SQS_PEERS,
}
