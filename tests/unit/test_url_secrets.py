"""Backend URLs as conveyor prints them (worker start line, migrate's dry
run, the dashboard's and purge's prompts): no password shows."""

from __future__ import annotations

import logging

import pytest

from conveyor import Conveyor
from conveyor.backends import from_url
from conveyor.backends.memory import MemoryBackend
from conveyor.backends.url_options import without_secrets


def test_a_named_backends_password_is_not_printed() -> None:
    assert without_secrets("postgresql://app:s3cret@db:5432/app?schema=c") == (
        "postgresql://app:***@db:5432/app?schema=c"
    )
    assert without_secrets("redis://:pw@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert without_secrets("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert without_secrets("postgresql://app@db/app") == "postgresql://app@db/app"


def test_a_password_in_the_query_is_not_printed_either() -> None:
    shown = without_secrets(
        "postgresql://app@db/app?password=s3cret&sslpassword=x2&connect_timeout=1"
    )
    assert "s3cret" not in shown and "x2" not in shown and "connect_timeout=1" in shown
    assert "s3cret" not in without_secrets("redis://127.0.0.1:6379/0?Password=s3cret")
    assert "p@ss" not in without_secrets("postgresql://app:p%40ss@db/app")


def test_nor_the_password_of_a_brokers_store() -> None:
    url = "sqs://jobs?region=us-east-1&store=postgresql://app:s3cret@db/app?schema=q&password=x9"
    shown = without_secrets(url)
    assert "s3cret" not in shown and "x9" not in shown
    assert shown.startswith(
        "sqs://jobs?region=us-east-1&store=postgresql://app:***@db/app?schema=q"
    )


async def test_the_worker_start_line_hides_the_password(caplog: pytest.LogCaptureFixture) -> None:
    backend = MemoryBackend()
    backend.url = "redis://:s3cret@127.0.0.1:6379/0"
    app = Conveyor(backend=backend)

    @app.job("n")
    async def n(payload: int) -> None:
        return None

    caplog.set_level(logging.INFO, logger="conveyor.worker")
    async with app, app.worker(scheduler=False):
        pass
    started = [r.getMessage() for r in caplog.records if " started: " in r.getMessage()]
    assert started and "s3cret" not in started[0] and "redis://:***@127.0.0.1" in started[0]


def test_the_apps_repr_hides_the_password() -> None:
    app = Conveyor("redis://:s3cret@127.0.0.1:6379/0")
    assert "s3cret" not in repr(app) and "redis://:***@127.0.0.1:6379/0" in repr(app)


@pytest.mark.parametrize(
    "url",
    [
        "sqs://jobs?region=us-east-1&store=redis://:s3cret@127.0.0.1:6379/0",
        "pubsub://my-project/jobs?store=redis://:s3cret@127.0.0.1:6379/0",
        "cloudtasks://my-project/europe-west1/jobs?target=https://app.example/tasks"
        "&store=redis://:s3cret@127.0.0.1:6379/0",
    ],
)
def test_a_brokers_repr_hides_its_stores_password(url: str) -> None:
    shown = repr(from_url(url))
    assert "s3cret" not in shown and "store=redis://:***@127.0.0.1:6379/0" in shown
