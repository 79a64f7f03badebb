"""The Google Cloud emulators the pubsub and cloudtasks tests run against,
started by session fixtures (conftest.py imports them)."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from availability import free_port, http_answers, require_backend, stop_group, unavailable

from conveyor import settings


def _pubsub_answers(host: str) -> bool:
    # The emulator answers plain HTTP on its gRPC port ("Ok" at /).
    return http_answers(f"http://{host}/")


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
    host = f"127.0.0.1:{free_port()}"
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
        stop_group(process)


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
    return free_port


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
    port = free_port()
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
        stop_group(process)


@pytest.fixture
def cloudtasks_emulator_host(cloudtasks_emulator: str) -> str:
    require_backend("cloudtasks", "conveyor.backends.cloudtasks")
    if cloudtasks_emulator.startswith("!"):
        unavailable(f"cloudtasks unavailable: no Cloud Tasks emulator ({cloudtasks_emulator[1:]})")
    return cloudtasks_emulator


# --------------------------------------------------------------------------- the matrix
