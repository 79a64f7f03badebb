"""The Redis backend on a real three-node Redis Cluster started by the test.

Every key of an app shares the hash tag `{prefix}`, so an app lives in one
slot; the client connects to any node and follows MOVED to the one serving
that slot. Prefixes are picked so that the apps land on all three nodes.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, JobState

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port(taken: list[int]) -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = random.randint(20000, 29999)
        if port not in taken and _free(port) and _free(port + 10000):
            return port


def unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)")
    pytest.skip(reason)


def _cli(port: int, *args: str) -> str:
    done = subprocess.run(
        ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=30
    )
    return done.stdout.strip()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        unavailable("redis-server / redis-cli not on PATH: cannot start a Redis Cluster")
    workdir = tmp_path_factory.mktemp("cluster")
    ports: list[int] = []
    for _ in range(3):
        ports.append(_free_port(ports))
    processes = []
    for port in ports:
        node_dir = Path(workdir, str(port))
        node_dir.mkdir()
        processes.append(
            subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--dir",
                    str(node_dir),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        deadline = time.monotonic() + 10
        while any(_cli(p, "ping") != "PONG" for p in ports):
            if time.monotonic() > deadline:
                pytest.fail("cluster nodes did not start")
            time.sleep(0.05)
        nodes = [f"127.0.0.1:{p}" for p in ports]
        _cli(ports[0], "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes")
        while "cluster_state:ok" not in _cli(ports[0], "cluster", "info"):
            if time.monotonic() > deadline + 20:
                pytest.fail("the cluster did not become ready")
            time.sleep(0.1)
        yield ports
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)


def _prefix_on(port: int, ports: list[int]) -> str:
    """A prefix whose hash tag's slot is served by the node on `port`."""
    ranges: dict[int, list[tuple[int, int]]] = {}
    for line in _cli(ports[0], "cluster", "nodes").splitlines():
        fields = line.split()
        node_port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
        for part in fields[8:]:
            low, _, high = part.partition("-")
            ranges.setdefault(node_port, []).append((int(low), int(high or low)))
    while True:
        prefix = f"c-{uuid.uuid4().hex[:8]}"
        slot = int(_cli(ports[0], "cluster", "keyslot", "{" + prefix + "}"))
        if any(low <= slot <= high for low, high in ranges[port]):
            return prefix


async def _exercise(url: str) -> None:
    app = Conveyor(url)
    ran: list[Any] = []

    @app.job("work")
    async def work(payload: Any) -> Any:
        ran.append(payload)
        return payload

    await app.open()
    try:
        single = await app.enqueue("work", 0, key="k-0")
        again = await app.enqueue("work", 0, key="k-0")
        assert again.duplicate and again.id == single.id
        batch = await app.enqueue_many([("work", i) for i in range(1, 50)])
        async with app.worker(concurrency=4, poll_interval=0.1):
            for job in [single, *batch]:
                done = await app.wait(job.id, timeout=20)
                assert done.state is JobState.COMPLETED
        assert sorted(ran) == list(range(50))
        stats = await app.stats()
        assert stats["default"]["completed"] == 50

        await app.recurring("tick", "work", 99, every=60)
        record = await app.backend.schedule_get("tick")  # type: ignore[attr-defined]
        assert record is not None
        assert await app.scheduler().tick(now=record.next_run + 1) == 1
        assert await app.scheduler().tick(now=record.next_run + 1) == 0

        token = await app.locks.acquire("l", ttl=5)
        assert token is not None
        assert await app.locks.acquire("l", ttl=5) is None
        assert await app.locks.release("l", token)
        await app.cache.set("c", {"v": 1}, ttl=10)
        assert await app.cache.get("c") == {"v": 1}
    finally:
        await app.close()


def test_the_backend_works_on_every_node_of_a_cluster(cluster: list[int]) -> None:
    entry = cluster[0]  # always connect to the first node: the others answer MOVED
    for port in cluster:
        prefix = _prefix_on(port, cluster)
        asyncio.run(_exercise(f"redis://127.0.0.1:{entry}/0?prefix={prefix}"))
        keys = int(_cli(port, "dbsize"))
        assert keys > 0, f"nothing was stored on node {port}"


def _keys_in(port: int, slot: int) -> set[str]:
    return set(_cli(port, "cluster", "getkeysinslot", str(slot), "1000").split())


def _setslot(port: int, slot: int, *how: str) -> None:
    assert _cli(port, "cluster", "setslot", str(slot), *how) == "OK"


async def test_a_slot_migration_is_followed_with_ask(cluster: list[int]) -> None:
    """While the app's slot migrates (CLUSTER SETSLOT ... MIGRATING/IMPORTING,
    MIGRATE), commands on single keys follow ASK to wherever their key is
    now; a script waits while the keys are on both nodes and runs on the
    target (ASKING) once they have all moved; once the slot is handed over,
    MOVED takes everything there."""
    source, target = cluster[0], cluster[1]
    prefix = _prefix_on(source, cluster)
    tag = "{" + prefix + "}"
    slot = int(_cli(source, "cluster", "keyslot", tag))
    source_id, target_id = _cli(source, "cluster", "myid"), _cli(target, "cluster", "myid")
    app = Conveyor(f"redis://127.0.0.1:{source}/0?prefix={prefix}")

    @app.job("work")
    async def work(payload: Any) -> None:
        return None

    await app.open()
    handed_over = False
    try:
        jobs = [await app.enqueue("work", n) for n in range(6)]
        await app.cache.set("before", {"v": 1}, ttl=60)
        _setslot(target, slot, "importing", source_id)
        _setslot(source, slot, "migrating", target_id)

        moved = [f"{tag}:job:{job.id}" for job in jobs[:3]] + [f"{tag}:cache:before"]
        assert (
            _cli(source, "migrate", "127.0.0.1", str(target), "", "0", "5000", "keys", *moved)
            == "OK"
        )
        # Keys on the target (ASK) and keys still on the source, side by side.
        for job in jobs:
            found = await app.get_job(job.id)
            assert found is not None and found.state is JobState.QUEUED
        assert await app.cache.get("before") == {"v": 1}
        await app.cache.set("during", {"v": 2}, ttl=60)  # a new key: created on the target
        assert f"{tag}:cache:during" in _keys_in(target, slot)
        assert await app.locks.acquire("l", ttl=30) is not None

        # A script (stats) sees every key or waits: here it waits for the rest.
        stats = asyncio.create_task(app.stats())
        await asyncio.sleep(0.3)
        assert not stats.done(), "a script ran while the app's keys were on two nodes"
        rest = sorted(_keys_in(source, slot))
        assert (
            _cli(source, "migrate", "127.0.0.1", str(target), "", "0", "5000", "keys", *rest)
            == "OK"
        )
        counts = await asyncio.wait_for(stats, timeout=10)
        assert counts["default"]["queued"] == 6
        keyed = await app.enqueue("work", "k", key="k")  # a script, on the target by ASK
        assert f"{tag}:job:{keyed.id}" in _keys_in(target, slot)

        # An enqueue without a key is a MULTI of plain commands: Redis runs
        # one on several keys only once they are all on one node, and its new
        # job's key is on neither (TRYAGAIN), so it waits for the handover.
        unkeyed = asyncio.create_task(app.enqueue("work", "multi"))
        await asyncio.sleep(0.3)
        assert not unkeyed.done()

        # The handover: MOVED from now on.
        for port in (target, source):
            _setslot(port, slot, "node", target_id)
        handed_over = True
        later = await asyncio.wait_for(unkeyed, timeout=10)
        async with app.worker(concurrency=4, poll_interval=0.1):
            for job in [*jobs, keyed, later]:
                assert (await app.wait(job.id, timeout=20)).state is JobState.COMPLETED
        assert int(_cli(source, "cluster", "countkeysinslot", str(slot))) == 0
    finally:
        await app.close()
        if not handed_over:  # leave the cluster as it was for the other tests
            for port in (source, target):
                _cli(port, "cluster", "setslot", str(slot), "stable")
