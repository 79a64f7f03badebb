"""One log line when the backend goes away and one when it is back.

A worker reaches its backend from several loops at once (claims, heartbeats,
acknowledgements, lease recovery, presence, the scheduler). During an outage
each of them fails every second or so; logging each failure buried the one
fact that matters under dozens of ERROR lines. `Outage` is shared by them:
the first failure is logged (with the call that met it), the rest only at
debug level, and the first success after it says how long it lasted.
"""

from __future__ import annotations

import logging
import time

logger = logging.getLogger("conveyor.worker")


class Outage:
    def __init__(self, where: str) -> None:
        self._where = where
        self._since: float | None = None
        self._failures = 0
        self._loud = True

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    def failed(self, call: str, exc: BaseException) -> None:
        """A call to the backend failed; `call` names it in the log."""
        self._failures += 1
        if self._since is None:
            self._since = time.monotonic()
            # A backend that logged this outage itself (at ERROR) is not
            # echoed at ERROR: one ERROR line per outage.
            self._loud = not getattr(exc, "logged", False)
            logger.log(
                logging.ERROR if self._loud else logging.INFO,
                "backend %s unavailable (%s: %s); retrying until it answers",
                self._where,
                call,
                exc,
            )
        else:
            logger.debug("backend %s still unavailable (%s: %s)", self._where, call, exc)

    @staticmethod
    def clock() -> float:
        """The time to pass to `answered` for a call about to be made."""
        return time.monotonic()

    def answered(self, sent_at: float) -> None:
        """A call to the backend, sent at `sent_at` (`clock()`), succeeded. A
        call sent before the outage began says nothing of its end."""
        if self._since is not None and sent_at >= self._since:
            logger.log(
                logging.WARNING if self._loud else logging.INFO,
                "backend %s reachable again after %.1f s (%d failed call(s))",
                self._where,
                time.monotonic() - self._since,
                self._failures,
            )
            self._since, self._failures = None, 0
