"""`redis://` and `rediss://`: the Redis backend (see backend.py; its Lua is in lua/)."""

from conveyor.backends.redis.backend import RedisBackend

__all__ = ["RedisBackend"]
