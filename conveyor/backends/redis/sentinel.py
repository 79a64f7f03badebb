"""Redis Sentinel: which server is the master of a service now.

The client asks before every connection it makes (so after a failover the
next reconnect finds the new master), then checks with ROLE that the server
it reached is a master: a sentinel's answer can lag a failover.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import hiredis

from conveyor.backends.redis.url import RedisURL
from conveyor.backends.redis.wire import RedisConnectionLost, open_connection, pack

logger = logging.getLogger("conveyor.redis")


async def _ask(settings: RedisURL, sentinel: tuple[str, int], timeout: float) -> Any:
    protocol = await open_connection(sentinel, settings.ssl_context, timeout)
    try:
        async with asyncio.timeout(timeout):
            command = ("SENTINEL", "get-master-addr-by-name", settings.service or "")
            (reply,) = await protocol.send(pack(command), 1)
            return reply
    finally:
        protocol.shut()


async def find_master(settings: RedisURL, timeout: float) -> tuple[str, int]:
    """The (host, port) of the master, from the first sentinel that knows it."""
    failures = []
    for host, port in settings.sentinels:
        try:
            reply = await _ask(settings, (host, port), timeout)
        except (RedisConnectionLost, TimeoutError) as exc:
            failures.append(f"{host}:{port}: {exc or 'no reply'}")
            continue
        if isinstance(reply, hiredis.ReplyError):
            failures.append(f"{host}:{port} answered {reply}")
        elif reply is None:
            failures.append(f"{host}:{port} monitors no master named {settings.service!r}")
        else:
            master = (str(reply[0]), int(reply[1]))
            logger.debug("sentinel %s:%s: the master is %s:%s", host, port, *master)
            return master
    raise RedisConnectionLost(
        f"no sentinel gave the address of the master of {settings.service!r}: "
        + "; ".join(failures)
    )


def role_problem(reply: Any, master: tuple[str, int], service: str) -> str | None:
    """Why the server at `master` is not the master (its ROLE reply), or None."""
    if isinstance(reply, hiredis.ReplyError):
        return f"ROLE failed on {master[0]}:{master[1]}: {reply}"
    role = reply[0] if reply else "?"
    if role == "master":
        return None
    return (
        f"{master[0]}:{master[1]}, named by the sentinels as the master of {service!r}, "
        f"is a {role}: a failover may be under way"
    )
