"""The PostgreSQL backend behind PgBouncer, a real pgbouncer process started
here (a config in tmp_path, a free loopback port, trust auth) in front of the
test server.

* Session mode: everything works as on a direct connection: enqueue
  (prepared statements included), enqueue in the caller's transaction,
  workers, and LISTEN wake-ups.
* Transaction mode: a server connection serves one transaction, then goes
  back to the pool. Producers work with `prepared_statements=false` (and
  without it say so); workers refuse clearly, since a LISTEN stays on a
  server connection nobody reads: the listener's self-test finds it out
  and `conveyor worker` exits with the reason.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from availability import free_port

from conveyor import BackendMisconfiguredError, Conveyor, JobState

from .helpers import WAIT, WorkerProcess

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

MakeBouncer = Callable[..., str]


def unavailable(reason: str) -> None:
    """Skip, or fail under CI (as tests/conftest.py's)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)")
    pytest.skip(reason)


def _pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None
    )


def _answers(conninfo: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(conninfo, connect_timeout=1) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


@pytest.fixture
def bouncer(
    tmp_path: Path, postgres_server_url: str | None, postgres_urls: Callable[[], str]
) -> Iterator[MakeBouncer]:
    """`bouncer(mode, **settings)`: start a pgbouncer in `mode` in front of
    the test database; the conninfo of a connection through it."""
    from psycopg.conninfo import conninfo_to_dict

    binary = _pgbouncer_binary()
    if binary is None:
        unavailable("pgbouncer is not installed (apt-get install pgbouncer)")
    if postgres_server_url is None:
        unavailable("postgres backend unavailable: no PostgreSQL server answers")
    assert binary is not None and postgres_server_url is not None
    server = conninfo_to_dict(postgres_server_url)
    user = str(server.get("user", "postgres"))
    started: list[subprocess.Popen[bytes]] = []

    def start(mode: str, **settings: Any) -> str:
        port = free_port()
        name = f"bouncer-{mode}-{port}"
        (tmp_path / f"{name}.users").write_text(f'"{user}" "{server.get("password", "")}"\n')
        extra = "".join(f"{key} = {value}\n" for key, value in settings.items())
        config = tmp_path / f"{name}.ini"
        config.write_text(
            textwrap.dedent(f"""\
                [databases]
                test = host={server.get("host", "127.0.0.1")} port={server.get("port", 5432)} \
                dbname={server["dbname"]}
                [pgbouncer]
                listen_addr = 127.0.0.1
                listen_port = {port}
                unix_socket_dir =
                auth_type = trust
                auth_file = {tmp_path / f"{name}.users"}
                pool_mode = {mode}
                max_client_conn = 200
                default_pool_size = 30
                """)
            + extra
        )
        # pgbouncer refuses to run as root; it reads its config before it
        # switches to the user given.
        command = [binary, *(["-u", "nobody"] if os.geteuid() == 0 else []), str(config)]
        log = (tmp_path / f"{name}.log").open("w")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        started.append(process)
        conninfo = f"postgresql://{user}@127.0.0.1:{port}/test"
        deadline = time.monotonic() + 10
        while not _answers(conninfo):
            if process.poll() is not None or time.monotonic() > deadline:
                output = (tmp_path / f"{name}.log").read_text()
                pytest.fail(f"pgbouncer did not start:\n{output}")
            time.sleep(0.05)
        return conninfo

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=10)


def through(bouncer_conninfo: str, conveyor_url: str, *options: str) -> str:
    """conveyor's URL through the bouncer: its schema, the bouncer's address."""
    schema = conveyor_url.split("schema=")[1].split("&")[0]
    return "&".join([f"{bouncer_conninfo}?schema={schema}", *options])


def app_with_a_job(url: str) -> tuple[Conveyor, list[Any]]:
    app = Conveyor(url)
    ran: list[Any] = []

    @app.job("work")
    async def work(payload: Any) -> None:
        ran.append(payload)

    return app, ran


async def listening(direct: str, schema: str) -> bool:
    """The worker's LISTEN is in place, as the server itself sees it."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(direct, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query = %s",
            (f'LISTEN "conveyor:{schema}"',),
        )
        row = await cur.fetchone()
        return row is not None and row[0] > 0


async def test_session_mode_works_as_a_direct_connection(
    bouncer: MakeBouncer, postgres_urls: Callable[[], str], postgres_server_url: str
) -> None:
    import psycopg

    direct_url = postgres_urls()
    schema = direct_url.split("schema=")[1]
    pooled = bouncer("session")
    url = through(pooled, direct_url)
    app, ran = app_with_a_job(url)
    try:
        # Enough of each statement that psycopg prepares them (5 runs).
        jobs = [await app.enqueue("work", {"n": n}) for n in range(8)]
        jobs += await app.enqueue_many([("work", {"n": n}) for n in range(8, 12)])
        async with await psycopg.AsyncConnection.connect(pooled) as conn:
            async with conn.transaction(force_rollback=True):
                gone = await app.enqueue("work", {"n": -1}, connection=conn)
            async with conn.transaction():
                jobs.append(await app.enqueue("work", {"n": 12}, connection=conn))
        assert await app.get_job(gone.id) is None

        async with app.worker(concurrency=4, poll_interval=30.0):
            for job in jobs:
                assert (await app.wait(job.id, timeout=WAIT)).state is JobState.COMPLETED
            # Idle now, on LISTEN through the bouncer: a new job wakes it.
            await eventually_async(lambda: listening(postgres_server_url, schema))
            await asyncio.sleep(0.3)  # its self-test and one look for work, then the wait
            started = time.monotonic()
            late = await app.enqueue("work", {"n": 13})
            assert (await app.wait(late.id, timeout=WAIT)).state is JobState.COMPLETED
            took = time.monotonic() - started
        assert took < 5.0, f"the job ran {took:.1f} s after its enqueue (poll interval 30 s)"
        assert sorted(p["n"] for p in ran) == list(range(14))
    finally:
        await app.close()


async def test_transaction_mode_producers_work_without_prepared_statements(
    bouncer: MakeBouncer, postgres_urls: Callable[[], str]
) -> None:
    import psycopg

    # Several server connections used in turn: a statement prepared on one
    # is missing on the next, as under load.
    pooled = bouncer("transaction", server_round_robin=1, min_pool_size=4)
    direct_url = postgres_urls()

    app, _ = app_with_a_job(through(pooled, direct_url))
    try:
        with pytest.raises(BackendMisconfiguredError) as refused:
            for n in range(30):
                await app.enqueue("work", {"n": n})
        message = str(refused.value)
        assert "prepared_statements=false" in message and "transaction mode" in message
    finally:
        await app.close()

    app, _ = app_with_a_job(through(pooled, direct_url, "prepared_statements=false"))
    try:
        jobs = [await app.enqueue("work", {"n": n}) for n in range(30)]
        jobs += await app.enqueue_many([("work", {"n": n}) for n in range(30, 40)])
        # In the caller's transaction, on its connection through the bouncer
        # (prepared statements off there too, as Django does by default).
        async with await psycopg.AsyncConnection.connect(pooled, prepare_threshold=None) as conn:
            for _ in range(3):
                async with conn.transaction(force_rollback=True):
                    gone = await app.enqueue("work", {"gone": True}, connection=conn)
                async with conn.transaction():
                    jobs.append(await app.enqueue("work", {"kept": True}, connection=conn))
        assert await app.get_job(gone.id) is None
        for job in jobs:
            assert (await app.get_job(job.id)).state is JobState.QUEUED
    finally:
        await app.close()


def test_transaction_mode_workers_stop_with_the_reason(
    bouncer: MakeBouncer, postgres_urls: Callable[[], str], tmp_path: Path
) -> None:
    pooled = bouncer("transaction")
    url = through(pooled, postgres_urls(), "prepared_statements=false")
    (tmp_path / "jobsapp.py").write_text(
        textwrap.dedent("""\
            from conveyor import Conveyor

            app = Conveyor()

            @app.job("work")
            async def work(payload):
                return payload
            """)
    )
    producer, _ = app_with_a_job(url)
    job = producer.enqueue_sync("work", {"n": 1})
    worker = WorkerProcess(tmp_path, url, ["jobsapp:app", "--log-level", "info"], "worker")
    try:
        started = time.monotonic()
        code = worker.wait(timeout=WAIT + 10)
        took = time.monotonic() - started
        output = worker.output()
    finally:
        worker.close()
    try:
        # The job there ran; idle, the worker found LISTEN useless and left.
        assert producer.get_job_sync(job.id).state is JobState.COMPLETED, output
    finally:
        producer.close_sync()
    assert code != 0, output
    assert took < 20.0, output
    assert "LISTEN/NOTIFY does not work through" in output, output
    assert "pool_mode=transaction" in output and "session mode" in output, output
    assert "error: LISTEN/NOTIFY" in output, output  # the CLI's own one-line error
    assert "Traceback" not in output, output
    assert "unavailable" not in output, output  # not taken for an outage


async def eventually_async(check: Callable[[], Any], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out waiting for the worker's LISTEN"
        await asyncio.sleep(0.02)
