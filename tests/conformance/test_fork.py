"""A forked child can use the app its parent used (issue 7, point 5).

Pre-fork servers (gunicorn --preload, uWSGI) and multiprocessing's "fork"
start method copy a process whose app already ran blocking twins: the helper
loop's thread, the SQLite backend's thread and every open connection exist in
the parent only. The child's first blocking call must work (not wait forever
for a thread that does not exist), and the parent's app must go on working.

Each test forks for real and waits for the child's exit with a deadline: a
hang fails the test (the child is killed) instead of hanging the suite.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import select
import signal
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

import pytest

from conveyor import Conveyor, JobState

# Python 3.12+ warns when a process with threads forks (the tests fork on
# purpose, after the blocking twins started their threads).
from .conftest import needs
from .helpers import WAIT

pytestmark = [
    needs("lookup"),
    pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning"),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
]

JOB = "fork.job"


@pytest.fixture
def parent(backend_url: str) -> Iterator[Conveyor]:
    """A sync app that has made a blocking call: its helper thread runs."""
    app = Conveyor(backend_url)
    app.job(JOB, retries=0)(lambda payload: None)
    first = app.enqueue_sync(JOB, {"from": "parent"})
    assert app.portal.running and first.state is JobState.QUEUED
    yield app
    app.close_sync()


def use_in_child(app: Conveyor) -> dict[str, Any]:
    """What the child does with its inherited app: blocking calls only."""
    job = app.enqueue_sync(JOB, {"from": "child", "pid": os.getpid()})
    got = app.get_job_sync(job.id)
    stats = app.stats_sync()
    app.close_sync()
    assert got is not None and got.state is JobState.QUEUED, got
    return {"job": job.id, "queued": stats["default"]["queued"]}


def child_main(app: Conveyor, report: Connection) -> None:
    """Run in the child: report the outcome (or the traceback) on the pipe."""
    try:
        report.send(json.dumps({"ok": use_in_child(app)}))
    except BaseException:
        report.send(json.dumps({"error": traceback.format_exc()}))
    finally:
        report.close()


def wait_for_exit(pid: int, is_done: Callable[[], bool], kill: Callable[[], None]) -> None:
    """Wait for the child until the deadline; a child still running is
    killed and the test fails: it hung."""
    deadline = time.monotonic() + WAIT
    while not is_done():
        if time.monotonic() > deadline:
            kill()
            pytest.fail(f"the forked child {pid} hung: still running after {WAIT} s")
        time.sleep(0.02)


def fork_with_os(app: Conveyor, report: Connection) -> int:
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            child_main(app, report)
        finally:
            os._exit(0)
    status: list[int] = []

    def exited() -> bool:
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            status.append(os.waitstatus_to_exitcode(code))
        return bool(done)

    def kill() -> None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

    wait_for_exit(pid, exited, kill)
    return status[0]


def fork_with_multiprocessing(app: Conveyor, report: Connection) -> int:
    process = multiprocessing.get_context("fork").Process(target=child_main, args=(app, report))
    process.start()
    assert process.pid is not None

    def kill() -> None:
        process.kill()
        process.join()

    wait_for_exit(process.pid, lambda: not process.is_alive(), kill)
    process.join()
    assert process.exitcode is not None
    return process.exitcode


FORKS = {"os.fork": fork_with_os, "multiprocessing": fork_with_multiprocessing}


@needs("fork_after_use")
@pytest.mark.parametrize("how", sorted(FORKS))
def test_a_forked_child_makes_blocking_calls_and_the_parent_goes_on(
    parent: Conveyor, backend_name: str, how: str
) -> None:
    receive, send = multiprocessing.Pipe(duplex=False)
    try:
        code = FORKS[how](parent, send)
        send.close()
        assert receive.poll(WAIT), "the child reported nothing"
        outcome = json.loads(receive.recv())
    finally:
        receive.close()
    assert "error" not in outcome, outcome["error"]
    assert code == 0
    child_job: str = outcome["ok"]["job"]
    assert outcome["ok"]["queued"] == 2  # the parent's job and its own

    # The parent's app still works, on its own threads and connections.
    again = parent.enqueue_sync(JOB, {"from": "parent", "after": "fork"})
    assert parent.get_job_sync(again.id) == again
    shared = parent.get_job_sync(child_job)
    if backend_name == "memory":
        # The child worked on a copy of the parent's memory store.
        assert shared is None
        assert parent.stats_sync()["default"]["queued"] == 2
    else:
        assert shared is not None and shared.payload["from"] == "child"
        assert parent.stats_sync()["default"]["queued"] == 3


@needs("fork_after_use")
def test_a_child_that_forks_again_and_its_child_both_work(
    parent: Conveyor, backend_name: str
) -> None:
    """Fork twice: the child's helper thread (made after the first fork) is
    gone in the grandchild as well, and both start afresh."""
    receive, send = multiprocessing.Pipe(duplex=False)

    def child_that_forks(app: Conveyor, report: Connection) -> None:
        try:
            app.enqueue_sync(JOB, {"from": "child"})
            code = fork_with_os(app, report)  # the grandchild reports on the pipe itself
            if code != 0:
                raise AssertionError(f"the grandchild exited with {code}")
            report.send(json.dumps({"ok": use_in_child(app)}))
        except BaseException:
            report.send(json.dumps({"error": traceback.format_exc()}))
        finally:
            report.close()

    process = multiprocessing.get_context("fork").Process(
        target=child_that_forks, args=(parent, send)
    )
    process.start()
    send.close()
    assert process.pid is not None

    def kill() -> None:
        process.kill()
        process.join()

    try:
        wait_for_exit(process.pid, lambda: not process.is_alive(), kill)
        outcomes = []
        while receive.poll(WAIT):
            try:
                outcomes.append(json.loads(receive.recv()))
            except EOFError:  # both children closed their end
                break
    finally:
        receive.close()
    errors = [o["error"] for o in outcomes if "error" in o]
    assert not errors, "\n".join(errors)
    assert process.exitcode == 0
    # Queued jobs each saw: the grandchild its parent's, its grandparent's and
    # its own; the child the same plus a second of its own (on a shared
    # store, also the grandchild's).
    grandchild, child = (o["ok"]["queued"] for o in outcomes)
    assert grandchild == 3
    assert child == (3 if backend_name == "memory" else 4)
    assert parent.stats_sync()["default"]["queued"] == (1 if backend_name == "memory" else 4)


@needs("fork_after_use")
def test_forks_while_another_thread_makes_blocking_calls(parent: Conveyor) -> None:
    """The parent's threads may be mid-call when it forks (a web server
    thread enqueueing): the child still works, and so do those threads."""
    stop = threading.Event()
    made: list[str] = []
    failures: list[BaseException] = []

    def keep_enqueueing() -> None:
        try:
            while not stop.is_set():
                made.append(parent.enqueue_sync(JOB, {"from": "busy thread"}).id)
        except BaseException as exc:
            failures.append(exc)

    busy = threading.Thread(target=keep_enqueueing)
    busy.start()
    try:
        for _ in range(3):
            count = len(made)
            deadline = time.monotonic() + WAIT
            while len(made) == count and time.monotonic() < deadline:
                time.sleep(0.001)  # fork while calls are going on
            receive, send = multiprocessing.Pipe(duplex=False)
            try:
                code = fork_with_os(parent, send)
                send.close()
                outcome = json.loads(receive.recv()) if receive.poll(WAIT) else {}
            finally:
                receive.close()
            assert "error" not in outcome, outcome["error"]
            assert code == 0 and "ok" in outcome
    finally:
        stop.set()
        busy.join(WAIT)
    assert not busy.is_alive()
    assert not failures, failures
    assert made and parent.get_job_sync(made[-1]) is not None


def test_sqlite_writes_of_a_child_survive_the_parent_closing_first(
    sqlite_urls: Callable[[], str],
) -> None:
    """The child must not keep using the parent's SQLite connections' lock
    state: if it did, the parent's last close could checkpoint and delete the
    WAL under the child, and the child's later writes would be lost."""
    url = sqlite_urls()
    parent = Conveyor(url)
    parent.job(JOB)(lambda payload: None)
    parent.enqueue_sync(JOB, {"from": "parent"})
    ready_r, ready_w = os.pipe()
    closed_r, closed_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(ready_r)
            os.close(closed_w)
            parent.enqueue_sync(JOB, {"from": "child", "n": 1})
            os.write(ready_w, b"1")
            if os.read(closed_r, 1) == b"1":  # the parent has closed its app
                parent.enqueue_sync(JOB, {"from": "child", "n": 2})
                parent.close_sync()
                code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(closed_r)
    status: list[int] = []

    def exited() -> bool:
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            status.append(os.waitstatus_to_exitcode(code))
        return bool(done)

    def kill() -> None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

    try:
        readable, _, _ = select.select([ready_r], [], [], WAIT)
        assert readable and os.read(ready_r, 1) == b"1", "the child did not start"
        parent.close_sync()
        os.write(closed_w, b"1")
    finally:
        os.close(ready_r)
        os.close(closed_w)
        wait_for_exit(pid, exited, kill)
    assert status == [0]

    fresh = Conveyor(url)
    try:
        jobs = fresh.list_jobs_sync(name=JOB)
    finally:
        fresh.close_sync()
    assert sorted(str(job.payload) for job in jobs) == sorted(
        str(p) for p in ({"from": "parent"}, {"from": "child", "n": 1}, {"from": "child", "n": 2})
    )


def test_the_fork_hooks_keep_no_app_alive(backend_url: str) -> None:
    """The hooks are registered once per process and reach the apps weakly:
    an app dropped by its owner is freed, and a fork after that is fine."""
    app = Conveyor(backend_url)
    app.job(JOB)(lambda payload: None)
    app.enqueue_sync(JOB, None)
    app.close_sync()
    gone = weakref.ref(app)
    del app
    gc.collect()
    assert gone() is None
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
