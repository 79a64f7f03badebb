"""conveyor again, with prefetch: the worker claims up to 4 x concurrency jobs
ahead of free slots (Celery's default prefetch multiplier is also 4), so the
round trip of the next claim overlaps with running jobs and batches grow."""

from __future__ import annotations

from peers.conveyor_peer import ConveyorPeer


class ConveyorPrefetchPeer(ConveyorPeer):
    name = "conveyor_prefetch"
    settings = (
        "`app.worker(concurrency=10, prefetch=40, scheduler=False).run()` in one process; "
        "otherwise as the conveyor row"
    )
    notes = "Prefetched jobs hold a lease like running ones and are handed back at shutdown."
    prefetch_factor = 4


PEER = ConveyorPrefetchPeer
