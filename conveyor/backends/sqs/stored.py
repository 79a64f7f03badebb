"""The SQS backend with a store (`sqs://jobs?store=<conveyor URL>`): the
semantics are broker/stored.py's (`StoredBrokerBackend`); SQS carries only
job ids, the store keeps the records and decides."""

from __future__ import annotations

from typing import Any

from conveyor.backends.broker.stored import StoredBrokerBackend
from conveyor.backends.sqs.backend import sqs_facts
from conveyor.backends.sqs.client import SQSClient
from conveyor.backends.sqs.url import SQSURL, parse_url

__all__ = ["SQSStoredBackend"]


class SQSStoredBackend(StoredBrokerBackend):
    def __init__(self, url: str, **options: Any) -> None:
        config = parse_url(url)
        self.sqs = SQSClient(config)
        super().__init__(url, config, self.sqs, sqs_facts(config), **options)
        self.config: SQSURL = config
