"""What the Pub/Sub backend declares and refuses before any call: the
broker facts of conveyor/backends/pubsub/backend.py (the behaviour runs in
the conformance suite, on the emulator)."""

from __future__ import annotations

import pytest

from conveyor.backends import from_url
from conveyor.backends.pubsub import PubSubBackend, PubSubStoredBackend
from conveyor.job import NotSupportedError

BARE = "pubsub://conveyor-test/jobs?emulator=127.0.0.1:1"


def test_the_scheme_picks_bare_or_stored_by_the_url(tmp_path: object) -> None:
    assert isinstance(from_url(BARE), PubSubBackend)
    stored = from_url(f"{BARE}&store=sqlite:///{tmp_path}/s.db")
    assert isinstance(stored, PubSubStoredBackend)
    # With a store: what the store can do, less what Pub/Sub's delivery takes.
    caps = stored.capabilities
    assert caps.stats and caps.lookup and caps.keys and caps.max_delay is None
    assert not caps.priorities and not caps.groups and not caps.fork_after_use


def test_bare_declares_what_pubsub_cannot_do() -> None:
    caps = from_url(BARE).capabilities
    assert not caps.stats and not caps.keys and not caps.groups and not caps.lookup
    assert caps.max_delay == 600.0
    assert not caps.fork_after_use
    assert "store=" in caps.hint


def test_groups_and_order_only_where_the_url_asks_for_ordering() -> None:
    caps = from_url(BARE + "&ordered=true").capabilities
    assert caps.groups and caps.ordered and not caps.concurrent_claims


async def test_bare_stats_are_refused_naming_the_fix() -> None:
    backend = PubSubBackend(BARE)
    with pytest.raises(NotSupportedError, match="store="):
        await backend.stats()
    assert await backend.broker_stats() == []  # nothing for `conveyor stats` to show
