"""RFC 9497 Appendix A.1 known-answer tests, byte for byte."""

from __future__ import annotations

import pytest

from psi import oprf
from psi.oprf import Mode
from tests.oprf_vectors import OWN_COPY, SHARED_COPY, BatchVector, load_vectors

VECTORS = load_vectors()
BY_MODE = {m: [v for v in VECTORS if v.mode is m] for m in Mode}


def ids(vectors: list[BatchVector]) -> list[str]:
    return [v.id for v in vectors]


def test_vector_file_covers_every_mode_and_batch_size() -> None:
    seen = {(v.mode, len(v.inputs)) for v in VECTORS}
    assert seen == {(m, n) for m in Mode for n in (1, 2)} - {(Mode.OPRF, 2)}


@pytest.mark.skipif(not SHARED_COPY.exists(), reason="shared vectors not beside the checkout")
def test_own_copy_is_identical_to_shared() -> None:
    assert OWN_COPY.read_bytes() == SHARED_COPY.read_bytes()


@pytest.mark.parametrize("v", VECTORS, ids=ids(VECTORS))
def test_derive_key_pair(v: BatchVector) -> None:
    sk, pk = oprf.derive_key_pair(v.seed, v.key_info, v.mode)
    assert sk == v.sk
    if v.pk is not None:
        assert pk == v.pk


@pytest.mark.parametrize("v", BY_MODE[Mode.OPRF], ids=ids(BY_MODE[Mode.OPRF]))
def test_oprf_mode(v: BatchVector) -> None:
    blinds, blinded = oprf._blind_batch_with(v.inputs, v.blinds, Mode.OPRF)
    assert tuple(blinded) == v.blinded
    evaluated = oprf.blind_evaluate_batch(v.sk, blinded)
    assert tuple(evaluated) == v.evaluated
    assert tuple(oprf.finalize_batch(v.inputs, blinds, evaluated, Mode.OPRF)) == v.outputs
    for x, b, e, out in zip(v.inputs, v.blinds, v.evaluated, v.outputs, strict=True):
        assert oprf.blind_evaluate(v.sk, oprf._blind_with(x, b, Mode.OPRF)[1]) == e
        assert oprf.finalize(x, b, e, Mode.OPRF) == out
        assert oprf.evaluate(v.sk, x, Mode.OPRF) == out


@pytest.mark.parametrize("v", BY_MODE[Mode.VOPRF], ids=ids(BY_MODE[Mode.VOPRF]))
def test_voprf_mode(v: BatchVector) -> None:
    assert v.pk is not None and v.proof is not None and v.proof_r is not None
    _, blinded = oprf._blind_batch_with(v.inputs, v.blinds, Mode.VOPRF)
    assert tuple(blinded) == v.blinded
    evaluated, proof = oprf._verifiable_blind_evaluate_batch_with(v.sk, v.pk, blinded, v.proof_r)
    assert tuple(evaluated) == v.evaluated
    assert proof == v.proof
    outputs = oprf.verifiable_finalize_batch(v.pk, v.inputs, v.blinds, blinded, evaluated, proof)
    assert tuple(outputs) == v.outputs
    assert tuple(oprf.evaluate(v.sk, x, Mode.VOPRF) for x in v.inputs) == v.outputs


@pytest.mark.parametrize("v", BY_MODE[Mode.POPRF], ids=ids(BY_MODE[Mode.POPRF]))
def test_poprf_mode(v: BatchVector) -> None:
    assert v.pk is not None and v.proof is not None and v.proof_r is not None
    assert v.info is not None
    blinds, blinded, tweaked = oprf._poprf_blind_batch_with(v.inputs, v.blinds, v.info, v.pk)
    assert tuple(blinded) == v.blinded
    evaluated, proof = oprf._poprf_blind_evaluate_batch_with(v.sk, blinded, v.info, v.proof_r)
    assert tuple(evaluated) == v.evaluated
    assert proof == v.proof
    outputs = oprf.poprf_finalize_batch(
        v.inputs, blinds, blinded, evaluated, proof, v.info, tweaked
    )
    assert tuple(outputs) == v.outputs
    assert tuple(oprf.poprf_evaluate(v.sk, x, v.info) for x in v.inputs) == v.outputs
