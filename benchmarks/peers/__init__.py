"""One module per job system: `peers.<name>_peer.PEER` is its `Peer` subclass.

BullMQ is not here: it runs in Node (benchmarks/node/bench.mjs) and reports the
same figures in the same JSON shape.

Peers come in suites, one per kind of server; a run of benchmarks/run.py runs
one suite. conveyor is in every suite, on that suite's server; in the bullmq
suite it is on `bullmq://`, BullMQ's own layout, next to BullMQ's Node worker.
"""

from __future__ import annotations

#: Python peers on Redis, in table order; conveyor first
PYTHON_PEERS = ("conveyor", "conveyor_prefetch", "arq", "saq", "rq", "celery", "dramatiq", "taskiq")
#: peers that run in Node (bench.mjs); bullmq_keep1000 is BullMQ with conveyor's
#: default retention (removeOnComplete {count: 1000}), in the bullmq suite only
NODE_PEERS = ("bullmq", "bullmq_keep1000")
ALL_PEERS = (*PYTHON_PEERS, "bullmq")
#: peers on PostgreSQL, in table order; conveyor first
POSTGRES_PEERS = ("conveyor", "conveyor_prefetch", "procrastinate", "pgqueuer", "oban")
#: peers on SQS (a moto server of their own each), in table order
SQS_PEERS = ("conveyor", "conveyor_sqlite", "celery")
#: peers on BullMQ's Redis layout (conveyor's bullmq:// URL), in table order
BULLMQ_PEERS = ("conveyor", "conveyor_prefetch", "bullmq", "bullmq_keep1000")
SUITES: dict[str, tuple[str, ...]] = {
    "redis": ALL_PEERS,
    "postgres": POSTGRES_PEERS,
    "sqs": SQS_PEERS,
    "bullmq": BULLMQ_PEERS,
}
#: the suites whose peers each get a logical DB of one Redis server
REDIS_SUITES = ("redis", "bullmq")
