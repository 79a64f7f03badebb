"""conveyor's RESP client against redis-py's asyncio client, command by command.

    python benchmarks/redis_clients.py --url redis://127.0.0.1:6379/0 --seconds 3

Both clients run in the same process, on the same event loop, against the same
server, taking turns (a, b, a, b ...) so a noisy neighbour hurts both alike.
Measured, in round trips per second (higher is better):

  evalsha    one EVALSHA (a trivial script) awaited at a time
  ping       one PING awaited at a time
  pipe100    a pipeline of 100 INCRs, one round trip per pipeline
  blpop      BLPOP with a 0.01 s timeout on an empty list, one at a time
             (paced by the server's timeout: a check that blocking calls cost
             no more than they should, not a speed race)

redis-py runs with its hiredis parser (checked below). This is the command
level only; what the client choice means end to end (the backend's own code
on either client) is measured by benchmarks/redis_clients_e2e.py.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
from collections.abc import Awaitable, Callable

import redis
import redis.asyncio as aioredis
from redis.utils import HIREDIS_AVAILABLE

from conveyor.backends.redis.resp import RedisURL, RespClient

SCRIPT = "return ARGV[1]"
KEY = "{bench}:redis-clients"
EMPTY = "{bench}:redis-clients:empty"

Op = Callable[[], Awaitable[object]]


async def rate(op: Op, seconds: float) -> float:
    """Round trips per second of `op` run back to back for `seconds`."""
    for _ in range(20):  # warm up the connection and the caches
        await op()
    calls = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        await op()
        calls += 1
    return calls / (time.perf_counter() - started)


async def main(url: str, seconds: float, rounds: int) -> None:
    if not HIREDIS_AVAILABLE:
        sys.exit("redis-py does not see hiredis: pip install 'redis[hiredis]'")
    ours = RespClient(RedisURL(url))
    theirs = aioredis.Redis.from_url(url)
    sha = await ours.call("SCRIPT", "LOAD", SCRIPT)
    await ours.call("DEL", KEY, EMPTY)

    async def ours_pipe() -> object:
        return await ours.pipeline([("INCR", KEY)] * 100)

    async def theirs_pipe() -> object:
        pipe = theirs.pipeline(transaction=False)
        for _ in range(100):
            pipe.incr(KEY)
        return await pipe.execute()

    cases: dict[str, tuple[Op, Op]] = {
        "evalsha": (
            lambda: ours.call("EVALSHA", sha, 0, "x"),
            lambda: theirs.evalsha(sha, 0, "x"),
        ),
        "ping": (lambda: ours.call("PING"), lambda: theirs.ping()),
        "pipe100": (ours_pipe, theirs_pipe),
        "blpop": (
            lambda: ours.call("BLPOP", EMPTY, 0.01, wait=0.01),
            lambda: theirs.blpop([EMPTY], timeout=0.01),
        ),
    }
    print(f"redis-py {redis.__version__} (hiredis parser) vs conveyor resp.py, round trips/s")
    print(f"{'case':<9} {'conveyor/s':>12} {'redis-py/s':>12} {'conveyor÷redis-py':>18}")
    for name, (mine, other) in cases.items():
        best_mine = best_other = 0.0
        for _ in range(rounds):
            best_mine = max(best_mine, await rate(mine, seconds / rounds))
            best_other = max(best_other, await rate(other, seconds / rounds))
        print(
            f"{name:<9} {best_mine:>12,.0f} {best_other:>12,.0f} {best_mine / best_other:>17.2f}x"
        )
    await ours.call("DEL", KEY, EMPTY)
    await ours.aclose()
    await theirs.aclose()
    print("reproduce:", shlex.join(["python", *sys.argv]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--seconds", type=float, default=3.0, help="per case and client")
    parser.add_argument("--rounds", type=int, default=3, help="alternations; best one counts")
    args = parser.parse_args()
    asyncio.run(main(args.url, args.seconds, args.rounds))
