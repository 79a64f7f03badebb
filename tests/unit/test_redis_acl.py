"""ACL users (issue 8, point 8): `redis://user:password@host` sends
`AUTH user password`, `redis://:password@host` sends `AUTH password`, against
a redis-server this test starts, whose default user needs a password; a wrong
password is a BackendUnavailableError naming the URL with the password masked."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from availability import free_port

from conveyor import BackendUnavailableError, Conveyor, JobState

pytestmark = pytest.mark.redis

ADMIN_PASSWORD = "admin-pa55"
ALICE_PASSWORD = "alice-s3cret"


def _ask(port: int, *commands: bytes) -> bytes:
    """Raw RESP inline commands, the replies' text (one line each)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"".join(c + b"\r\n" for c in commands))
        reply = b""
        deadline = time.monotonic() + 5
        while reply.count(b"\r\n") < len(commands) and time.monotonic() < deadline:
            reply += sock.recv(4096)
        return reply


@pytest.fixture
def acl_server(tmp_path: Path) -> Iterator[int]:
    """A redis-server whose default user has a password, with the ACL user
    alice; its port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server binary on PATH")
    port = free_port()
    process = subprocess.Popen(
        [
            *(binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
            *("--dir", str(tmp_path), "--requirepass", ADMIN_PASSWORD),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        auth = f"AUTH {ADMIN_PASSWORD}".encode()
        deadline = time.monotonic() + 10
        while True:
            try:
                if _ask(port, auth).startswith(b"+OK"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail("redis-server did not come up")
            time.sleep(0.05)
        setuser = f"ACL SETUSER alice on >{ALICE_PASSWORD} ~* &* +@all".encode()
        assert _ask(port, auth, setuser) == b"+OK\r\n+OK\r\n"
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


async def _run_one_job(url: str) -> None:
    app = Conveyor(url)
    ran: list[Any] = []

    @app.job("t")
    async def t(payload: Any) -> None:
        ran.append(payload)

    await app.open()
    try:
        await app.enqueue("t", {"n": 1})
        (done,) = await app.drain()
        assert done.state is JobState.COMPLETED and ran == [{"n": 1}]
        assert (await app.stats())["default"]["completed"] == 1
    finally:
        await app.close()


async def test_an_acl_user_authenticates(acl_server: int) -> None:
    # The default user needs ADMIN_PASSWORD, so only `AUTH alice <hers>` lets this work.
    await _run_one_job(f"redis://alice:{ALICE_PASSWORD}@127.0.0.1:{acl_server}/1?prefix=acl")


async def test_a_password_alone_authenticates_the_default_user(acl_server: int) -> None:
    await _run_one_job(f"redis://:{ADMIN_PASSWORD}@127.0.0.1:{acl_server}/0?prefix=acl")


@pytest.mark.parametrize("user", ["alice", ""])
async def test_a_wrong_password_names_the_url_with_the_password_masked(
    acl_server: int, user: str
) -> None:
    app = Conveyor(f"redis://{user}:n0t-the-pa55word@127.0.0.1:{acl_server}/0")
    try:
        with pytest.raises(BackendUnavailableError) as raised:
            await app.open()
    finally:
        await app.close()
    message = str(raised.value)
    assert f"redis://{user}:***@127.0.0.1:{acl_server}/0" in message
    assert "WRONGPASS" in message
    assert "n0t-the-pa55word" not in message


async def test_no_password_where_one_is_needed_says_so(acl_server: int) -> None:
    app = Conveyor(f"redis://127.0.0.1:{acl_server}/0")
    try:
        with pytest.raises(BackendUnavailableError, match=f"127.0.0.1:{acl_server}.*NOAUTH"):
            await app.stats()
    finally:
        await app.close()
