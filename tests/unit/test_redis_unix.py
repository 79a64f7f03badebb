"""unix:///path/to/redis.sock?db=N&prefix=P reaches Redis over its unix socket
(issue 8, point 8), against a redis-server this test starts with no TCP port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, InvalidOptionError, JobState
from conveyor.backends.redis.url import RedisURL

pytestmark = pytest.mark.redis


def _answers(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(1)
            sock.connect(str(path))
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def redis_socket(tmp_path: Path) -> Iterator[Path]:
    """A redis-server listening on a unix socket only (--port 0)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server binary on PATH")
    path = tmp_path / "redis.sock"
    process = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(path), "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not _answers(path):
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail("redis-server did not come up on its unix socket")
            time.sleep(0.05)
        yield path
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_unix_url_is_parsed() -> None:
    settings = RedisURL("unix:///run/redis/redis.sock?db=3")
    assert (settings.unix_path, settings.db) == ("/run/redis/redis.sock", 3)
    assert settings.display() == "unix:///run/redis/redis.sock?db=3"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("unix:///tmp/r.sock?db=x", r"database in .* must be a number"),
        ("unix:///tmp/r.sock?prefx=typo", r"option\(s\) 'prefx' in .*; known: db, prefix"),
        ("unix://?db=0", r"needs the socket's path"),
    ],
)
def test_a_bad_unix_url_is_refused(url: str, message: str) -> None:
    with pytest.raises(InvalidOptionError, match=message):
        Conveyor(url)


async def test_jobs_run_over_a_unix_socket(redis_socket: Path) -> None:
    app = Conveyor(f"unix://{redis_socket}?db=2&prefix=unixtest")
    ran: list[Any] = []

    @app.job("t")
    async def t(payload: Any) -> None:
        ran.append(payload)

    await app.open()
    try:
        job = await app.enqueue("t", {"n": 1})
        assert (await app.stats())["default"]["queued"] == 1
        (done,) = await app.drain()
        assert done.id == job.id and done.state is JobState.COMPLETED
        assert ran == [{"n": 1}]
        assert (await app.stats())["default"]["completed"] == 1
    finally:
        await app.close()
    # db=2 was used, not db 0: the jobs' keys are in database 2.
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(redis_socket))
        sock.sendall(b"SELECT 2\r\nDBSIZE\r\nSELECT 0\r\nDBSIZE\r\n")
        deadline = time.monotonic() + 5
        reply = b""
        while reply.count(b"\r\n") < 4 and time.monotonic() < deadline:
            reply += sock.recv(1024)
    _, size2, _, size0 = reply.split(b"\r\n")[:4]
    assert int(size2[1:]) > 0 and size0 == b":0"
