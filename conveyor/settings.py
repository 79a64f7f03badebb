"""The `CONVEYOR_*` environment variables: every name in one place, what each
means, and typed readers whose errors name the variable.

An empty value counts as unset, so `CONVEYOR_QUEUES= conveyor worker ...`
falls back to the default instead of failing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Collection
from typing import Any, TypeVar

from conveyor.job import InvalidOptionError

T = TypeVar("T")

# --------------------------------------------------------------------------- the names

# The backend URL when code gives none (else sqlite:///conveyor.db); the CLI's --url.
CONVEYOR_URL = "CONVEYOR_URL"
# The backend of the locks when code gives no locks_url= (else the jobs backend).
CONVEYOR_LOCKS_URL = "CONVEYOR_LOCKS_URL"
# The backend of the cache when code gives no cache_url= (else the jobs backend).
CONVEYOR_CACHE_URL = "CONVEYOR_CACHE_URL"
# Jobs a worker runs at once (default 10).
CONVEYOR_CONCURRENCY = "CONVEYOR_CONCURRENCY"
# Jobs a worker claims ahead of free slots (default 0).
CONVEYOR_PREFETCH = "CONVEYOR_PREFETCH"
# Queues a worker serves, comma-separated (default: every queue its job types use).
CONVEYOR_QUEUES = "CONVEYOR_QUEUES"
# Seconds running jobs get to finish after SIGTERM (default 30).
CONVEYOR_SHUTDOWN_TIMEOUT = "CONVEYOR_SHUTDOWN_TIMEOUT"
# Whether a worker fires recurring schedules: true/false, yes/no, on/off, 1/0 (default on).
CONVEYOR_SCHEDULER = "CONVEYOR_SCHEDULER"
# A worker exits once its queues have nothing due and it runs nothing: true/false (default off).
CONVEYOR_BURST = "CONVEYOR_BURST"
# Seconds a claim holds a job without a heartbeat (default 30).
CONVEYOR_LEASE = "CONVEYOR_LEASE"
# Seconds between heartbeats (default min(lease / 3, 1)).
CONVEYOR_HEARTBEAT_INTERVAL = "CONVEYOR_HEARTBEAT_INTERVAL"
# Seconds between looks for expired leases (default min(lease / 2, 5)).
CONVEYOR_RECOVER_INTERVAL = "CONVEYOR_RECOVER_INTERVAL"
# Longest idle wait between claims, seconds (default 1): on SQS and Pub/Sub the
# long poll (SQS waits in whole seconds, up to 20; at most half the lease).
CONVEYOR_POLL_INTERVAL = "CONVEYOR_POLL_INTERVAL"
# Lease expiries a job survives before it fails (default 1).
CONVEYOR_MAX_STALLED = "CONVEYOR_MAX_STALLED"
# Threads of timed-out sync handlers tolerated before they take slots (default: concurrency).
CONVEYOR_MAX_ABANDONED_THREADS = "CONVEYOR_MAX_ABANDONED_THREADS"
# The CLI shows the full traceback of an error instead of one line.
CONVEYOR_DEBUG = "CONVEYOR_DEBUG"
# The shared secret Cloud Tasks' tasks carry (X-Conveyor-Secret) and the
# endpoint (conveyor.gcp.tasks_endpoint) requires, when set.
CONVEYOR_CLOUDTASKS_SECRET = "CONVEYOR_CLOUDTASKS_SECRET"
# How the worker command writes log lines: "text" (default) or "json".
CONVEYOR_LOG_FORMAT = "CONVEYOR_LOG_FORMAT"
# The port (and host) `conveyor worker` serves Prometheus metrics on.
CONVEYOR_METRICS_PORT = "CONVEYOR_METRICS_PORT"
# The dashboard's token: actions (retry, cancel, purge, pause...) need it;
# unset, the dashboard is read-only.
CONVEYOR_DASHBOARD_TOKEN = "CONVEYOR_DASHBOARD_TOKEN"
# USER:PASSWORD: basic auth guarding every page and route of the dashboard.
CONVEYOR_DASHBOARD_BASIC_AUTH = "CONVEYOR_DASHBOARD_BASIC_AUTH"
# The Redis server `conveyor bench --backends redis` measures (default redis://127.0.0.1:6379/0).
CONVEYOR_BENCH_REDIS_URL = "CONVEYOR_BENCH_REDIS_URL"
# The servers the test suite uses (else a default local port, else one it starts).
CONVEYOR_TEST_REDIS_URL = "CONVEYOR_TEST_REDIS_URL"
CONVEYOR_TEST_POSTGRES_URL = "CONVEYOR_TEST_POSTGRES_URL"
# alembic, django or dry-run: the tests' PostgreSQL schemas are made that way
# (tests/schema_makers.py) and opened with migrate=false.
CONVEYOR_TEST_POSTGRES_SCHEMA_BY = "CONVEYOR_TEST_POSTGRES_SCHEMA_BY"
# An SQS endpoint for the tests (else they start moto's server).
CONVEYOR_TEST_SQS_ENDPOINT = "CONVEYOR_TEST_SQS_ENDPOINT"
# A Pub/Sub emulator's host:port for the tests (else they start gcloud's).
CONVEYOR_TEST_PUBSUB_EMULATOR_HOST = "CONVEYOR_TEST_PUBSUB_EMULATOR_HOST"
# A Cloud Tasks emulator's host:port for the tests (else they start one).
CONVEYOR_TEST_CLOUDTASKS_EMULATOR_HOST = "CONVEYOR_TEST_CLOUDTASKS_EMULATOR_HOST"
# Where the dashboard's browser test saves its screenshots (else docs/screenshots).
CONVEYOR_TEST_SCREENSHOTS = "CONVEYOR_TEST_SCREENSHOTS"
# Where the tests keep what they install (the Cloud Tasks emulator's virtualenv).
CONVEYOR_TEST_CACHE = "CONVEYOR_TEST_CACHE"
# The chaos test's knobs (tests/acceptance/test_chaos.py): the seed of its
# choices (each run prints it, to replay), seconds of chaos per run, worker
# processes, their lease (seconds), and SQS's receive count before the
# dead-letter queue there.
CONVEYOR_CHAOS_SEED = "CONVEYOR_CHAOS_SEED"
CONVEYOR_CHAOS_SECONDS = "CONVEYOR_CHAOS_SECONDS"
CONVEYOR_CHAOS_WORKERS = "CONVEYOR_CHAOS_WORKERS"
CONVEYOR_CHAOS_LEASE = "CONVEYOR_CHAOS_LEASE"
CONVEYOR_CHAOS_SQS_MAX_RECEIVES = "CONVEYOR_CHAOS_SQS_MAX_RECEIVES"

# What changes how an app, a worker or the CLI behaves (the test suite clears
# these so a developer's shell cannot change what the tests see).
BEHAVIOUR = (
    CONVEYOR_URL,
    CONVEYOR_LOCKS_URL,
    CONVEYOR_CACHE_URL,
    CONVEYOR_CONCURRENCY,
    CONVEYOR_PREFETCH,
    CONVEYOR_QUEUES,
    CONVEYOR_SHUTDOWN_TIMEOUT,
    CONVEYOR_SCHEDULER,
    CONVEYOR_BURST,
    CONVEYOR_LEASE,
    CONVEYOR_HEARTBEAT_INTERVAL,
    CONVEYOR_RECOVER_INTERVAL,
    CONVEYOR_POLL_INTERVAL,
    CONVEYOR_MAX_STALLED,
    CONVEYOR_MAX_ABANDONED_THREADS,
    CONVEYOR_DEBUG,
    CONVEYOR_CLOUDTASKS_SECRET,
    CONVEYOR_DASHBOARD_TOKEN,
    CONVEYOR_DASHBOARD_BASIC_AUTH,
)


# --------------------------------------------------------------------------- typed readers


def env_str(name: str) -> str | None:
    """The variable's value, or None when it is unset or empty."""
    value = os.environ.get(name)
    return value if value else None


def env_int(name: str) -> int | None:
    return _read(name, int, "an integer")


def env_float(name: str) -> float | None:
    return _read(name, _finite_float, "a number of seconds")


def env_bool(name: str) -> bool | None:
    return _read(name, _parse_bool, "true or false (also yes/no, on/off, 1/0)")


def env_queues(name: str = CONVEYOR_QUEUES) -> tuple[str, ...] | None:
    return _read(name, split_queues, "queue names separated by commas")


def _read(name: str, parse: Callable[[str], T], expected: str) -> T | None:
    raw = env_str(name)
    if raw is None:
        return None
    try:
        return parse(raw.strip())
    except ValueError:
        raise InvalidOptionError(f"bad {name}={raw!r}: expected {expected}") from None


def _finite_float(raw: str) -> float:
    value = float(raw)
    if math.isnan(value):
        raise ValueError(raw)
    return value


def _parse_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def split_queues(raw: str) -> tuple[str, ...]:
    """Queue names separated by commas; ValueError when there is none."""
    queues = tuple(q.strip() for q in raw.split(",") if q.strip())
    if not queues:
        raise ValueError(raw)
    return queues


# --------------------------------------------------------------------------- the worker's share

# WorkerSettings field -> (variable, reader).
_WORKER_VARIABLES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "concurrency": (CONVEYOR_CONCURRENCY, env_int),
    "prefetch": (CONVEYOR_PREFETCH, env_int),
    "queues": (CONVEYOR_QUEUES, env_queues),
    "shutdown_timeout": (CONVEYOR_SHUTDOWN_TIMEOUT, env_float),
    "scheduler": (CONVEYOR_SCHEDULER, env_bool),
    "burst": (CONVEYOR_BURST, env_bool),
    "lease": (CONVEYOR_LEASE, env_float),
    "heartbeat_interval": (CONVEYOR_HEARTBEAT_INTERVAL, env_float),
    "recover_interval": (CONVEYOR_RECOVER_INTERVAL, env_float),
    "poll_interval": (CONVEYOR_POLL_INTERVAL, env_float),
    "max_stalled": (CONVEYOR_MAX_STALLED, env_int),
    "max_abandoned_threads": (CONVEYOR_MAX_ABANDONED_THREADS, env_int),
}


def worker_environment(given: Collection[str] = ()) -> dict[str, Any]:
    """The worker settings the environment sets, by WorkerSettings field name,
    leaving out the fields in `given` (code and flags win over the
    environment, so a bad variable they override is not even read)."""
    found: dict[str, Any] = {}
    for field, (name, read) in _WORKER_VARIABLES.items():
        if field in given:
            continue
        value = read(name)
        if value is not None:
            found[field] = value
    return found
