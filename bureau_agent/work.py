"""CPU-bound steps of the agent, as plain functions a process pool can run.

Each takes and returns only bytes, ints, lists and small frozen dataclasses
of them (cheap to pickle) and calls `psi`; nothing here does I/O.
`exit_with_parent` is the pool's initializer; `run_job` chooses between the
pool and the caller's event loop.
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
from psi.oprf import Mode

__all__ = [
    "Answer",
    "BlindedBatch",
    "FinishedBatch",
    "blind_chunk",
    "custodian_evaluate",
    "exit_with_parent",
    "finish_batch",
    "run_job",
    "warm_up",
]

MODE = Mode.VOPRF

T = TypeVar("T")

# Jobs of at most this many elements run on the caller's event loop (about
# 0.1-0.3 ms of libsodium per element): an interactive query must not wait
# in the pool's queue behind the enrollment batches of every bureau.
INLINE_ELEMENTS = 8


async def run_job(executor: Executor, elements: int, fn: Callable[..., T], *args: object) -> T:
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


@dataclass(frozen=True)
class BlindedBatch:
    """A blinded batch, with the random combination its custodians' answers
    are checked against when they come without proofs (None: with proofs;
    see `psi.threshold.batch_check`)."""

    blinds: list[bytes]
    blinded: list[bytes]
    check: threshold.BatchCheck | None


def blind_chunk(inputs: Sequence[bytes], checked: bool = True) -> BlindedBatch:
    """Blind a batch of OPRF inputs and, if `checked`, draw its check."""
    blinds, blinded = oprf.blind_batch(inputs, MODE)
    return BlindedBatch(blinds, blinded, threshold.batch_check(blinded) if checked else None)


def custodian_evaluate(
    index: int,
    share: bytes,
    participants: Sequence[int],
    blinded: Sequence[bytes],
    proven: bool = True,
) -> tuple[list[bytes], bytes]:
    """A custodian's weighted evaluation of a batch, with its proof unless
    `proven` is false (the proof slot is then empty).  A bureau applies its
    own share with this too, unproven."""
    key = threshold.KeyShare(index, share)
    evaluate = threshold.partial_evaluate if proven else threshold.unproven_partial_evaluate
    partial = evaluate(key, participants, blinded)
    return list(partial.evaluated), partial.proof


@dataclass(frozen=True)
class FinishedBatch:
    """Tags for every input, or the custodians whose answers failed the check."""

    tags: list[bytes]
    bad: dict[int, str]


Answer = tuple[int, Sequence[bytes], bytes]  # share index, evaluated elements, proof


def finish_batch(
    inputs: Sequence[bytes],
    blinds: Sequence[bytes],
    blinded: Sequence[bytes],
    partials: Sequence[Answer],
    public_shares: Mapping[int, bytes],
    own: int | None = None,
    check: threshold.BatchCheck | None = None,
    proven: Sequence[Answer] = (),
) -> FinishedBatch:
    """Check the custodians' answers, combine, unblind, finalize and truncate.

    With `check`, `partials` are unproven and `proven` holds every
    participant's proven answer for `check.composite`
    (`psi.threshold.checked_finalize`); without, each partial carries its
    own proof (`verified_finalize`).  Share `own` is this bureau's and is
    not checked.  Every custodian at fault is named, so the caller avoids
    all of them in one round.
    """
    as_partials = [threshold.PartialEvaluation(i, tuple(e), p) for i, e, p in partials]
    try:
        if check is None:
            outputs = threshold.verified_finalize(
                inputs, blinds, blinded, as_partials, public_shares, trusted=own
            )
        else:
            outputs = threshold.checked_finalize(
                inputs,
                blinds,
                check,
                as_partials,
                [threshold.PartialEvaluation(i, tuple(e), p) for i, e, p in proven],
                public_shares,
                trusted=own,
            )
    except threshold.PartialsRejected as exc:
        return FinishedBatch([], exc.by_custodian)
    return FinishedBatch([tags.tag_from_output(o) for o in outputs], {})
