"""The idle rule both relay paths drive (relay/result.py), on virtual time: an idle tunnel
is closed between `idle` and 1.25 x `idle` after its last byte, whatever the phase of
the last byte against the samples."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chainer.relay.result import StillCounter

IDLE_MS = 1000


def closed_at(last_byte_ms: int) -> int:
    """When the rule ends a tunnel whose bytes flowed (one a millisecond) until
    last_byte_ms and then stopped; times in whole milliseconds."""
    rule = StillCounter.idle(IDLE_MS)
    now = 0
    for _ in range(1000):
        now += int(rule.step)
        moved = min(now, last_byte_ms)
        if rule.sample((moved, 0)):
            return now
    raise AssertionError("never closed")


@given(st.integers(min_value=1, max_value=20 * IDLE_MS))
def test_closed_between_idle_and_one_and_a_quarter_idle_after_the_last_byte(last: int) -> None:
    assert IDLE_MS <= closed_at(last) - last <= IDLE_MS * 5 // 4


@pytest.mark.parametrize(
    ("samples", "closes_on"),
    [
        ([(0, 0)] * 5, 4),  # the first sample only sets the baseline
        ([(1, 0), (2, 0), (2, 0), (2, 0), (2, 0), (2, 0)], 5),
        ([(0, 0), (0, 0), (0, 0), (0, 1), (0, 1), (0, 1), (0, 1), (0, 1)], 7),  # down counts too
    ],
)
def test_four_still_samples_in_a_row(samples: list[tuple[int, int]], closes_on: int) -> None:
    rule = StillCounter.idle(1.0)
    said = [rule.sample(s) for s in samples]
    assert said.index(True) == closes_on
    assert rule.step == 0.25


def test_linger_is_one_still_sample() -> None:
    rule = StillCounter(1.0, 1)
    assert [rule.sample(s) for s in [(5, 5), (6, 5), (6, 5)]] == [False, False, True]
