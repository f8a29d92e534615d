"""Per-bureau quotas: token buckets, so a fishing bureau is slowed, not served.

A bucket holds up to `burst` tokens and refills at `rate` tokens per second;
a request costing n tokens (n elements, n tags, or 1 query) passes when the
bucket holds n, else it is refused with the wait after which it would pass.
The clock is injected so the rules are tested without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["QuotaExceeded", "TokenBuckets"]


@dataclass(frozen=True)
class QuotaExceeded:
    """A refusal: who, how much was asked, and when to retry."""

    caller: str
    cost: float
    retry_after: float

    def message(self, what: str) -> str:
        return (
            f"quota exceeded for {self.caller}: {self.cost:g} {what} asked; "
            f"retry after {self.retry_after:.1f} s"
        )


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class TokenBuckets:
    """One token bucket per caller, all with the same rate and burst."""

    rate: float
    burst: float
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst <= 0:
            raise ValueError("quota rate and burst must be positive")

    def take(self, caller: str, cost: float) -> QuotaExceeded | None:
        """Spend `cost` tokens of `caller`'s bucket, or say when it could."""
        now = self.clock()
        bucket = self._buckets.get(caller)
        if bucket is None:
            bucket = self._buckets[caller] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if cost > self.burst:
            return QuotaExceeded(caller, cost, float("inf"))
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return None
        return QuotaExceeded(caller, cost, (cost - bucket.tokens) / self.rate)
