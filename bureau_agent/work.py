"""CPU-bound steps of the agent, as plain functions a process pool can run.

Each takes and returns only bytes, ints and lists (cheap to pickle) and calls
`psi`; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from psi import oprf, tags, threshold
from psi.errors import DeserializeError, VerifyError
from psi.oprf import Mode

__all__ = ["FinishedBatch", "blind_chunk", "custodian_evaluate", "finish_batch"]

MODE = Mode.VOPRF


def blind_chunk(inputs: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Blind a batch of OPRF inputs: (blinds, blinded elements)."""
    return oprf.blind_batch(inputs, MODE)


def custodian_evaluate(
    index: int, share: bytes, participants: Sequence[int], blinded: Sequence[bytes]
) -> tuple[list[bytes], bytes]:
    """A custodian's weighted evaluation of a batch with its proof."""
    partial = threshold.partial_evaluate(threshold.KeyShare(index, share), participants, blinded)
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
) -> FinishedBatch:
    """Verify every custodian's answer, combine, unblind, finalize and truncate.

    Every answer is checked (not just up to the first bad one) so the caller
    learns all custodians to avoid in one round.
    """
    participants = [index for index, _, _ in partials]
    verified: list[threshold.PartialEvaluation] = []
    bad: dict[int, str] = {}
    for index, evaluated, proof in partials:
        partial = threshold.PartialEvaluation(index, tuple(evaluated), proof)
        try:
            threshold.verify_partial(partial, public_shares[index], participants, blinded)
        except (VerifyError, DeserializeError) as exc:
            bad[index] = str(exc)
            continue
        verified.append(partial)
    if bad:
        return FinishedBatch([], bad)
    combined = threshold.combine(verified)
    outputs = oprf.finalize_batch(inputs, blinds, combined, MODE)
    return FinishedBatch([tags.tag_from_output(o) for o in outputs], {})
