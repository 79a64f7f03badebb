"""`redis://` and `rediss://`: the Redis backend (see backend.py; its Lua is in lua/).

Modules: `backend` (the job operations), `stores` (schedules, locks, cache,
worker presence), `connection` (connections, scripts, shared key helpers:
the base class), `layout` (URL, key layout, scores), `rows` (script replies
to records, arguments to scripts), `resp` (the RESP client).
"""

from conveyor.backends.redis.backend import RedisBackend

__all__ = ["RedisBackend"]
