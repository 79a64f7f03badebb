"""A completed first attempt's history entry on bullmq:// is made from the
hash's texts (calls._completed_entry, on every job a worker completes): it
must be the very text the generic path (records.entry_text) writes, for any
texts a hash may hold; texts it cannot take go the generic way."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from conveyor.backends.bullmq.calls import _completed_entry, history_with
from conveyor.backends.records import entry_text
from conveyor.job import AttemptOutcome

COMPLETED = AttemptOutcome.COMPLETED
DIGITS = st.text(alphabet="0123456789", min_size=1, max_size=17)
# Mostly what the scripts write: a count, a time in epoch milliseconds.
ATTEMPTS = st.one_of(st.builds(str, st.integers(0, 50)), DIGITS, st.just("") | st.none())
STARTED = st.one_of(
    st.builds(str, st.integers(0, 10**15)),
    st.builds(str, st.integers(1_700_000_000_000, 1_900_000_000_000)),
    DIGITS,
    # int() reads fullwidth digits too; the short way takes ASCII only.
    st.sampled_from(["", "1e3", "-5", "\uff11\uff12\uff13\uff14\uff15"]) | st.none(),
)
FINISHED = st.one_of(
    st.floats(0, 4e9, allow_nan=False), st.floats(allow_nan=True, allow_infinity=True)
)


def generic(attempts: str | None, started: str | None, finished_at: float) -> str:
    started_at = int(started) / 1000 if started else None
    return "[" + entry_text(int(attempts or 0), started_at, finished_at, COMPLETED, None) + "]"


@given(ATTEMPTS, STARTED, FINISHED)
@example("1", "1764200000450", 1764200000.4567891)
@example("1", "1764200000000", 1764200000.0)
@example("2", "1000", 1.5)
@example("01", "1764200000450", 1.0)
@example("1", "0999", 1.0)
@example("1", "01764200000450", 1.0)
@example("1", "12345678901234567", 1.0)
@example("1", "9999999999999999", 1.0)
def test_the_entry_is_the_generic_text(
    attempts: str | None, started: str | None, finished_at: float
) -> None:
    try:
        expected = generic(attempts, started, finished_at)
    except ValueError:  # a text int() refuses: the generic path raises, as before
        assert _completed_entry(attempts, started, finished_at) is None
        return
    assert history_with((attempts, started, None), COMPLETED, finished_at, None) == expected
    assert history_with((attempts, started, "[]"), COMPLETED, finished_at, None) == expected


def test_plain_texts_take_the_short_way() -> None:
    made = _completed_entry("1", "1764200000450", 1764200000.5)
    assert made == generic("1", "1764200000450", 1764200000.5)
    assert _completed_entry("1", "1e3", 1.0) is None
