"""The bullmq:// backend's own checks: its URL, the pinned scripts, and the
queue's meta.version on open (the rest is the conformance suite's and
tests/interop's)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conveyor import Conveyor
from conveyor.backends.bullmq.url import parse_url
from conveyor.job import BackendUnavailableError, InvalidOptionError


def test_the_url_names_the_server_the_default_queue_and_the_prefix() -> None:
    config = parse_url("bullmq://:secret@redis.local:6380/2?queue=emails&prefix=shop")
    assert config.redis_url == "redis://:secret@redis.local:6380/2"
    assert (config.queue, config.prefix) == ("emails", "shop")
    assert config.bull_queue("default") == "emails"
    assert config.bull_queue("reports") == "reports"
    defaults = parse_url("bullmq://localhost")
    assert (defaults.queue, defaults.prefix) == ("default", "bull")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("bullmq://localhost/0?queu=emails", "unknown option"),
        ("bullmq://localhost/0?queue=a:b", "bad BullMQ queue"),
        ("bullmq://localhost/0?prefix=", "bad BullMQ prefix"),
        ("redis://localhost/0", "not a BullMQ URL"),
    ],
)
def test_a_bad_url_is_refused_clearly(url: str, message: str) -> None:
    with pytest.raises(InvalidOptionError, match=message):
        parse_url(url)


def test_the_installed_scripts_are_the_pinned_pair() -> None:
    from conveyor.backends.bullmq.scripts import NAMES, load_scripts

    scripts = load_scripts()
    assert set(scripts) == set(NAMES)
    assert scripts["moveToActive"].keys == 11


@pytest.mark.bullmq
async def test_open_checks_and_stamps_the_queues_meta_version(
    bullmq_urls: Callable[[], str],
) -> None:
    url = bullmq_urls()
    app = Conveyor(url)
    await app.open()
    meta = f"{parse_url(url).prefix}:default:meta"
    backend = app.backend
    assert await backend._cmd("HGET", meta, "version") == "bullmq:6.4.0"  # type: ignore[attr-defined]
    # Node BullMQ of the same major stamps its own version: served.
    await backend._cmd("HSET", meta, "version", "bullmq:6.7.0")  # type: ignore[attr-defined]
    await app.close()
    again = Conveyor(url)
    await again.open()
    await again.close()
    # Another major's layout is refused, naming what made the queue.
    await backend._cmd("HSET", meta, "version", "bullmq:5.58.0")  # type: ignore[attr-defined]
    other = Conveyor(url)
    with pytest.raises(BackendUnavailableError, match=r"bullmq:5\.58\.0.*6\.x"):
        await other.open()
    await backend.close()
