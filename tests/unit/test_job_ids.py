"""Job ids: unique, sorted by creation time, and not repeated by a forked
child (whose random generator would otherwise continue its parent's)."""

from __future__ import annotations

import os

from conveyor.job import new_job_id


def test_ids_are_unique_and_sort_by_creation() -> None:
    ids = [new_job_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert [i[:16] for i in ids] == sorted(i[:16] for i in ids)  # time, then counter


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write, ",".join(new_job_id() for _ in range(50)).encode())
        finally:
            os._exit(0)
    os.close(write)
    parents = [new_job_id() for _ in range(50)]
    with os.fdopen(read) as pipe:
        childs = pipe.read().split(",")
    os.waitpid(pid, 0)
    assert len(childs) == 50
    # The random parts, which a child that kept its parent's generator repeats.
    assert not {i[16:] for i in childs} & {i[16:] for i in parents}
    assert not set(childs) & set(parents)
