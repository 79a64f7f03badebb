"""AWS SQS: standard and FIFO queues, alone or paired with a store.

`sqs://jobs?region=eu-west-1` runs jobs carried whole in SQS messages;
`sqs://jobs?region=eu-west-1&store=redis://host:6379/0` keeps the job records
in a store and sends SQS only their ids (see stored.py for what that adds).
"""

from __future__ import annotations

from typing import Any

from conveyor.backends.broker.bare import BrokerBackend
from conveyor.backends.sqs.backend import SQSBackend
from conveyor.backends.sqs.url import parse_url


def sqs_backend(url: str, **options: Any) -> BrokerBackend:
    """The SQS backend for `url`: with its store when the URL names one."""
    if parse_url(url).store is not None:
        from conveyor.backends.sqs.stored import SQSStoredBackend

        return SQSStoredBackend(url, **options)
    return SQSBackend(url, **options)


__all__ = ["SQSBackend", "sqs_backend"]
