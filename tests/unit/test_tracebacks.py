"""The worker's bounding of tracebacks (the cut itself; the conformance
suite checks what reaches the job on every backend)."""

from __future__ import annotations

from collections.abc import Callable

from conveyor.worker.acks import TRACEBACK_LIMIT, bounded_traceback


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def raised_by(fn: Callable[[], None]) -> BaseException:
    try:
        fn()
    except BaseException as caught:
        return caught
    raise AssertionError("did not raise")


def test_a_short_traceback_is_kept_whole() -> None:
    tb = bounded_traceback(raised(ValueError("small")))
    assert tb.startswith("Traceback (most recent call last):\n")
    assert "in raised" in tb
    assert tb.endswith("ValueError: small\n")
    assert "left out" not in tb


def test_a_huge_message_is_cut_to_the_limit() -> None:
    tb = bounded_traceback(raised(ValueError("é" * 50_000)))
    assert len(tb.encode()) <= TRACEBACK_LIMIT
    assert "ValueError: éé" in tb
    assert tb.endswith("... (cut)\n")


def test_chained_exceptions_keep_the_last_one() -> None:
    def inner() -> None:
        raise KeyError("first")

    def outer() -> None:
        try:
            inner()
        except KeyError as exc:
            raise RuntimeError("second") from exc

    exc = raised_by(outer)
    tb = bounded_traceback(exc)
    assert "KeyError: 'first'" in tb
    assert "direct cause" in tb
    assert tb.endswith("RuntimeError: second\n")
    cut = bounded_traceback(exc, limit=400)
    assert len(cut.encode()) <= 400
    assert "earlier frame(s) left out" in cut
    assert cut.endswith("RuntimeError: second\n")
