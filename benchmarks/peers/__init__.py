"""One module per job system: `peers.<name>_peer.PEER` is its `Peer` subclass.

BullMQ is not here: it runs in Node (benchmarks/node/bench.mjs) and reports the
same figures in the same JSON shape.
"""

from __future__ import annotations

#: Python peers in table order; conveyor first
PYTHON_PEERS = ("conveyor", "conveyor_prefetch", "arq", "saq", "rq", "celery", "dramatiq", "taskiq")
NODE_PEERS = ("bullmq",)
ALL_PEERS = PYTHON_PEERS + NODE_PEERS
