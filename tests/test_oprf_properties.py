"""Property tests of the OPRF protocol: correctness, and rejection of tampering."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from psi import group, oprf
from psi.errors import DeserializeError, InvalidInputError, VerifyError
from psi.oprf import Mode

inputs = st.lists(st.binary(max_size=64), min_size=1, max_size=6)
seeds = st.binary(min_size=32, max_size=32)
modes = st.sampled_from([Mode.OPRF, Mode.VOPRF])


@settings(max_examples=40, deadline=None)
@given(seed=seeds, xs=inputs, mode=modes)
def test_blind_evaluate_finalize_equals_evaluate(seed: bytes, xs: list[bytes], mode: Mode) -> None:
    sk, pk = oprf.derive_key_pair(seed, b"test key", mode)
    blinds, blinded = oprf.blind_batch(xs, mode)
    if mode is Mode.OPRF:
        evaluated = oprf.blind_evaluate_batch(sk, blinded)
        outputs = oprf.finalize_batch(xs, blinds, evaluated, mode)
    else:
        evaluated, proof = oprf.verifiable_blind_evaluate_batch(sk, pk, blinded)
        outputs = oprf.verifiable_finalize_batch(pk, xs, blinds, blinded, evaluated, proof)
    assert outputs == [oprf.evaluate(sk, x, mode) for x in xs]


@settings(max_examples=25, deadline=None)
@given(seed=seeds, xs=inputs)
def test_poprf_round_trip(seed: bytes, xs: list[bytes]) -> None:
    sk, pk = oprf.derive_key_pair(seed, b"k", Mode.POPRF)
    blinds, blinded, tweaked = oprf.poprf_blind_batch(xs, b"info", pk)
    evaluated, proof = oprf.poprf_blind_evaluate_batch(sk, blinded, b"info")
    outputs = oprf.poprf_finalize_batch(xs, blinds, blinded, evaluated, proof, b"info", tweaked)
    assert outputs == [oprf.poprf_evaluate(sk, x, b"info") for x in xs]
    with pytest.raises(VerifyError):
        _, _, other = oprf.poprf_blind_batch(xs, b"other info", pk)
        oprf.poprf_finalize_batch(xs, blinds, blinded, evaluated, proof, b"other info", other)


def test_blinded_elements_differ_between_runs() -> None:
    # The blinded element is uniformly random: the same input twice looks unrelated.
    _, a = oprf.blind(b"FRA:12AB34567", Mode.VOPRF)
    _, b = oprf.blind(b"FRA:12AB34567", Mode.VOPRF)
    assert a != b


def test_modes_are_domain_separated() -> None:
    sk, _ = oprf.derive_key_pair(bytes(32), b"k", Mode.OPRF)
    assert oprf.evaluate(sk, b"x", Mode.OPRF) != oprf.evaluate(sk, b"x", Mode.VOPRF)


def _voprf_batch(n: int = 3) -> tuple[bytes, bytes, list[bytes], list[bytes], list[bytes], bytes]:
    sk, pk = oprf.generate_key_pair()
    xs = [bytes([i]) * 5 for i in range(n)]
    _, blinded = oprf.blind_batch(xs, Mode.VOPRF)
    evaluated, proof = oprf.verifiable_blind_evaluate_batch(sk, pk, blinded)
    return sk, pk, xs, blinded, evaluated, proof


@settings(max_examples=30, deadline=None)
@given(position=st.integers(min_value=0, max_value=2), bit=st.integers(min_value=0, max_value=255))
def test_tampered_evaluated_element_is_rejected(position: int, bit: int) -> None:
    _, pk, _, blinded, evaluated, proof = _voprf_batch()
    tampered = bytearray(evaluated[position])
    tampered[bit // 8] ^= 1 << (bit % 8)
    evaluated[position] = bytes(tampered)
    with pytest.raises((VerifyError, DeserializeError)):
        oprf.verify_proof(group.GENERATOR, pk, blinded, evaluated, proof, Mode.VOPRF)


@settings(max_examples=30, deadline=None)
@given(bit=st.integers(min_value=0, max_value=511))
def test_tampered_proof_is_rejected(bit: int) -> None:
    _, pk, _, blinded, evaluated, proof = _voprf_batch()
    tampered = bytearray(proof)
    tampered[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises((VerifyError, DeserializeError)):
        oprf.verify_proof(group.GENERATOR, pk, blinded, evaluated, bytes(tampered), Mode.VOPRF)


def test_wrong_public_key_is_rejected() -> None:
    _, _, _, blinded, evaluated, proof = _voprf_batch()
    _, other_pk = oprf.generate_key_pair()
    with pytest.raises(VerifyError, match="does not verify"):
        oprf.verify_proof(group.GENERATOR, other_pk, blinded, evaluated, proof, Mode.VOPRF)


def test_server_answering_with_another_key_is_detected() -> None:
    _, pk = oprf.generate_key_pair()
    other_sk, other_pk = oprf.generate_key_pair()
    xs = [b"a", b"b"]
    blinds, blinded = oprf.blind_batch(xs, Mode.VOPRF)
    # A server with another key produces a proof valid for *its* key only.
    evaluated, proof = oprf.verifiable_blind_evaluate_batch(other_sk, other_pk, blinded)
    with pytest.raises(VerifyError):
        oprf.verifiable_finalize_batch(pk, xs, blinds, blinded, evaluated, proof)


def test_swapped_or_reordered_elements_are_rejected() -> None:
    _, pk, _, blinded, evaluated, proof = _voprf_batch()
    with pytest.raises(VerifyError):
        oprf.verify_proof(group.GENERATOR, pk, blinded, evaluated[::-1], proof, Mode.VOPRF)


def test_replayed_proof_for_another_batch_is_rejected() -> None:
    sk, pk, _, _blinded, _evaluated, proof = _voprf_batch()
    _, blinded2 = oprf.blind_batch([b"x", b"y", b"z"], Mode.VOPRF)
    evaluated2, _ = oprf.verifiable_blind_evaluate_batch(sk, pk, blinded2)
    with pytest.raises(VerifyError):
        oprf.verify_proof(group.GENERATOR, pk, blinded2, evaluated2, proof, Mode.VOPRF)


@pytest.mark.parametrize(
    "bad",
    [group.IDENTITY, b"\xff" * 32, b"\x01" + bytes(31), b"short", bytes(33)],
    ids=["identity", "non-canonical", "negative", "short", "long"],
)
def test_malformed_blinded_element_at_server(bad: bytes) -> None:
    sk, pk = oprf.generate_key_pair()
    _, good = oprf.blind(b"x", Mode.VOPRF)
    with pytest.raises(DeserializeError, match=r"blinded_element\[1\]"):
        oprf.verifiable_blind_evaluate_batch(sk, pk, [good, bad])


@pytest.mark.parametrize("bad", [group.IDENTITY, b"\xff" * 32, b"\x00" * 31])
def test_malformed_evaluated_element_at_client(bad: bytes) -> None:
    blind, _ = oprf.blind(b"x", Mode.OPRF)
    with pytest.raises(DeserializeError, match=r"evaluated_element\[0\]"):
        oprf.finalize(b"x", blind, bad, Mode.OPRF)


def test_malformed_proof_scalars_raise_deserialize_error() -> None:
    _, pk, _, blinded, evaluated, _ = _voprf_batch()
    unreduced = (group.ORDER + 1).to_bytes(32, "little")
    with pytest.raises(DeserializeError, match="challenge"):
        oprf.verify_proof(group.GENERATOR, pk, blinded, evaluated, unreduced * 2, Mode.VOPRF)
    with pytest.raises(DeserializeError, match="proof must be 64 bytes"):
        oprf.verify_proof(group.GENERATOR, pk, blinded, evaluated, b"\x00" * 63, Mode.VOPRF)


def test_bad_keys_and_inputs_are_local_errors() -> None:
    with pytest.raises(InvalidInputError, match="seed must be 32 bytes"):
        oprf.derive_key_pair(b"short", b"", Mode.OPRF)
    with pytest.raises(InvalidInputError, match="private key is zero"):
        oprf.evaluate(bytes(32), b"x", Mode.OPRF)
    with pytest.raises(DeserializeError, match="private key"):
        oprf.evaluate(b"\xff" * 32, b"x", Mode.OPRF)
    with pytest.raises(InvalidInputError, match="limit is 65535"):
        oprf.evaluate(oprf.generate_key_pair()[0], b"x" * 65536, Mode.OPRF)
    with pytest.raises(InvalidInputError, match="differ in length"):
        oprf.finalize_batch([b"a"], [], [], Mode.OPRF)


BAD_ELEMENTS = {
    "identity": (group.IDENTITY, "is the identity element"),
    "non-canonical": (b"\xff" * 32, "is not a canonical"),
    "negative": (b"\x01" + bytes(31), "is not a canonical"),
    "short": (b"\x00" * 31, "must be 32 bytes"),
}


def _with_bad(elements: list[bytes], bad: bytes) -> list[bytes]:
    return [*elements[:2], bad, *elements[3:]]


@pytest.mark.parametrize("kind", list(BAD_ELEMENTS))
def test_every_step_names_a_peers_malformed_element_in_a_batch(kind: str) -> None:
    """Each entry point that takes a peer's elements rejects element 2 of 4 by
    name and reason (the check is folded into the multiplications)."""
    bad, reason = BAD_ELEMENTS[kind]
    xs = [b"a", b"b", b"c", b"d"]
    sk, pk = oprf.generate_key_pair()
    blinds, blinded = oprf.blind_batch(xs, Mode.VOPRF)
    evaluated, proof = oprf.verifiable_blind_evaluate_batch(sk, pk, blinded)
    p_blinds, p_blinded, tweaked = oprf.poprf_blind_batch(xs, b"info", pk)
    p_evaluated, p_proof = oprf.poprf_blind_evaluate_batch(sk, p_blinded, b"info")
    calls: dict[str, list[Callable[[], object]]] = {
        "blinded_element": [
            lambda: oprf.blind_evaluate_batch(sk, _with_bad(blinded, bad)),
            lambda: oprf.verifiable_blind_evaluate_batch(sk, pk, _with_bad(blinded, bad)),
            lambda: oprf.poprf_blind_evaluate_batch(sk, _with_bad(p_blinded, bad), b"info"),
            lambda: oprf.verify_proof(
                group.GENERATOR, pk, _with_bad(blinded, bad), evaluated, proof, Mode.VOPRF
            ),
        ],
        "evaluated_element": [
            lambda: oprf.finalize_batch(xs, blinds, _with_bad(evaluated, bad), Mode.OPRF),
            lambda: oprf.verifiable_finalize_batch(
                pk, xs, blinds, blinded, _with_bad(evaluated, bad), proof
            ),
            lambda: oprf.verify_evaluation_proof(pk, blinded, _with_bad(evaluated, bad), proof),
            lambda: oprf.verify_proof(
                group.GENERATOR, pk, blinded, _with_bad(evaluated, bad), proof, Mode.VOPRF
            ),
            lambda: oprf.poprf_finalize_batch(
                xs, p_blinds, p_blinded, _with_bad(p_evaluated, bad), p_proof, b"info", tweaked
            ),
        ],
    }
    for name, steps in calls.items():
        for step in steps:
            with pytest.raises(DeserializeError, match=rf"^{name}\[2\] {reason}"):
                step()
