"""`conveyor migrate` on SQLite (issue 14, point 5): `--dry-run` prints the
SQL that opening the file would run (the whole schema for a new file, the
upgrade for an older one, nothing for a current one) and touches nothing;
the SQL, run by hand, makes a file the backend opens as it is; `migrate`
creates or upgrades the file."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from conveyor import Conveyor, JobState
from conveyor.backends.sqlite import SCHEMA_VERSION
from conveyor.cli import cli

pytestmark = pytest.mark.sqlite


def run(url: str, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--url", url, "migrate", *args])
    assert result.exit_code == 0, result.output
    return result.output


def schema_of(path: Path) -> list[tuple[str, str, str]]:
    db = sqlite3.connect(path)
    try:
        rows = db.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name"
        ).fetchall()
        version = db.execute(
            "SELECT value FROM conveyor_meta WHERE key = 'schema_version'"
        ).fetchall()
    finally:
        db.close()
    return [*rows, ("meta", "schema_version", str(version))]


def columns(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [row[1] for row in db.execute("PRAGMA table_info(conveyor_jobs)")]
    finally:
        db.close()


def test_the_dry_run_prints_the_schema_and_creates_nothing(tmp_path: Path) -> None:
    path, by_hand = tmp_path / "jobs.db", tmp_path / "by-hand.db"
    url = f"sqlite:///{path}"
    printed = run(url, "--dry-run")
    assert f"-- migration {SCHEMA_VERSION}: the whole schema" in printed
    assert "CREATE TABLE conveyor_jobs" in printed
    assert not path.exists()

    db = sqlite3.connect(by_hand)
    db.executescript(printed)
    db.close()
    assert "applied migration(s)" in run(url)
    assert schema_of(by_hand) == schema_of(path)
    # The file made by hand is complete: opening it changes nothing.
    before = schema_of(by_hand)
    assert "up to date, nothing to run" in run(f"sqlite:///{by_hand}", "--dry-run")
    assert f"up to date at version {SCHEMA_VERSION}" in run(f"sqlite:///{by_hand}")
    assert schema_of(by_hand) == before
    # And it holds what conveyor keeps: a job run, a lock, a cached value.
    asyncio.run(uses_every_table(f"sqlite:///{by_hand}"))
    assert schema_of(by_hand) == before


async def uses_every_table(url: str) -> None:
    app = Conveyor(url)

    @app.job("add")
    async def add(payload: list[int]) -> int:
        return sum(payload)

    async with app:
        job = await app.enqueue("add", [1, 2])
        [done] = await app.drain()
        assert (done.id, done.state, done.result) == (job.id, JobState.COMPLETED, 3)
        assert await app.locks.acquire("k", ttl=5) is not None
        await app.cache.set("c", {"v": 1})
        assert await app.cache.get("c") == {"v": 1}
        await app.recurring("tick", "add", [1], every=60)
        assert [s.name for s in await app.list_recurring()] == ["tick"]
    await asyncio.to_thread(app.portal.stop)


def test_the_dry_run_of_an_older_file_prints_its_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    url = f"sqlite:///{path}"
    run(url)
    current = columns(path)
    db = sqlite3.connect(path)
    for column in ("headers", "traceback", "history"):  # back to the version 2 table
        db.execute(f"ALTER TABLE conveyor_jobs DROP COLUMN {column}")
    db.execute("UPDATE conveyor_meta SET value = '2' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    printed = run(url, "--dry-run")
    assert "upgrade from version 2" in printed
    assert "ADD COLUMN traceback" in printed and "ADD COLUMN token" not in printed
    assert "ADD COLUMN headers" in printed  # added since, without a version
    assert "applied migration(s) 3" in run(url)
    assert columns(path) == current


def test_a_file_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    run(f"sqlite:///{path}")
    db = sqlite3.connect(path)
    db.execute("UPDATE conveyor_meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    result = CliRunner().invoke(cli, ["--url", f"sqlite:///{path}", "migrate", "--dry-run"])
    assert result.exit_code != 0
    assert "schema version 99 was written by a newer conveyor" in result.output


def test_a_presence_table_of_an_older_release_gets_its_new_column(tmp_path: Path) -> None:
    """conveyor_workers made before `details` (worker concurrency and running
    jobs) existed: the dry run prints the ALTER TABLE, opening runs it."""
    path = tmp_path / "jobs.db"
    url = f"sqlite:///{path}"
    run(url)  # a current file
    db = sqlite3.connect(path)
    db.executescript(
        "DROP TABLE conveyor_workers;"
        "CREATE TABLE conveyor_workers ( id TEXT PRIMARY KEY, host TEXT NOT NULL,"
        " pid INTEGER NOT NULL, queues TEXT NOT NULL, names TEXT NOT NULL,"
        " started_at REAL NOT NULL, last_seen REAL NOT NULL, expires REAL NOT NULL)"
        " WITHOUT ROWID;"
    )
    db.close()
    printed = run(url, "--dry-run")
    assert "ALTER TABLE conveyor_workers ADD COLUMN details TEXT" in printed
    run(url)
    db = sqlite3.connect(path)
    try:
        assert "details" in [row[1] for row in db.execute("PRAGMA table_info(conveyor_workers)")]
    finally:
        db.close()
    assert "ALTER TABLE" not in run(url, "--dry-run")


def test_the_locks_and_cache_backend_of_their_own_is_migrated_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With CONVEYOR_LOCKS_URL / CONVEYOR_CACHE_URL naming a database of its
    own, `conveyor migrate` brings that schema up too (an app that opens it
    with migrate=false needs it there), and the dry run prints its SQL, each
    backend under a line naming it."""
    jobs, services = tmp_path / "jobs.db", tmp_path / "services.db"
    monkeypatch.setenv("CONVEYOR_LOCKS_URL", f"sqlite:///{services}")
    monkeypatch.setenv("CONVEYOR_CACHE_URL", f"sqlite:///{services}")
    printed = run(f"sqlite:///{jobs}", "--dry-run")
    assert printed.count("CREATE TABLE conveyor_jobs") == 2, printed
    assert f"-- sqlite:///{services} (locks, cache)" in printed, printed
    assert not services.exists()
    done = run(f"sqlite:///{jobs}")
    assert services.exists() and done.count("applied migration(s)") == 2, done
    assert schema_of(services) == schema_of(jobs)


def test_a_brokers_store_is_migrated(tmp_path: Path) -> None:
    """A broker's store (`sqs://...&store=<URL>`, opened by workers with
    `migrate=false` in the store's URL) gets its schema from `conveyor
    migrate` as the same database would alone: the broker has none of its
    own, and nothing is sent to it."""
    pytest.importorskip("aiobotocore")
    store = tmp_path / "store.db"
    url = f"sqs://jobs?region=us-east-1&endpoint_url=http://127.0.0.1:9&store=sqlite:///{store}"
    printed = run(url, "--dry-run")
    assert "CREATE TABLE conveyor_jobs" in printed, printed
    assert f"-- sqlite:///{store} (store)" in printed, printed
    assert not store.exists()
    done = run(url)
    assert "applied migration(s)" in done and "no migrations" not in done, done
    assert schema_of(store)[-1] == ("meta", "schema_version", str([(str(SCHEMA_VERSION),)]))
    assert "up to date" in run(url)
