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

import fcntl
import importlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import schema_makers

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
    # (Jobs on SQS with locks and the cache elsewhere: tests/unit/test_services.py;
    # here a new SQS queue per test would add a minute to the suite.)
    pytest.param("sqlite/redis", marks=[pytest.mark.sqlite, pytest.mark.redis]),
    pytest.param("sqlite/postgres", marks=[pytest.mark.sqlite, pytest.mark.postgres]),
]


@pytest.fixture(autouse=True)
def _clean_conveyor_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the app, the worker and the CLI read: a developer's shell must not
    # change what the tests see.
    for name in settings.BEHAVIOUR:
        monkeypatch.delenv(name, raising=False)


def unavailable(reason: str) -> None:
    """Skip with the reason, or fail when $CI is set (DESIGN section 4)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)")
    pytest.skip(reason)


def require_backend(name: str, module: str) -> None:
    """Skip (or, when $CI is set, fail) unless `module` imports cleanly."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # ImportError, or a half-written module's SyntaxError
        reason = f"{name} backend unavailable: cannot import {module}: {type(exc).__name__}: {exc}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)")
        pytest.skip(reason)


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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
    port = _free_port()
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
    port = _free_port()
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


def _http_answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except Exception as exc:  # an HTTP error status still means a server answered
        return hasattr(exc, "code")


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
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _http_answers(url):
        time.sleep(0.1)
    try:
        yield url if _http_answers(url) else None
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


def _pubsub_answers(host: str) -> bool:
    # The emulator answers plain HTTP on its gRPC port ("Ok" at /).
    return _http_answers(f"http://{host}/")


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """Stop a process started in a session of its own, with all it started
    (gcloud runs the emulator as a Java child)."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            process.poll()  # reaps gcloud; its Java child is init's to reap
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
    process.wait(timeout=5)


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    """$CONVEYOR_TEST_PUBSUB_EMULATOR_HOST, else gcloud's Pub/Sub emulator
    started here on a free loopback port (Java: a few seconds), as host:port;
    None when gcloud or java is missing or it does not come up."""
    given = settings.env_str(settings.CONVEYOR_TEST_PUBSUB_EMULATOR_HOST)
    if given:
        yield given
        return
    gcloud = shutil.which("gcloud")
    if gcloud is None or shutil.which("java") is None:
        yield None
        return
    workdir = tmp_path_factory.mktemp("pubsub")
    host = f"127.0.0.1:{_free_port()}"
    env = {
        **os.environ,
        # A configuration of its own (the emulator keeps its data there), and
        # no update checks or usage reports: only loopback traffic.
        "CLOUDSDK_CONFIG": str(workdir / "gcloud"),
        "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true",
        "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "true",
    }
    with open(workdir / "emulator.log", "wb") as out:
        process = subprocess.Popen(
            [gcloud, "beta", "emulators", "pubsub", "start", f"--host-port={host}", "--quiet"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group, so its Java child stops with it
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None and not _pubsub_answers(host):
        time.sleep(0.2)
    try:
        yield host if _pubsub_answers(host) else None
    finally:
        _stop_group(process)


@pytest.fixture
def pubsub_bare_urls(pubsub_emulator: str | None) -> Callable[[], str]:
    """Fresh `pubsub://` URLs on the emulator: a topic of their own each,
    created on first use."""
    require_backend("pubsub", "conveyor.backends.pubsub")
    require_backend("pubsub", "google.pubsub_v1")
    if pubsub_emulator is None:
        unavailable(
            "pubsub unavailable: no Pub/Sub emulator (set CONVEYOR_TEST_PUBSUB_EMULATOR_HOST, "
            "or install gcloud's pubsub-emulator component and java)"
        )

    def fresh() -> str:
        topic = f"t{uuid.uuid4().hex[:16]}"
        return f"pubsub://conveyor-test/{topic}?create=true&emulator={pubsub_emulator}"

    return fresh


@pytest.fixture
def pubsub_urls(
    pubsub_bare_urls: Callable[[], str], sqlite_urls: Callable[[], str]
) -> Callable[[], str]:
    """The same with a SQLite store of their own."""
    return lambda: f"{pubsub_bare_urls()}&store={sqlite_urls()}"


@pytest.fixture
def pubsub_ordered_urls(
    pubsub_bare_urls: Callable[[], str], redis_urls: Callable[[], str]
) -> Callable[[], str]:
    """Ordered subscriptions (ordering keys), with a Redis store of their own."""
    return lambda: f"{pubsub_bare_urls()}&ordered=true&store={redis_urls()}"


# --------------------------------------------------------------------------- Cloud Tasks
# The `gcloud-tasks-emulator` package from PyPI pins protobuf < 5, which our
# virtualenv cannot have, so it gets a virtualenv of its own, made on first
# use under the cache directory ($CONVEYOR_TEST_CACHE, else
# ~/.cache/conveyor-tests) and kept for the next runs.
# $CONVEYOR_TEST_CLOUDTASKS_EMULATOR_HOST names a running one instead.

EMULATOR = "gcloud-tasks-emulator==0.6.2"


def _cache_dir() -> Path:
    given = os.environ.get("CONVEYOR_TEST_CACHE")
    return Path(given) if given else Path.home() / ".cache" / "conveyor-tests"


def _emulator_venv() -> Path | str:
    """The emulator's command, installing it on first use; else why not."""
    venv = _cache_dir() / EMULATOR.replace("==", "-")
    command = venv / "bin" / "gcloud-tasks-emulator"
    try:
        venv.parent.mkdir(parents=True, exist_ok=True)
        # Several test processes may start at once: one installs, the others wait.
        with open(venv.parent / (venv.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if command.exists():
                return command
            steps = [
                [sys.executable, "-m", "venv", "--clear", str(venv)],
                [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", EMULATOR],
            ]
            for step in steps:
                done = subprocess.run(step, capture_output=True, text=True, timeout=600)
                if done.returncode != 0:
                    return f"{' '.join(step)} failed: {done.stderr.strip()[-500:]}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot install {EMULATOR} under {venv}: {exc}"
    return command


def _answers(host: str) -> bool:
    name, _, port = host.rpartition(":")
    try:
        with socket.create_connection((name, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def free_ports() -> Callable[[], int]:
    """A maker of free loopback ports (for servers a test starts itself)."""
    return _free_port


@pytest.fixture(scope="session")
def cloudtasks_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of a running emulator, or "!" and why there is none."""
    given = os.environ.get("CONVEYOR_TEST_CLOUDTASKS_EMULATOR_HOST")
    if given:
        yield given
        return
    command = _emulator_venv()
    if isinstance(command, str):
        yield "!" + command
        return
    port = _free_port()
    log = tmp_path_factory.mktemp("cloudtasks") / "emulator.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(command), "start", "-p", str(port), "-q"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    host = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None and not _answers(host):
        time.sleep(0.1)
    try:
        if _answers(host):
            yield host
        else:
            yield f"!the emulator did not start: {log.read_text(errors='replace')[-500:]}"
    finally:
        _stop_group(process)


@pytest.fixture
def cloudtasks_emulator_host(cloudtasks_emulator: str) -> str:
    require_backend("cloudtasks", "conveyor.backends.cloudtasks")
    if cloudtasks_emulator.startswith("!"):
        unavailable(f"cloudtasks unavailable: no Cloud Tasks emulator ({cloudtasks_emulator[1:]})")
    return cloudtasks_emulator


# --------------------------------------------------------------------------- the matrix


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
