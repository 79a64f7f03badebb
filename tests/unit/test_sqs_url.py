"""The SQS URL: its forms, its options, and clear refusals."""

from __future__ import annotations

import pytest

from conveyor.backends.sqs.url import parse_url
from conveyor.job import InvalidOptionError


def test_a_queue_name_with_region_and_endpoint() -> None:
    url = parse_url("sqs://jobs?region=eu-west-1&endpoint_url=http://127.0.0.1:4566&create=true")
    assert (url.queue, url.region, url.endpoint_url, url.create) == (
        "jobs",
        "eu-west-1",
        "http://127.0.0.1:4566",
        True,
    )
    assert url.store is None and not url.fifo
    assert url.queue_name("default") == "jobs"
    assert url.queue_name("emails") == "jobs-emails"
    assert url.dlq_name("default") == "jobs-dlq"


def test_fifo_queues_keep_the_suffix_on_every_derived_name() -> None:
    url = parse_url("sqs://orders.fifo?region=us-east-1&dlq=orders-dead.fifo")
    assert url.fifo
    assert url.queue_name("emails") == "orders-emails.fifo"
    assert url.dlq_name("default") == "orders-dead.fifo"
    assert url.dlq_name("emails") == "orders-emails-dlq.fifo"


def test_the_store_takes_the_rest_of_the_url_unescaped() -> None:
    url = parse_url(
        "sqs://jobs?region=us-east-1&store=redis://cache:6379/0?prefix=jobs&socket_timeout=5"
    )
    assert url.store == "redis://cache:6379/0?prefix=jobs&socket_timeout=5"
    escaped = parse_url("sqs://jobs?region=us-east-1&store=sqlite%3A%2F%2F%2Fjobs.db")
    assert escaped.store == "sqlite:///jobs.db"


def test_the_queues_own_https_url() -> None:
    url = parse_url("sqs+https://sqs.eu-central-1.amazonaws.com/123456789012/jobs")
    assert url.queue == "jobs"
    assert url.queue_url == "https://sqs.eu-central-1.amazonaws.com/123456789012/jobs"
    assert url.region == "eu-central-1"


def test_the_region_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert parse_url("sqs://jobs").region == "ap-south-1"
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(InvalidOptionError, match="AWS_REGION"):
        parse_url("sqs://jobs")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqs://jobs?region=us-east-1&visiblity=30", "unknown option 'visiblity'"),
        ("sqs://bad/name?region=us-east-1", "bad SQS queue name"),
        ("sqs://jobs?region=us-east-1&create=maybe", "expected true or false"),
        ("sqs://jobs?region=us-east-1&wait=21", "from 0 to 20"),
        ("sqs://jobs?region=us-east-1&max_receives=0", "from 1 to 1000"),
        ("sqs://jobs?region=us-east-1&group=g", "message groups are for FIFO"),
        ("sqs://jobs.fifo?region=us-east-1&dlq=dead", "FIFO"),
        ("sqs://jobs?region=us-east-1&store=", "empty"),
        ("sqs://jobs?region=us-east-1&store=sqs://other", "cannot be an SQS queue"),
        ("sqs+https://sqs.us-east-1.amazonaws.com/jobs", "bad SQS queue URL"),
    ],
)
def test_bad_urls_are_refused_saying_why(url: str, message: str) -> None:
    with pytest.raises(InvalidOptionError, match=message):
        parse_url(url)
