"""A backend URL that is refused is quoted in the error as conveyor prints
URLs elsewhere: with its passwords masked (the message reaches terminals,
logs and error trackers), and as the user wrote it, not as a URL the backend
derived from it."""

from __future__ import annotations

import pytest

from conveyor import Conveyor
from conveyor.backends import from_url
from conveyor.backends.url_options import redact

SECRET = "hunter2"
TARGET = "https://worker.example/conveyor/tasks"

BAD_URLS = [
    f"redis://:{SECRET}@127.0.0.1:notaport/0",
    f"redis://:{SECRET}@127.0.0.1:6379/x",
    f"redis://:{SECRET}@127.0.0.1:6379/0?bogus=1",
    f"redis://127.0.0.1:6379/0?password={SECRET}&bogus=1",
    f"rediss+sentinel://:{SECRET}@h:zz/svc",
    f"bullmq://:{SECRET}@127.0.0.1:notaport/0",
    f"bullmq://:{SECRET}@127.0.0.1:6379/x",
    f"bullmq://:{SECRET}@127.0.0.1:6379/0?queue=a:b",
    f"bullmq://:{SECRET}@127.0.0.1:6379/0?bogus=1",
    f"postgresql://app:{SECRET}@db/app?pool_size=many",
    f"postgresql://app@db/app?password={SECRET}&pool_size=many",
    f"sqs://jobs?region=us-east-1&wait=forever&store=postgresql://app:{SECRET}@db/app",
    f"sqs://jobs?region=us-east-1&store=redis://:{SECRET}@cache:notaport/0",
    f"pubsub://my-project/jobs?create=maybe&store=postgresql://app:{SECRET}@db/app",
    f"pubsub://my-project/jobs?store=redis://:{SECRET}@cache:6379/x",
    f"cloudtasks://my-project/europe-west1/jobs?target={TARGET}&create=maybe"
    f"&store=postgresql://app:{SECRET}@db/app",
    f"cloudtasks://my-project/europe-west1/jobs?target={TARGET}&store=redis://:{SECRET}@c:1/x",
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_a_refused_url_is_quoted_without_its_password(url: str) -> None:
    with pytest.raises(ValueError) as caught:
        from_url(url)
    message = str(caught.value)
    assert SECRET not in message
    assert "***" in message  # the URL is still quoted, masked
    assert url.partition("://")[0] + "://" in message  # the scheme the user wrote


@pytest.mark.parametrize("url", BAD_URLS[:3])
def test_nor_through_the_facade(url: str) -> None:
    with pytest.raises(ValueError) as caught:
        Conveyor(url)
    assert SECRET not in str(caught.value)


def test_a_bullmq_url_is_quoted_as_written_not_as_its_redis_url() -> None:
    with pytest.raises(ValueError) as caught:
        from_url("bullmq://127.0.0.1:notaport/0?queue=emails")
    message = str(caught.value)
    assert "'bullmq://127.0.0.1:notaport/0?queue=emails'" in message
    assert "redis://" not in message


def test_redact_masks_only_the_secrets_where_a_url_quotes_them() -> None:
    url = "redis://:ab@h:6379/0?password=cd"
    # a short password is masked where a URL holds it, not wherever its letters occur
    assert redact("bad port in 'redis://:ab@h:x/0' (about)", url) == (
        "bad port in 'redis://:***@h:x/0' (about)"
    )
    assert redact("password='cd' and password=cd&x=1 in card", url) == (
        "password='***' and password=***&x=1 in card"
    )
    assert redact("nothing here", "sqlite:///jobs.db") == "nothing here"
