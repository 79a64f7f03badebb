"""`redis://`, `rediss://`, `unix://`, `redis+sentinel://` and
`rediss+sentinel://`: the Redis backend (see backend.py; its Lua is in lua/).

Modules: `backend` (the job operations), `stores` (schedules, locks, cache,
worker presence), `connection` (connections, scripts, shared key helpers:
the base class), `layout` (key layout, scores, conveyor's URL option),
`rows` (script replies to records, arguments to scripts), and the RESP
client: `resp` (the client), `url` (its settings), `wire` (the protocol),
`tls`, `sentinel`, `cluster` (redirections).
"""

from conveyor.backends.redis.backend import RedisBackend

__all__ = ["RedisBackend"]
