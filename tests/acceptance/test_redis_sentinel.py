"""redis+sentinel://: the backend asks Redis Sentinel for the master, checks
its ROLE, and finds the new master after a failover. Against a real master,
replica and sentinel (`redis-server --sentinel`) started by the test."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from availability import free_port

from conveyor import BackendUnavailableError, Conveyor, InvalidOptionError, JobState
from conveyor.backends.redis.url import RedisURL

pytestmark = [pytest.mark.slow, pytest.mark.redis]

SERVICE = "jobs-master"


def _client(port: int) -> redis.Redis:
    return redis.Redis(port=port, decode_responses=True, socket_timeout=5)


def _until(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except (redis.RedisError, OSError):
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def _link_up(replica: redis.Redis) -> bool:
    info: dict[str, Any] = replica.info("replication")  # type: ignore[assignment]
    return info.get("master_link_status") == "up"


@dataclass
class Sentinel:
    master: int
    replica: int
    sentinel: int


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Iterator[Sentinel]:
    """A master, its replica, and one sentinel monitoring the master as SERVICE
    (quorum 1, so it may fail over alone)."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("no redis-server binary on PATH")
        pytest.skip("no redis-server binary on PATH")
    ports = Sentinel(free_port(), free_port(), free_port())
    config = tmp_path / "sentinel.conf"  # Sentinel rewrites it: it must be a writable file
    config.write_text(
        f"port {ports.sentinel}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor {SERVICE} 127.0.0.1 {ports.master} 1\n"
        f"sentinel down-after-milliseconds {SERVICE} 2000\n"
        f"sentinel failover-timeout {SERVICE} 10000\n"
    )
    plain = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    plain += ["--repl-diskless-sync-delay", "0"]  # the replica syncs at once, not 5 s later
    servers = [
        [binary, "--port", str(ports.master), *plain],
        [
            binary,
            "--port",
            str(ports.replica),
            *plain,
            "--replicaof",
            "127.0.0.1",
            str(ports.master),
        ],
    ]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for command in servers:  # the master first: a replica retries only once a second
            processes.append(
                subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
            _until(_client(int(command[2])).ping, "redis-server to start")
        replica = _client(ports.replica)
        _until(lambda: _link_up(replica), "replication")
        # Started once the replica is connected, the sentinel learns of it from
        # its first INFO of the master instead of the next one, 10 s later.
        processes.append(
            subprocess.Popen(
                [binary, str(config), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        sentinel = _client(ports.sentinel)
        # Seen, and connected to with a fresh INFO of its own: until then
        # Sentinel finds no replica good enough to promote (NOGOODSLAVE).
        _until(
            lambda: any(
                r["port"] == ports.replica
                and not r.get("is_disconnected")
                and int(r.get("info-refresh", 10**9)) < 5000
                for r in sentinel.sentinel_slaves(SERVICE)  # type: ignore[no-untyped-call]
            ),
            "the sentinel to see the replica",
        )
        yield ports
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)


def test_a_sentinel_url_is_parsed() -> None:
    settings = RedisURL("rediss+sentinel://u:p%40ss@10.0.0.1,10.0.0.2:26380,[::1]:5/svc/3")
    assert settings.sentinels == [("10.0.0.1", 26379), ("10.0.0.2", 26380), ("::1", 5)]
    assert (settings.service, settings.db, settings.tls) == ("svc", 3, True)
    assert (settings.username, settings.password) == ("u", "p@ss")
    assert settings.display() == (
        "rediss+sentinel://u:***@10.0.0.1:26379,10.0.0.2:26380,::1:5/svc/3"
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://127.0.0.1:26379", r"needs the sentinels and the service name"),
        ("redis+sentinel:///svc", r"needs the sentinels and the service name"),
        ("redis+sentinel://h:port/svc", r"port in .* must be a number"),
        ("redis+sentinel://h/svc/x", r"database in .* must be a number"),
        ("redis+sentinel://h/svc?ssl_ca_certs=/x", r"unknown option\(s\) 'ssl_ca_certs'"),
    ],
)
def test_a_bad_sentinel_url_is_refused(url: str, message: str) -> None:
    with pytest.raises(InvalidOptionError, match=message):
        Conveyor(url)


async def test_jobs_follow_the_master_through_a_failover(sentinel_setup: Sentinel) -> None:
    ports = sentinel_setup
    dead = free_port()  # the first sentinel listed is down: the next one answers
    app = Conveyor(f"redis+sentinel://127.0.0.1:{dead},127.0.0.1:{ports.sentinel}/{SERVICE}/0")
    ran: list[int] = []

    @app.job("t")
    async def t(payload: int) -> None:
        ran.append(payload)

    master, replica = _client(ports.master), _client(ports.replica)
    async with app:
        before = [await app.enqueue("t", n) for n in range(5)]
        assert master.exists(f"{{conveyor}}:job:{before[0].id}"), "not written to the master"
        assert master.wait(1, 5000) == 1  # the replica has every job enqueued so far

        sentinel = _client(ports.sentinel)
        assert sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE)  # type: ignore[no-untyped-call]
        _until(
            lambda: sentinel.sentinel_get_master_addr_by_name(SERVICE)[1] == ports.replica,  # type: ignore[no-untyped-call]
            "the sentinel to name the new master",
        )
        # The sentinel turns the old master into a replica some 10 s later,
        # closing its clients' connections; do it now, without closing them:
        # the backend's connection is then to a replica, which refuses writes
        # (READONLY), and the backend must ask the sentinel again.
        assert master.replicaof("127.0.0.1", ports.replica)
        after = await app.enqueue("t", 5)
        assert replica.exists(f"{{conveyor}}:job:{after.id}"), "not written to the new master"
        async with app.worker(concurrency=4, poll_interval=0.1):
            for job in [*before, after]:
                assert (await app.wait(job.id, timeout=20)).state is JobState.COMPLETED
    assert sorted(ran) == [0, 1, 2, 3, 4, 5]


async def test_a_server_that_is_not_a_master_is_refused(sentinel_setup: Sentinel) -> None:
    """A sentinel naming a replica (here: one that monitors it as a master)
    is not believed: ROLE says replica, and the backend says so."""
    ports = sentinel_setup
    sentinel = _client(ports.sentinel)
    sentinel.sentinel_monitor("not-a-master", "127.0.0.1", ports.replica, 1)  # type: ignore[no-untyped-call]
    app = Conveyor(f"redis+sentinel://127.0.0.1:{ports.sentinel}/not-a-master")
    with pytest.raises(BackendUnavailableError, match=rf"127.0.0.1:{ports.replica}.* is a slave"):
        await app.open()


async def test_an_unknown_service_is_named_in_the_error(sentinel_setup: Sentinel) -> None:
    app = Conveyor(f"redis+sentinel://127.0.0.1:{sentinel_setup.sentinel}/no-such-service")
    with pytest.raises(
        BackendUnavailableError, match=r"monitors no master named 'no-such-service'"
    ):
        await app.open()
