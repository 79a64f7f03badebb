"""Job semantics over a message broker, whichever it is (SQS, Pub/Sub):
`BrokerBackend` (bare.py, the message is the job) and `StoredBrokerBackend`
(stored.py, a store keeps the jobs and the broker carries their ids), on a
client in SQSClient's call shapes and a few `BrokerFacts` (types.py)."""
