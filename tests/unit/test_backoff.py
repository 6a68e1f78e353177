from __future__ import annotations

import pytest

from tickpipe_common.backoff import Backoff


def test_grows_to_the_cap_and_stays_there_for_any_number_of_attempts() -> None:
    backoff = Backoff(0.5, 30.0)
    delays = [backoff.next_delay() for _ in range(100_000)]  # ~35 days of outage at the cap
    assert 0.25 <= delays[0] <= 0.5
    assert all(15.0 <= d <= 30.0 for d in delays[10:])
    assert backoff.attempts == 100_000
    backoff.reset()
    assert backoff.next_delay() <= 0.5


@pytest.mark.parametrize(("initial", "maximum", "factor"), [(1, 1, 2), (1, 10, 1), (0.1, 5, 10)])
def test_edge_factors_never_overflow(initial: float, maximum: float, factor: float) -> None:
    backoff = Backoff(initial, maximum, factor)
    for _ in range(5_000):
        assert initial / 2 <= backoff.next_delay() <= maximum
