"""Retries with exponential backoff, for idempotent calls only.

What the agent retries, and why only these:

* a custodian's Evaluate: a pure function of the blinded batch, so asking
  again cannot change anything (`bureau_agent.tagging`);
* hub reads (ListDatasets, GetStatus, a disclosure case): they change nothing;
* follow-mode streams (notices, disclosure cases): they resume after the
  last sequence seen, so a reconnect neither loses nor repeats an item.

Enrollments, updates, queries (each is audited and records its matches),
disclosure requests and decisions are never retried automatically: the caller
sees the error and decides.

A retry waits `initial`, then `factor` times longer each time up to
`maximum`, with +-`jitter` so that many agents do not reconnect in step; a
RESOURCE_EXHAUSTED answer's `retry-after-ms` trailer is honoured when it is
no longer than `maximum`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import grpc

__all__ = [
    "DEFAULT_BACKOFF",
    "RECONNECT_OPTIONS",
    "TRANSIENT",
    "Backoff",
    "call_idempotent",
    "retry_after",
]

log = logging.getLogger("blindmatch.retry")

T = TypeVar("T")

# Codes after which the same idempotent call may succeed if asked again.
TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})

# gRPC's own reconnect backoff grows to 120 s by default: a peer that comes
# back would stay unreachable for minutes.  Keep it short.
RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 5_000),
]

_jitter = random.SystemRandom()


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: initial, initial*factor, ... capped at maximum."""

    initial: float = 0.2
    factor: float = 2.0
    maximum: float = 5.0
    jitter: float = 0.2

    def delays(self) -> Iterator[float]:
        """An endless sequence of waits, each jittered by +-`jitter`."""
        delay = self.initial
        while True:
            yield delay * (1.0 + _jitter.uniform(-self.jitter, self.jitter))
            delay = min(self.maximum, delay * self.factor)


DEFAULT_BACKOFF = Backoff()


def retry_after(exc: grpc.aio.AioRpcError) -> float | None:
    """The server's `retry-after-ms` trailer, in seconds, if it sent one."""
    for key, value in exc.trailing_metadata() or ():
        if key == "retry-after-ms":
            try:
                return max(0.0, int(str(value)) / 1000)
            except ValueError:
                return None
    return None


async def call_idempotent(
    make_call: Callable[[], Awaitable[T]],
    *,
    what: str,
    attempts: int = 4,
    backoff: Backoff = DEFAULT_BACKOFF,
) -> T:
    """Await `make_call()`, asking again after a transient error, at most
    `attempts` times in all.  Only for calls that change nothing."""
    delays = backoff.delays()
    attempt = 1
    while True:
        try:
            return await make_call()
        except grpc.aio.AioRpcError as exc:
            if attempt >= attempts or exc.code() not in TRANSIENT:
                raise
            hinted = retry_after(exc)
            if hinted is not None and hinted > backoff.maximum:
                raise  # the server asks for a longer pause than a retry should hide
            delay = hinted if hinted is not None else next(delays)
            log.info(
                "retrying an idempotent call",
                extra={
                    "call": what,
                    "attempt": attempt,
                    "code": exc.code().name,
                    "retry_in_s": round(delay, 3),
                },
            )
            attempt += 1
            await asyncio.sleep(delay)
