"""conveyor on SQS with a store (SQS suite): job records in a SQLite file,
SQS messages carrying only job ids. run.py gives it the suite's URL with
`&store=sqlite:///<its own temp dir>/store.db` appended."""

from __future__ import annotations

from peers.conveyor_peer import ConveyorPeer


class ConveyorSQLitePeer(ConveyorPeer):
    name = "conveyor_sqlite"
    settings = (
        "`app.worker(concurrency=10, scheduler=False).run()` in one process on "
        "`sqs://bench?...&store=sqlite:///.../store.db`; otherwise as the conveyor row"
    )
    notes = (
        "Job records (and the last 1,000 completed ones) in a SQLite file; a message carries "
        "only the job's id. Enqueue writes the records, then sends; a received id is claimed "
        "in the store before the job runs."
    )


PEER = ConveyorSQLitePeer
