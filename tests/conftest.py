"""Fixtures shared by every test directory.

The backend matrix lives here so that the conformance suite and the
model-based property test run over exactly the same backends.

Adding a backend (redis, postgresql, sqs, ...) takes two steps:

1. one `pytest.param("<name>", marks=pytest.mark.<name>)` in `BACKENDS`
   (and the marker in pyproject.toml), and
2. one fixture named `<name>_urls` returning a callable that gives a fresh,
   isolated URL each time it is called (a new file, a new database number,
   a unique prefix...). It must skip with a printed reason when the backend
   cannot be had, except under CI, where it fails (DESIGN section 4): use
   `require_backend()`.

Backends are resolved lazily, aiocache style: `backend_urls` asks pytest for
the `<name>_urls` fixture of the param being run only, so a test selected with
`-m memory` never touches SQLite (or a server).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import schema_makers
from availability import free_port, http_answers, require_backend, unavailable
from google_emulators import (  # noqa: F401  (fixtures, found by name)
    cloudtasks_emulator,
    cloudtasks_emulator_host,
    free_ports,
    pubsub_bare_urls,
    pubsub_emulator,
    pubsub_ordered_urls,
    pubsub_urls,
)

from conveyor import settings

BACKENDS = [
    pytest.param("memory", marks=pytest.mark.memory),
    pytest.param("sqlite", marks=pytest.mark.sqlite),
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("postgres", marks=pytest.mark.postgres),
    # SQS on moto's server: standard and FIFO queues, with a store (SQLite
    # for standard, Redis for FIFO: two kinds of store) and without one.
    pytest.param("sqs", marks=pytest.mark.sqs),
    pytest.param("sqs_fifo", marks=[pytest.mark.sqs, pytest.mark.sqs_fifo]),
    pytest.param("sqs_bare", marks=pytest.mark.sqs),
    pytest.param("sqs_fifo_bare", marks=[pytest.mark.sqs, pytest.mark.sqs_fifo]),
    # Pub/Sub on gcloud's emulator: with a SQLite store and without one, and
    # ordered (ordering keys: a queue's jobs in order, jobs of a group=
    # one at a time) with a Redis store.
    pytest.param("pubsub", marks=pytest.mark.pubsub),
    pytest.param("pubsub_bare", marks=pytest.mark.pubsub),
    pytest.param("pubsub_ordered", marks=pytest.mark.pubsub),
    # BullMQ's layout and scripts on the test Redis (conveyor/backends/bullmq).
    pytest.param("bullmq", marks=pytest.mark.bullmq),
]

# Locks and the cache on a backend of their own, "<jobs>/<locks and cache>":
# Conveyor(jobs URL, locks_url=..., cache_url=...). Tests marked
# `split_services` (the locks and cache suites) run on these as well.
SPLIT_SERVICES = [
    pytest.param("sqlite/redis", marks=[pytest.mark.sqlite, pytest.mark.redis]),
    pytest.param("sqlite/postgres", marks=[pytest.mark.sqlite, pytest.mark.postgres]),
    # The issue's example, and the one split that proves the services' own
    # backend is used: SQS without a store has no locks or cache, so a call
    # that fell back to the jobs backend fails here (on the two above, whose
    # jobs backend holds both, it would pass unnoticed). About 25 s of moto.
    pytest.param("sqs_bare/redis", marks=[pytest.mark.sqs, pytest.mark.redis]),
]


@pytest.fixture(autouse=True)
def _clean_conveyor_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the app, the worker and the CLI read: a developer's shell must not
    # change what the tests see.
    for name in settings.BEHAVIOUR:
        monkeypatch.delenv(name, raising=False)


# --------------------------------------------------------------------------- backends


@pytest.fixture
def memory_urls() -> Callable[[], str]:
    require_backend("memory", "conveyor.backends.memory")
    # Every Conveyor("memory://") builds its own store, so each URL is isolated.
    return lambda: "memory://"


@pytest.fixture
def sqlite_urls(tmp_path: Path) -> Callable[[], str]:
    require_backend("sqlite", "conveyor.backends.sqlite")
    counter = itertools.count()

    def fresh() -> str:
        n = next(counter)
        name = "jobs.db" if n == 0 else f"jobs-{n}.db"
        return f"sqlite:///{tmp_path}/{name}"

    return fresh


def _redis_answers(url: str) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    """$CONVEYOR_TEST_REDIS_URL, else the default local port, else a server
    started from the redis-server binary on PATH; None when none can be had."""
    try:
        import redis  # noqa: F401
    except ImportError:
        yield None
        return
    candidates = [settings.env_str(settings.CONVEYOR_TEST_REDIS_URL), "redis://127.0.0.1:6379/15"]
    for url in candidates:
        if url and _redis_answers(url):
            yield url
            return
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not _redis_answers(url):
        time.sleep(0.05)
    try:
        yield url if _redis_answers(url) else None
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def redis_urls(redis_server_url: str | None) -> Iterator[Callable[[], str]]:
    require_backend("redis", "conveyor.backends.redis")
    if redis_server_url is None:
        unavailable("redis backend unavailable: no Redis server answers and none could be started")
    assert redis_server_url is not None
    prefixes: list[str] = []

    def fresh() -> str:
        # A key prefix of its own per URL isolates tests sharing one server.
        prefix = f"test-{uuid.uuid4().hex[:12]}"
        prefixes.append(prefix)
        return f"{redis_server_url}?prefix={prefix}"

    yield fresh
    delete_keys(redis_server_url, [f"{{{prefix}}}*" for prefix in prefixes])


def delete_keys(server_url: str, patterns: list[str]) -> None:
    """Delete the keys matching `patterns` (a test's own prefixes)."""
    import redis

    client = redis.Redis.from_url(server_url)
    try:
        for pattern in patterns:
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def bullmq_urls(redis_server_url: str | None) -> Iterator[Callable[[], str]]:
    """bullmq:// URLs on the test Redis, each under a BullMQ prefix of its own."""
    require_backend("bullmq", "conveyor.backends.bullmq")
    if redis_server_url is None:
        unavailable("bullmq backend unavailable: no Redis server answers and none could be started")
    assert redis_server_url is not None
    server = redis_server_url.removeprefix("redis://")
    prefixes: list[str] = []

    def fresh() -> str:
        prefix = f"bulltest-{uuid.uuid4().hex[:12]}"
        prefixes.append(prefix)
        return f"bullmq://{server}?queue=default&prefix={prefix}"

    yield fresh
    # BullMQ's keys, and conveyor's own beside them (schedules, locks...).
    patterns = [p for prefix in prefixes for p in (f"{prefix}:*", f"{{{prefix}:conveyor}}*")]
    delete_keys(redis_server_url, patterns)


def _postgres_answers(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except Exception:
        return False


def _start_postgres(workdir: Path) -> tuple[str, subprocess.Popen[bytes]] | None:
    """A throwaway cluster from initdb/postgres on PATH (or Debian's
    versioned bin directory), trust auth on a free loopback port."""
    bins = [Path(p).parent for p in [shutil.which("initdb")] if p]
    bins += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for folder in bins:
        initdb, postgres = folder / "initdb", folder / "postgres"
        if initdb.exists() and postgres.exists():
            break
    else:
        return None
    data = workdir / "data"
    subprocess.run(
        [str(initdb), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    port = free_port()
    process = subprocess.Popen(
        [
            *(str(postgres), "-D", str(data), "-p", str(port)),
            *("-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={workdir}"),
            *("-c", "fsync=off"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return f"postgresql://postgres@127.0.0.1:{port}/postgres", process


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    """$CONVEYOR_TEST_POSTGRES_URL, else the local server's database `test`,
    else a cluster started from the PostgreSQL binaries; None when none can
    be had."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        yield None
        return
    candidates = [
        settings.env_str(settings.CONVEYOR_TEST_POSTGRES_URL),
        "postgresql://postgres@127.0.0.1:5432/test",
    ]
    for url in candidates:
        if url and _postgres_answers(url):
            yield url
            return
    if os.geteuid() == 0:  # initdb refuses to run as root
        yield None
        return
    started = _start_postgres(tmp_path_factory.mktemp("postgres"))
    if started is None:
        yield None
        return
    url, process = started
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not _postgres_answers(url):
        time.sleep(0.1)
    try:
        yield url if _postgres_answers(url) else None
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture
def postgres_urls(postgres_server_url: str | None) -> Iterator[Callable[[], str]]:
    require_backend("postgres", "conveyor.backends.postgres")
    if postgres_server_url is None:
        unavailable("postgres backend unavailable: no PostgreSQL server answers")
    assert postgres_server_url is not None
    schemas: list[str] = []

    made_by = os.environ.get(schema_makers.ENV_VAR)

    def fresh() -> str:
        # A schema of its own per URL isolates tests sharing one database.
        schema = f"test_{uuid.uuid4().hex[:12]}"
        schemas.append(schema)
        joiner = "&" if "?" in postgres_server_url else "?"
        url = f"{postgres_server_url}{joiner}schema={schema}"
        if made_by:  # by the application's migrations: the backend must find it ready
            schema_makers.make_schema(made_by, postgres_server_url, schema)
            url += "&migrate=false"
        return url

    yield fresh
    import psycopg

    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(scope="session")
def sqs_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    """$CONVEYOR_TEST_SQS_ENDPOINT, else a moto server started here (its
    server mode: real HTTP on loopback); None when moto is not installed."""
    # moto accepts any credentials; the AWS chain needs some to sign with.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    given = settings.env_str(settings.CONVEYOR_TEST_SQS_ENDPOINT)
    if given:
        yield given
        return
    try:
        import moto.server  # noqa: F401
    except ImportError:
        yield None
        return
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not http_answers(url):
        time.sleep(0.1)
    try:
        yield url if http_answers(url) else None
    finally:
        process.terminate()
        process.wait(timeout=10)


def _sqs_maker(
    endpoint: str | None, fifo: bool, store: Callable[[], str] | None
) -> Callable[[], str]:
    require_backend("sqs", "conveyor.backends.sqs")
    require_backend("sqs", "aiobotocore")
    if endpoint is None:
        unavailable("sqs backend unavailable: moto is not installed (pip install 'moto[server]')")
    assert endpoint is not None

    def fresh() -> str:
        queue = f"t{uuid.uuid4().hex[:16]}" + (".fifo" if fifo else "")
        url = f"sqs://{queue}?region=us-east-1&endpoint_url={endpoint}&create=true"
        return url + (f"&store={store()}" if store is not None else "")

    return fresh


@pytest.fixture
def sqs_urls(sqs_endpoint: str | None, sqlite_urls: Callable[[], str]) -> Callable[[], str]:
    return _sqs_maker(sqs_endpoint, False, sqlite_urls)


@pytest.fixture
def sqs_fifo_urls(sqs_endpoint: str | None, redis_urls: Callable[[], str]) -> Callable[[], str]:
    return _sqs_maker(sqs_endpoint, True, redis_urls)


@pytest.fixture
def sqs_bare_urls(sqs_endpoint: str | None) -> Callable[[], str]:
    return _sqs_maker(sqs_endpoint, False, None)


@pytest.fixture
def sqs_fifo_bare_urls(sqs_endpoint: str | None) -> Callable[[], str]:
    return _sqs_maker(sqs_endpoint, True, None)


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # A test marked `split_services` takes its backend_name from BACKENDS and
    # SPLIT_SERVICES, by direct parametrization, which pytest lets win over
    # the fixture's params (first, so that the parametrize plugins see it).
    definition = metafunc.definition
    if "backend_name" in metafunc.fixturenames and definition.get_closest_marker("split_services"):
        definition.add_marker(pytest.mark.parametrize("backend_name", [*BACKENDS, *SPLIT_SERVICES]))


@pytest.fixture
def backend_urls(request: pytest.FixtureRequest, backend_name: str) -> Callable[[], str]:
    """A maker of fresh URLs for the backend under test (resolved lazily);
    under a split configuration, of its jobs backend."""
    jobs = backend_name.partition("/")[0]
    maker: Callable[[], str] = request.getfixturevalue(f"{jobs}_urls")
    return maker


@pytest.fixture
def service_urls(request: pytest.FixtureRequest, backend_name: str) -> dict[str, str]:
    """The `Conveyor(...)` arguments of the locks' and cache's own backend
    under a split configuration (one fresh URL for both), else none."""
    _, split, services = backend_name.partition("/")
    if not split:
        return {}
    url: str = request.getfixturevalue(f"{services}_urls")()
    return {"locks_url": url, "cache_url": url}


@pytest.fixture
def backend_url(backend_urls: Callable[[], str]) -> Iterator[str]:
    """One fresh URL of the backend under test."""
    yield backend_urls()
