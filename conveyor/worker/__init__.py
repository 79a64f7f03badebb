"""The worker: claim loop, concurrency, heartbeats, timeouts, recovery, shutdown.

`core.Worker` runs jobs; beside it, each concern in a module of its own:
`claims` (leasing jobs), `acks` (outcomes and their acknowledgement),
`threads` (sync handlers), `clock` (claim leases and stop deadlines),
`leases` (heartbeats), `duties` (lease recovery, presence), `shutdown`
(signals and a bounded stop) and `settings`. It talks to storage only
through the `Backend` protocol.
"""

from conveyor.worker.core import Worker
from conveyor.worker.settings import WorkerSettings
from conveyor.worker.shutdown import STOP_GRACE

__all__ = ["STOP_GRACE", "Worker", "WorkerSettings"]
