"""One job at a time per FIFO group, across the messages of one receive.

A FIFO broker (an SQS FIFO queue's message groups, Pub/Sub's ordering keys)
holds a group back while one of its messages is out, but a single receive
can bring several messages of one group, in order. Handed to the worker
together, they would run at once. So a receive's messages go through this
gate: the first of each group (its head) is handed out, the later ones (its
tail) stay here, still out on the broker (which keeps the group blocked), and
are handed out one by one by later claims, each once the one before it is
settled:

* the head's message was deleted (completed, failed, cancelled, or a retry
  the store or a republish took over): the group's next message is ready;
* the head's message went back to the broker (handed back, a retry hidden
  for its backoff, a lost lease, a lost claim): the tail goes back with it,
  made visible at once, so the broker delivers the group again in order (on
  SQS the head, still out or hidden, keeps the group blocked meanwhile).

The backend keeps the tail's messages hidden (the worker heartbeats only
what it was handed) and gives back what is not handed out in time; this
module only keeps the books and says which messages move where.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from conveyor.backends.broker.messages import Pointer
from conveyor.backends.broker.types import Received

# A held message this close to the end of its visibility is not handed out
# (the broker may be delivering it again): it is left to come back.
EXPIRY_MARGIN = 0.25

# A message to hand out: with its pointer and when it was received (monotonic).
Chosen = tuple[Received, Pointer, float]
# A message's new visibility (seconds; 0: visible at once).
Change = tuple[Received, int]
GroupKey = tuple[str, str]  # (the broker's queue, the group)
HeadKey = tuple[str, str]  # (job id, claim token)


@dataclass(slots=True)
class Waiting:
    """A message of a group received but not handed out yet."""

    message: Received
    pointer: Pointer
    received_at: float  # time.monotonic(): SQS's 12-hour limit counts from the receive
    hidden_until: float  # time.monotonic() when its visibility ends


@dataclass(slots=True)
class _Group:
    head: HeadKey | None = None  # handed out, its outcome not settled yet
    seen_at: float = 0.0  # the head's hand-out or last heartbeat; without one, since when ready
    tail: deque[Waiting] = field(default_factory=deque)


class GroupGate:
    def __init__(self, group_of: Callable[[Pointer], str]) -> None:
        self._group_of = group_of
        self._groups: dict[GroupKey, _Group] = {}
        self._heads: dict[HeadKey, GroupKey] = {}
        # A group went back to the broker since the last receive (the
        # backend resets it): a receive may bring its next message.
        self.freed = False
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """How many messages are held (not handed out)."""
        with self._lock:
            return sum(len(g.tail) for g in self._groups.values())

    def busy(self) -> bool:
        """Whether a group has a message handed out or held here."""
        with self._lock:
            return bool(self._groups)

    def ready(self) -> int:
        """How many groups have a message to hand out now."""
        with self._lock:
            return sum(1 for g in self._groups.values() if g.head is None and g.tail)

    def admit(
        self, received: Iterable[tuple[Received, Pointer]], token: str, hidden: float
    ) -> list[tuple[Received, Pointer]]:
        """The heads among `received` (in order), now out under `token`;
        the rest is held behind the head of its group."""
        now = time.monotonic()
        heads = []
        with self._lock:
            for message, pointer in received:
                key = (message.queue, self._group_of(pointer))
                group = self._groups.setdefault(key, _Group())
                if pointer.id in self._ids_of(group):
                    # Delivered again: the broker let the group go (what was
                    # out of it ran out of visibility, so it has the rest
                    # back too): start afresh from this message.
                    if group.head is not None:
                        del self._heads[group.head]
                    group = self._groups[key] = _Group()
                if group.head is None and not group.tail:
                    self._out(key, group, (pointer.id, token), now)
                    heads.append((message, pointer))
                else:
                    group.tail.append(Waiting(message, pointer, now, now + hidden))
        return heads

    def choose(
        self,
        received: list[tuple[Received, Pointer]],
        token: str,
        lease: float,
        hidden: int,
        room: int,
    ) -> tuple[list[Chosen], list[Change]]:
        """What a claim under `token` hands out, in order: held messages
        whose turn came (up to `room` with the heads), then the heads among
        `received`; and the visibility changes that go with it (held ones
        given up, as stale or `overdue`, and held ones renewed for a whole
        lease, as a claim's are)."""
        now = time.monotonic()
        overdue = self.overdue(lease)
        heads = self.admit(received, token, hidden)
        ready, expired = self.take_ready(max(0, room - len(heads)), token)
        renew = [w for w in ready if w.hidden_until - now < hidden / 2]
        self.extended(renew, hidden)
        # Held ones behind a head are renewed here too, not only with the
        # heartbeats (a worker between jobs sends none, but keeps claiming).
        renew += self.due_for_renewal(hidden)
        changes = [(w.message, 0) for w in expired + overdue]
        changes += [(w.message, hidden) for w in renew]
        chosen = [(w.message, w.pointer, w.received_at) for w in ready]
        return chosen + [(message, pointer, now) for message, pointer in heads], changes

    def upkeep(
        self, lost: Iterable[HeadKey], lease: float | None, hidden: int | None
    ) -> list[Change]:
        """On a heartbeat: the held messages of `lost` heads go back (visible
        at once); with a `lease`, so do the `overdue`, and the rest whose
        visibility is half gone are hidden for `hidden` again (a heartbeat
        comes at least three times a lease)."""
        back = [w for head in lost for w in self.back(*head)]
        changes = [(w.message, 0) for w in back]
        if lease is None or hidden is None:
            return changes
        changes += [(w.message, 0) for w in self.overdue(lease)]
        return changes + [(w.message, hidden) for w in self.due_for_renewal(hidden)]

    def due_for_renewal(self, hidden: int) -> list[Waiting]:
        """Held messages with half their visibility gone, now counted as
        hidden for `hidden` seconds more (the caller renews them)."""
        now = time.monotonic()
        due = [w for w in self.held() if w.hidden_until - now < hidden / 2]
        self.extended(due, hidden)
        return due

    @staticmethod
    def _ids_of(group: _Group) -> set[str]:
        ids = {w.pointer.id for w in group.tail}
        if group.head is not None:
            ids.add(group.head[0])
        return ids

    def take_ready(self, limit: int, token: str) -> tuple[list[Waiting], list[Waiting]]:
        """Up to `limit` messages whose group's previous one is settled, each
        now its group's head under `token`; and the groups given up because
        their next message's visibility is (nearly) over: the broker may be
        delivering it again, so the rest of its group goes back with it."""
        now = time.monotonic()
        taken: list[Waiting] = []
        expired: list[Waiting] = []
        with self._lock:
            for key, group in list(self._groups.items()):
                if len(taken) >= limit:
                    break
                if group.head is not None:
                    continue
                if group.tail and group.tail[0].hidden_until - EXPIRY_MARGIN <= now:
                    expired += group.tail
                    group.tail.clear()
                if not group.tail:
                    self._forget(key)
                    continue
                waiting = group.tail.popleft()
                self._out(key, group, (waiting.pointer.id, token), now)
                taken.append(waiting)
        return taken, expired

    def _forget(self, key: GroupKey) -> _Group:
        """The group is the broker's again: its next message (if any) is
        there, for a receive to bring (see `freed`)."""
        self.freed = True
        return self._groups.pop(key)

    def _out(self, key: GroupKey, group: _Group, head: HeadKey, now: float) -> None:
        group.head, group.seen_at = head, now
        self._heads[head] = key

    def is_head(self, job_id: str, token: str) -> bool:
        with self._lock:
            return (job_id, token) in self._heads

    def beaten(self, heads: Iterable[HeadKey]) -> None:
        """These heads' leases were renewed: their tails are still wanted."""
        now = time.monotonic()
        with self._lock:
            for head in heads:
                key = self._heads.get(head)
                if key is not None:
                    self._groups[key].seen_at = now

    def settled(self, job_id: str, token: str) -> bool:
        """The head's message is gone from the broker: the group's next one
        is ready here, or the broker has it. True when it was a head."""
        now = time.monotonic()
        with self._lock:
            key = self._heads.pop((job_id, token), None)
            if key is None:
                return False
            group = self._groups[key]
            group.head, group.seen_at = None, now
            if not group.tail:
                self._forget(key)
            return True

    def back(self, job_id: str, token: str) -> list[Waiting]:
        """The head's message went back to the broker (or its lease was
        lost): its tail goes back too, in order."""
        with self._lock:
            key = self._heads.pop((job_id, token), None)
            if key is None:
                return []
            return list(self._forget(key).tail)

    def back_of_claim(self, token: str) -> list[Waiting]:
        """`back` for every head handed out under `token` (a lost claim)."""
        with self._lock:
            heads = [head for head in self._heads if head[1] == token]
        return [w for head in heads for w in self.back(*head)]

    def held(self) -> list[Waiting]:
        """Every message held (to keep hidden)."""
        with self._lock:
            return [w for g in self._groups.values() for w in g.tail]

    def extended(self, waiting: Iterable[Waiting], hidden: float) -> None:
        until = time.monotonic() + hidden
        for w in waiting:
            w.hidden_until = until

    def overdue(self, lease: float) -> list[Waiting]:
        """Tails of heads not renewed nor settled within `lease` (their
        worker is gone, or its lease lost), and ready messages no claim took
        within it (this process's workers are busy or stopped): given up, to
        go back to the broker for any worker."""
        cutoff = time.monotonic() - lease
        with self._lock:
            stale = [k for k, g in self._groups.items() if g.seen_at < cutoff]
            out: list[Waiting] = []
            for key in stale:
                group = self._forget(key)
                if group.head is not None:
                    del self._heads[group.head]
                out += group.tail
            return out

    def release_ready(self) -> list[Waiting]:
        """The messages of groups with no head out (a stopping worker's): to
        go back to the broker. Tails behind a head out stay with the head."""
        with self._lock:
            idle = [k for k, g in self._groups.items() if g.head is None]
            return [w for key in idle for w in self._forget(key).tail]

    def clear(self) -> None:
        with self._lock:
            self._groups.clear()
            self._heads.clear()
