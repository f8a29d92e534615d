"""Token buckets with an injected clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bureau_agent.quota import TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill() -> None:
    clock = Clock()
    q = TokenBuckets(rate=100, burst=1000, clock=clock)
    assert q.take("FRA", 1000) is None
    refused = q.take("FRA", 10)
    assert refused is not None and refused.caller == "FRA"
    assert refused.retry_after == pytest.approx(0.1)
    assert "retry after 0.1 s" in refused.message("elements")
    clock.now = 0.1
    assert q.take("FRA", 10) is None
    assert q.take("DEU", 1000) is None  # buckets are per caller


def test_a_cost_above_the_burst_can_never_pass() -> None:
    q = TokenBuckets(rate=1, burst=10, clock=Clock())
    refused = q.take("FRA", 11)
    assert refused is not None and math.isinf(refused.retry_after)


@given(st.lists(st.tuples(st.floats(0, 5), st.floats(0, 50)), max_size=60))
def test_never_more_than_burst_plus_rate_times_time(steps: list[tuple[float, float]]) -> None:
    clock = Clock()
    q = TokenBuckets(rate=10, burst=100, clock=clock)
    granted = 0.0
    for dt, cost in steps:
        clock.now += dt
        if q.take("FRA", cost) is None:
            granted += cost
    assert granted <= 100 + 10 * clock.now + 1e-6


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="positive"):
        TokenBuckets(rate=0, burst=10)
