"""The books of broker/groups.py (GroupGate): which of a receive's messages
are handed out, which are held, and where each goes as its group's earlier
job is settled, given back, lost or overdue. No broker: the backend's calls
around it are covered on moto and the Pub/Sub emulator
(tests/conformance/test_groups.py)."""

from __future__ import annotations

import time

from conveyor.backends.broker.groups import GroupGate
from conveyor.backends.broker.messages import Pointer
from conveyor.backends.broker.types import Received


def message(job_id: str, group: str) -> tuple[Received, Pointer]:
    pointer = Pointer(id=job_id, name="step", queue="default", group=group)
    return Received("q.fifo", "{}", f"receipt-{job_id}", 1, f"m-{job_id}"), pointer


def gate() -> GroupGate:
    return GroupGate(lambda pointer: pointer.group or pointer.queue)


def ids(chosen: list[tuple[Received, Pointer, float]]) -> list[str]:
    return [pointer.id for _, pointer, _ in chosen]


def test_one_message_per_group_is_handed_out_and_the_rest_held_in_order() -> None:
    books = gate()
    received = [message("a1", "a"), message("b1", "b"), message("a2", "a"), message("a3", "a")]
    chosen, changes = books.choose(received, "claim-1", 30.0, 30, room=4)
    assert ids(chosen) == ["a1", "b1"] and changes == []
    assert len(books) == 2 and books.ready() == 0
    # Nothing ready while a1 is out, however much room a claim has.
    assert books.choose([], "claim-2", 30.0, 30, room=4) == ([], [])
    assert books.settled("a1", "claim-1")
    chosen, _ = books.choose([], "claim-3", 30.0, 30, room=4)
    assert ids(chosen) == ["a2"]
    assert books.settled("a2", "claim-3")
    assert ids(books.choose([], "claim-4", 30.0, 30, room=4)[0]) == ["a3"]


def test_a_head_given_back_takes_its_held_messages_with_it_in_order() -> None:
    books = gate()
    books.choose([message("a1", "a"), message("a2", "a"), message("a3", "a")], "c1", 30.0, 30, 3)
    back = books.back("a1", "c1")
    assert [w.pointer.id for w in back] == ["a2", "a3"]
    assert len(books) == 0 and not books.busy()
    # The group starts afresh when the broker delivers it again.
    assert ids(books.choose([message("a1", "a")], "c2", 30.0, 30, 3)[0]) == ["a1"]


def test_a_lost_head_and_an_overdue_one_give_their_held_messages_back() -> None:
    books = gate()
    books.choose([message("a1", "a"), message("a2", "a")], "c1", 30.0, 30, 2)
    books.choose([message("b1", "b"), message("b2", "b")], "c2", 30.0, 30, 2)
    lost = books.upkeep([("a1", "c1")], lease=30.0, hidden=30)
    assert [(m.receipt, seconds) for m, seconds in lost] == [("receipt-a2", 0)]
    # b1 is neither renewed nor settled within the lease: its worker is gone.
    overdue = books.upkeep([], lease=0.0, hidden=30)
    assert [(m.receipt, seconds) for m, seconds in overdue] == [("receipt-b2", 0)]
    assert not books.busy()


def test_held_messages_are_renewed_once_half_their_visibility_is_gone() -> None:
    books = gate()
    books.choose([message("a1", "a"), message("a2", "a")], "c1", 30.0, 30, 2)
    books.beaten([("a1", "c1")])
    assert books.upkeep([], lease=30.0, hidden=30) == []  # fresh: hidden 30 s still
    (waiting,) = books.held()
    waiting.hidden_until = time.monotonic() + 10
    renewed = books.upkeep([], lease=30.0, hidden=30)
    assert [(m.receipt, seconds) for m, seconds in renewed] == [("receipt-a2", 30)]


def test_a_held_message_whose_visibility_ran_out_is_not_handed_out() -> None:
    books = gate()
    books.choose([message("a1", "a"), message("a2", "a"), message("a3", "a")], "c1", 30.0, 30, 3)
    books.settled("a1", "c1")
    for waiting in books.held():
        waiting.hidden_until = time.monotonic()  # the broker may deliver it again
    chosen, changes = books.choose([], "c2", 30.0, 30, 3)
    assert chosen == []
    # The group goes back whole, so the broker delivers it again in order.
    assert [(m.receipt, seconds) for m, seconds in changes] == [
        ("receipt-a2", 0),
        ("receipt-a3", 0),
    ]


def test_a_stopping_worker_releases_ready_groups_but_not_those_behind_a_running_job() -> None:
    books = gate()
    books.choose([message("a1", "a"), message("a2", "a")], "c1", 30.0, 30, 2)
    books.choose([message("b1", "b"), message("b2", "b")], "c2", 30.0, 30, 2)
    books.settled("a1", "c1")
    released = books.release_ready()
    assert [w.pointer.id for w in released] == ["a2"]
    assert [w.pointer.id for w in books.held()] == ["b2"]  # still behind b1, which runs
    assert books.back_of_claim("c2")[0].pointer.id == "b2"


def test_a_message_delivered_again_starts_its_group_afresh() -> None:
    """The broker let the group go (what was out of it ran out of
    visibility): the message is handed out anew, and the stale copies held
    behind it are dropped (the broker has them back), not moved."""
    books = gate()
    books.choose([message("a1", "a"), message("a2", "a")], "c1", 30.0, 30, 2)
    chosen, changes = books.choose([message("a1", "a"), message("a2", "a")], "c2", 30.0, 30, 2)
    assert ids(chosen) == ["a1"] and changes == []
    assert books.is_head("a1", "c2") and not books.is_head("a1", "c1")
    assert [w.message.receipt for w in books.held()] == ["receipt-a2"]  # once


def test_a_claim_gives_back_what_waits_behind_a_head_nobody_renewed() -> None:
    """A claim whose worker never heartbeats (it died): after a lease, the
    next claim gives its group's held messages back."""
    books = gate()
    books.choose([message("a1", "a"), message("a2", "a")], "dead", 0.0, 30, 2)
    chosen, changes = books.choose([], "c2", 0.0, 30, 2)
    assert chosen == []
    assert [(m.receipt, seconds) for m, seconds in changes] == [("receipt-a2", 0)]
    assert not books.busy()
