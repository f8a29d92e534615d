"""CPU-bound steps of the agent, as plain functions a process pool can run.

Each takes and returns only bytes, ints and lists (cheap to pickle) and calls
`psi`; nothing here does I/O.  `exit_with_parent` is the pool's initializer;
`run_job` chooses between the pool and the caller's event loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TypeVar

from psi import oprf, tags, threshold
from psi.errors import DeserializeError, VerifyError
from psi.oprf import Mode

__all__ = [
    "FinishedBatch",
    "blind_chunk",
    "custodian_evaluate",
    "exit_with_parent",
    "finish_batch",
    "own_evaluate",
    "run_job",
    "warm_up",
]

MODE = Mode.VOPRF

T = TypeVar("T")

# Jobs of at most this many elements run on the caller's event loop (about
# 0.1-0.3 ms of libsodium per element): an interactive query must not wait
# in the pool's queue behind the enrollment batches of every bureau.
INLINE_ELEMENTS = 8


async def run_job(
    executor: Executor, elements: int, fn: Callable[..., T], *args: object
) -> T:
    """`fn(*args)` in the pool, or right here when it covers at most
    `INLINE_ELEMENTS` elements."""
    if elements <= INLINE_ELEMENTS:
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)


def exit_with_parent(parent: int) -> None:
    """Pool initializer: end this worker when the agent that spawned it is gone.

    A worker of a spawned pool holds both ends of its task queue, so it never
    sees end-of-file when the agent dies (`kill -9`) and would wait forever."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def warm_up() -> int:
    """Nothing but this module's imports (libsodium included): run once per worker
    at start-up, so that the first enrollment does not pay for spawning the pool."""
    return len(oprf.SUITE_ID)


def blind_chunk(inputs: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Blind a batch of OPRF inputs: (blinds, blinded elements)."""
    return oprf.blind_batch(inputs, MODE)


def custodian_evaluate(
    index: int, share: bytes, participants: Sequence[int], blinded: Sequence[bytes]
) -> tuple[list[bytes], bytes]:
    """A custodian's weighted evaluation of a batch with its proof."""
    partial = threshold.partial_evaluate(threshold.KeyShare(index, share), participants, blinded)
    return list(partial.evaluated), partial.proof


def own_evaluate(
    index: int, share: bytes, participants: Sequence[int], blinded: Sequence[bytes]
) -> tuple[list[bytes], bytes]:
    """This bureau's own custodian share applied to its own batch (no proof:
    see `threshold.own_partial_evaluate`); the proof slot is empty."""
    partial = threshold.own_partial_evaluate(
        threshold.KeyShare(index, share), participants, blinded
    )
    return list(partial.evaluated), partial.proof


@dataclass(frozen=True)
class FinishedBatch:
    """Tags for every input, or the custodians whose answers failed verification."""

    tags: list[bytes]
    bad: dict[int, str]


def finish_batch(
    inputs: Sequence[bytes],
    blinds: Sequence[bytes],
    blinded: Sequence[bytes],
    partials: Sequence[tuple[int, Sequence[bytes], bytes]],
    public_shares: Mapping[int, bytes],
    own: int | None = None,
) -> FinishedBatch:
    """Verify every custodian's answer, combine, unblind, finalize and truncate.

    Every answer is checked (not just up to the first bad one) so the caller
    learns all custodians to avoid in one round; the partial of share `own`
    (this bureau's, from `own_evaluate`) is not: it carries no proof.
    """
    participants = [index for index, _, _ in partials]
    verified: list[threshold.PartialEvaluation] = []
    bad: dict[int, str] = {}
    for index, evaluated, proof in partials:
        partial = threshold.PartialEvaluation(index, tuple(evaluated), proof)
        if index == own:
            verified.append(partial)
            continue
        try:
            threshold.verify_partial(partial, public_shares[index], participants, blinded)
        except (VerifyError, DeserializeError) as exc:
            bad[index] = str(exc)
            continue
        verified.append(partial)
    if bad:
        return FinishedBatch([], bad)
    outputs = threshold.finalize(inputs, blinds, verified)
    return FinishedBatch([tags.tag_from_output(o) for o in outputs], {})
