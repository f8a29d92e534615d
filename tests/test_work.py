"""`bureau_agent.work.run_job`: small jobs on the event loop, large ones in the pool."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from bureau_agent import work
from psi import group


class CountingExecutor(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(1)
        self.submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def blind(executor: CountingExecutor, count: int) -> tuple[list[bytes], list[bytes]]:
    inputs = [f"input {i}".encode() for i in range(count)]
    batch = asyncio.run(work.run_job(executor, count, work.blind_chunk, inputs))
    return batch.blinds, batch.blinded


def test_a_query_sized_job_runs_inline_and_a_batch_in_the_pool() -> None:
    with CountingExecutor() as pool:
        blinds, blinded = blind(pool, work.INLINE_ELEMENTS)
        assert pool.submitted == 0
        assert len(blinds) == len(blinded) == work.INLINE_ELEMENTS
        blinds, blinded = blind(pool, work.INLINE_ELEMENTS + 1)
        assert pool.submitted == 1
        assert len(blinded) == work.INLINE_ELEMENTS + 1
    # Either way the result is the same kind of thing: valid group elements.
    for element in blinded:
        group.decode_element(element)
