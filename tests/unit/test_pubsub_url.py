"""The Pub/Sub URL: names, options, the emulator, and clear refusals."""

from __future__ import annotations

import pytest

from conveyor.backends.pubsub.url import parse_url
from conveyor.job import InvalidOptionError


@pytest.fixture(autouse=True)
def _no_emulator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)


def test_the_topic_and_its_default_subscription() -> None:
    url = parse_url("pubsub://my-project/jobs")
    assert (url.project, url.topic, url.subscription) == ("my-project", "jobs", "jobs-conveyor")
    assert not url.create and url.store is None and url.emulator is None
    assert (url.max_deliveries, url.wait) == (10, 20)
    assert url.queue == "jobs"
    assert url.display == "pubsub://my-project/jobs"


def test_every_conveyor_queue_has_a_topic_a_subscription_and_a_dead_letter_topic() -> None:
    url = parse_url("pubsub://my-project/jobs?subscription=workers&create=true")
    assert url.queue_name("default") == "jobs"
    assert url.queue_name("emails") == "jobs-emails"
    assert url.subscription_name("jobs") == "workers"
    assert url.subscription_name("jobs-emails") == "workers-emails"
    assert url.dlq_name("default") == "jobs-dlq"
    assert url.dlq_name("emails") == "jobs-emails-dlq"
    assert url.subscription_name("jobs-dlq") == "workers-dlq"
    assert url.subscription_name("jobs-emails-dlq") == "workers-emails-dlq"
    # Which topics are work queues (they get a dead-letter policy) and which are not.
    assert url.conveyor_queue("jobs") == "default"
    assert url.conveyor_queue("jobs-emails") == "emails"
    assert url.conveyor_queue("jobs-dlq") is None
    assert url.conveyor_queue("elsewhere") is None


def test_a_dead_letter_topic_named_in_the_url() -> None:
    url = parse_url("pubsub://my-project/jobs?dlq=dead-jobs&max_deliveries=5")
    assert url.dlq_name("default") == "dead-jobs"
    assert url.dlq_name("emails") == "jobs-emails-dlq"
    assert url.subscription_name("dead-jobs") == "dead-jobs-conveyor"
    assert url.conveyor_queue("dead-jobs") is None
    assert url.max_deliveries == 5


def test_the_store_takes_the_rest_of_the_url_unescaped() -> None:
    url = parse_url(
        "pubsub://my-project/jobs?create=true&store=redis://cache:6379/0?prefix=jobs&socket_timeout=5"
    )
    assert url.create
    assert url.store == "redis://cache:6379/0?prefix=jobs&socket_timeout=5"
    escaped = parse_url("pubsub://my-project/jobs?store=sqlite%3A%2F%2F%2Fjobs.db")
    assert escaped.store == "sqlite:///jobs.db"


def test_the_emulator_from_the_environment_or_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085")
    url = parse_url("pubsub://my-project/jobs")
    assert url.emulator == "127.0.0.1:8085"
    assert url.display == "pubsub://my-project/jobs (emulator at 127.0.0.1:8085)"
    assert parse_url("pubsub://my-project/jobs?emulator=localhost:9000").emulator == (
        "localhost:9000"
    )


def test_a_regional_endpoint_and_a_domain_scoped_project() -> None:
    url = parse_url(
        "pubsub://example.com:my-project/jobs?endpoint=europe-west1-pubsub.googleapis.com:443"
    )
    assert url.project == "example.com:my-project"
    assert url.endpoint == "europe-west1-pubsub.googleapis.com:443"
    assert (
        url.display
        == "pubsub://example.com:my-project/jobs at europe-west1-pubsub.googleapis.com:443"
    )


def test_a_derived_name_over_the_limit_is_refused_when_used() -> None:
    with pytest.raises(InvalidOptionError, match="bad Pub/Sub subscription name"):
        parse_url(f"pubsub://my-project/{'j' * 250}")  # its subscription: 250 + "-conveyor"
    url = parse_url(f"pubsub://my-project/{'j' * 250}?subscription=workers")
    with pytest.raises(InvalidOptionError, match="bad Pub/Sub topic name"):
        url.queue_name("emails")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://my-project/jobs", "not a Pub/Sub URL"),
        ("pubsub://my-project", "expected pubsub://<project>/<topic>"),
        ("pubsub://my-project/jobs/more", "expected pubsub://<project>/<topic>"),
        ("pubsub://my-project/jobs?subscriptoin=s", "unknown option 'subscriptoin'"),
        ("pubsub://My-Project/jobs", "bad Google Cloud project id"),
        ("pubsub://proj/jobs", "bad Google Cloud project id"),  # under 6 characters
        ("pubsub://my-project-/jobs", "bad Google Cloud project id"),
        ("pubsub://9project/jobs", "bad Google Cloud project id"),
        ("pubsub://my-project/9jobs", "bad Pub/Sub topic name"),
        ("pubsub://my-project/jo", "bad Pub/Sub topic name"),
        ("pubsub://my-project/google-jobs", "not with 'goog'"),
        ("pubsub://my-project/jobs?subscription=a b", "bad Pub/Sub subscription name"),
        ("pubsub://my-project/jobs?create=maybe", "expected true or false"),
        ("pubsub://my-project/jobs?max_deliveries=4", "from 5 to 100"),
        ("pubsub://my-project/jobs?max_deliveries=101", "from 5 to 100"),
        ("pubsub://my-project/jobs?wait=21", "from 0 to 20"),
        ("pubsub://my-project/jobs?dlq=jobs", "the queue's own topic"),
        ("pubsub://my-project/jobs?dlq=x", "bad Pub/Sub topic name"),
        ("pubsub://my-project/jobs?emulator=localhost", "expected host:port"),
        ("pubsub://my-project/jobs?store=", "empty"),
        ("pubsub://my-project/jobs?store=pubsub://my-project/other", "cannot be a Pub/Sub"),
    ],
)
def test_bad_urls_are_refused_saying_why(url: str, message: str) -> None:
    with pytest.raises(InvalidOptionError, match=message):
        parse_url(url)


def test_a_bad_emulator_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "nowhere")
    with pytest.raises(InvalidOptionError, match="PUBSUB_EMULATOR_HOST='nowhere'"):
        parse_url("pubsub://my-project/jobs")
