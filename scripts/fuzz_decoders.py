"""Coverage-guided fuzzing (atheris, libFuzzer) of the decoders that read
bytes from other parties.  Each input picks a decoder by its first byte;
any exception other than the decoder's documented error types is a crash.

    python -m scripts.fuzz_decoders -runs=100000        # bounded
    python -m scripts.fuzz_decoders -max_total_time=600 # ten minutes

`tests/test_fuzz.py` runs it briefly when atheris is installed.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable

import atheris

with atheris.instrument_imports(include=["psi"]):
    from psi import audit, disclosure, group, merkle, oprf, threshold
    from psi.errors import DeserializeError, InvalidInputError, PeerError, VerifyError
    from psi.oprf import Mode

_SK, _PK = oprf.derive_key_pair(b"\x01" * 32, b"fuzz", Mode.VOPRF)
_BLINDS, _BLINDED = oprf.blind_batch([b"a", b"b"], Mode.VOPRF)
_LEAVES = [merkle.leaf_hash(bytes([i])) for i in range(5)]
_ROOT = merkle.root(_LEAVES)


def _rest(fdp: atheris.FuzzedDataProvider) -> bytes:
    return bytes(fdp.ConsumeBytes(fdp.remaining_bytes()))


def _elements(fdp: atheris.FuzzedDataProvider, most: int) -> list[bytes]:
    return [fdp.ConsumeBytes(32) for _ in range(fdp.ConsumeIntInRange(0, most))]


_TARGETS: list[tuple[Callable[[atheris.FuzzedDataProvider], object], tuple[type, ...]]] = [
    (lambda f: group.decode_element(f.ConsumeBytes(40)), (DeserializeError,)),
    (lambda f: group.decode_scalar(f.ConsumeBytes(40)), (DeserializeError,)),
    (
        lambda f: oprf.verify_evaluation_proof(
            f.ConsumeBytes(32), _BLINDED, _elements(f, 3), f.ConsumeBytes(64), Mode.VOPRF
        ),
        (PeerError,),
    ),
    (
        lambda f: threshold.FeldmanCommitments.decode(_elements(f, 12)),
        (DeserializeError, InvalidInputError),
    ),
    (lambda f: audit.decode_entry(_rest(f)), (DeserializeError,)),
    (
        lambda f: disclosure.DisclosureRequest.decode(_rest(f)),
        (DeserializeError,),
    ),
    (
        lambda f: disclosure.DisclosureDecision.decode(_rest(f)),
        (DeserializeError,),
    ),
    (
        lambda f: merkle.verify_inclusion(
            f.ConsumeBytes(32),
            f.ConsumeIntInRange(-1, 8),
            f.ConsumeIntInRange(-1, 8),
            [f.ConsumeBytes(32) for _ in range(f.ConsumeIntInRange(0, 4))],
            _ROOT,
        ),
        (VerifyError,),
    ),
]


def test_one_input(data: bytes) -> None:
    """One libFuzzer input: a decoder chosen by the first byte, then its bytes."""
    fdp = atheris.FuzzedDataProvider(data)
    target, allowed = _TARGETS[fdp.ConsumeIntInRange(0, len(_TARGETS) - 1)]
    with contextlib.suppress(*allowed):
        target(fdp)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
