"""Following Redis Cluster's redirections (and a Sentinel master's demotion),
the part of `RespClient` that runs when a reply is one of:

  MOVED <slot> <host:port>  the slot lives on another node now: talk to that
                            node from now on;
  ASK <slot> <host:port>    the slot is being migrated to that node and the
                            command's key has left: send `ASKING` and the
                            command to it, this once;
  TRYAGAIN                  a multi-key command whose keys are split between
                            the two nodes of a migration: wait and send again;
  READONLY                  (Sentinel only) the master was demoted: find the
                            master anew and send again.

All of conveyor's keys share one hash tag, so one slot and one node hold them
all. During a migration of that slot, commands on single keys follow ASK;
what touches several keys (a MULTI, a script) runs only where all the keys
are, as Redis requires: a MULTI whose keys have all left, and a script once
the source node holds none of the slot's keys (a script's keys are not
declared to Redis, so it cannot tell), go to the target; otherwise the client
waits for the migration to move on, for up to `migration_wait` seconds.

A pipeline is redone in units: a MULTI ... EXEC block, or one command.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import hiredis

from conveyor.backends.redis.url import RedisURL
from conveyor.backends.redis.wire import Arg, Protocol, RedisConnectionLost, RedisReplyError

logger = logging.getLogger("conveyor.redis")

_SCRIPTS = ("EVALSHA", "EVAL")
_MAX_HOPS = 5  # MOVED or READONLY in a row: a cluster or a failover that does not settle


def units(commands: Sequence[Sequence[Arg]]) -> list[range]:
    """The commands' indexes, cut into MULTI ... EXEC blocks and single commands."""
    out: list[range] = []
    start: int | None = None
    for index, command in enumerate(commands):
        name = str(command[0]).upper()
        if start is None and name == "MULTI":
            start = index
        elif start is not None and name in ("EXEC", "DISCARD"):
            out.append(range(start, index + 1))
            start = None
        elif start is None:
            out.append(range(index, index + 1))
    if start is not None:
        out.append(range(start, len(commands)))
    return out


class Redirects(abc.ABC):
    """The redirection side of `RespClient` (its base class)."""

    settings: RedisURL
    migration_wait: float

    @abc.abstractmethod
    async def _connection(self) -> Protocol: ...

    @abc.abstractmethod
    async def _node(self, address: tuple[str, int]) -> Protocol: ...

    @abc.abstractmethod
    async def _send(
        self, protocol: Protocol, commands: Sequence[Sequence[Arg]], wait: float
    ) -> list[Any]: ...

    @abc.abstractmethod
    def _move_to(self, address: tuple[str, int] | None) -> None:
        """Talk to `address` from now on (None: ask the sentinels again)."""

    def _redirection(self, reply: Any) -> str | None:
        if not isinstance(reply, hiredis.ReplyError):
            return None
        kind = str(reply).split(" ", 1)[0]
        if kind in ("MOVED", "ASK", "TRYAGAIN"):
            return kind
        if kind == "READONLY" and self.settings.sentinels:
            return kind
        return None

    async def _redirected(
        self, commands: Sequence[Sequence[Arg]], replies: list[Any], wait: float
    ) -> list[Any]:
        """The replies once every redirection is followed; RedisReplyError for
        the first other error reply."""
        replies = list(replies)
        hops = 0
        deadline: float | None = None
        while True:
            pending = [u for u in units(commands) if any(self._redirection(replies[i]) for i in u)]
            if not pending:
                for reply in replies:
                    if isinstance(reply, hiredis.ReplyError):
                        raise RedisReplyError(str(reply))
                return replies
            redirects = [
                str(replies[i]) for u in pending for i in u if self._redirection(replies[i])
            ]
            moved = next((m for m in redirects if m.startswith("MOVED ")), None)
            if moved is not None or any(m.startswith("READONLY") for m in redirects):
                hops += 1
                if hops > _MAX_HOPS:
                    raise RedisConnectionLost(f"redirected {_MAX_HOPS} times, last: {redirects[0]}")
                if moved is not None:
                    host, _, port = moved.split()[2].rpartition(":")
                    logger.info("Redis cluster: following MOVED to %s:%s", host, port)
                    self._move_to((host or self.settings.host, int(port)))
                else:
                    logger.warning("Redis: the master was demoted; asking the sentinels again")
                    self._move_to(None)
                retry = pending
            else:
                retry = []
                for unit in pending:
                    target = await self._ask_target(commands, replies, unit)
                    if target is None:
                        retry.append(unit)
                        continue
                    sent = [("ASKING",), *(commands[i] for i in unit)]
                    answered = await self._send(await self._node(target), sent, wait)
                    replies[unit.start : unit.stop] = answered[1:]
                if retry:
                    # Keys split between the two nodes, or the handover not
                    # done yet: wait for the migration to move on.
                    now = time.monotonic()
                    deadline = deadline or now + self.migration_wait
                    if now > deadline:
                        raise RedisConnectionLost(
                            "the Redis Cluster slot of this app is being migrated, and a "
                            "command on several of its keys cannot run until the migration "
                            f"ends (waited {self.migration_wait:g} s)"
                        )
                    await asyncio.sleep(0.05)
            if retry:
                protocol = await self._connection()
                again = await self._send(protocol, [commands[i] for u in retry for i in u], wait)
                for unit in retry:
                    replies[unit.start : unit.stop] = again[: len(unit)]
                    again = again[len(unit) :]

    async def _ask_target(
        self, commands: Sequence[Sequence[Arg]], replies: list[Any], unit: range
    ) -> tuple[str, int] | None:
        """Where a unit answered with ASK can run now, or None to wait."""
        messages = [str(replies[i]) for i in unit if self._redirection(replies[i])]
        if any(m.startswith("TRYAGAIN") for m in messages):
            return None
        if any(replies[i] == "QUEUED" for i in unit):
            return None  # a MULTI with keys on both nodes: neither can run it
        _, slot, address = messages[0].split()
        if any(str(commands[i][0]).upper() in _SCRIPTS for i in unit):
            source = await self._connection()
            (left,) = await self._send(source, [("CLUSTER", "COUNTKEYSINSLOT", slot)], 0.0)
            if left != 0:
                return None
        host, _, port = address.rpartition(":")
        return host or self.settings.host, int(port)
