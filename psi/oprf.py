"""RFC 9497 oblivious pseudorandom functions, ciphersuite ristretto255-SHA512.

Modes OPRF (0), VOPRF (1) and POPRF (2).  Every protocol step has a batch
form because Blindmatch moves batches of about a thousand elements; the
single-element functions are thin wrappers over the batch ones.

Randomness is drawn only at the edge: `blind` draws the blinding scalar and
calls `_blind_with`; `generate_proof` draws the proof nonce and calls
`_generate_proof_with`.  Known-answer tests call the inner functions.

Trust boundary: every element that may come from a peer (blinded elements at
the server, evaluated elements and proofs at the client, public keys) passes
through `group.decode_element` / `group.decode_scalar`, which reject
non-canonical encodings and the identity with `DeserializeError`.  Where a
peer's element is first used in a multiplication, `group.decode_and_scalar_mult`
does that check inside the multiplication's own decoding, with the same errors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import cache

from psi import group
from psi.errors import DeserializeError, InvalidInputError, VerifyError

__all__ = [
    "OUTPUT_LENGTH",
    "PROOF_LENGTH",
    "SUITE_ID",
    "Mode",
    "blind",
    "blind_batch",
    "blind_evaluate",
    "blind_evaluate_batch",
    "compute_composites",
    "compute_composites_fast",
    "context_string",
    "derive_key_pair",
    "evaluate",
    "finalize",
    "finalize_batch",
    "generate_key_pair",
    "generate_proof",
    "hash_input",
    "poprf_blind_batch",
    "poprf_blind_evaluate_batch",
    "poprf_evaluate",
    "poprf_finalize_batch",
    "public_key",
    "verifiable_blind_evaluate_batch",
    "verifiable_finalize_batch",
    "verify_evaluation_proof",
    "verify_proof",
]

SUITE_ID = b"ristretto255-SHA512"
OUTPUT_LENGTH = 64
PROOF_LENGTH = 2 * group.SCALAR_LENGTH
_MAX_INPUT = 0xFFFF  # inputs are length-prefixed with two bytes


class Mode(IntEnum):
    """RFC 9497 §3.1 protocol modes."""

    OPRF = 0
    VOPRF = 1
    POPRF = 2


def context_string(mode: Mode) -> bytes:
    """RFC 9497 §3.1: "OPRFV1-" || I2OSP(mode, 1) || "-" || identifier."""
    return b"OPRFV1-" + bytes([Mode(mode)]) + b"-" + SUITE_ID


@dataclass(frozen=True)
class _Tags:
    """The domain separation tags of one mode, computed once."""

    hash_to_group: bytes
    hash_to_scalar: bytes
    derive_key_pair: bytes
    seed: bytes


@cache
def _tags(mode: Mode) -> _Tags:
    ctx = context_string(mode)
    return _Tags(
        hash_to_group=b"HashToGroup-" + ctx,
        hash_to_scalar=b"HashToScalar-" + ctx,
        derive_key_pair=b"DeriveKeyPair" + ctx,
        seed=b"Seed-" + ctx,
    )


def _i2osp2(n: int) -> bytes:
    return n.to_bytes(2, "big")


def _prefixed(data: bytes) -> bytes:
    return _i2osp2(len(data)) + data


def _check_input(data: bytes, what: str = "input") -> None:
    if not isinstance(data, bytes):
        raise InvalidInputError(f"{what} must be bytes, got {type(data).__name__}")
    if len(data) > _MAX_INPUT:
        raise InvalidInputError(f"{what} is {len(data)} bytes; the limit is {_MAX_INPUT}")


# -- keys (RFC 9497 §3.2) ----------------------------------------------------


def derive_key_pair(seed: bytes, info: bytes, mode: Mode) -> tuple[bytes, bytes]:
    """RFC 9497 §3.2.1 DeriveKeyPair: a deterministic (skS, pkS) from a 32-byte seed."""
    if len(seed) != 32:
        raise InvalidInputError(f"seed must be 32 bytes, got {len(seed)}")
    _check_input(info, "info")
    derive_input = seed + _prefixed(info)
    dst = _tags(mode).derive_key_pair
    for counter in range(256):
        sk = group.hash_to_scalar(derive_input + bytes([counter]), dst)
        if group.scalar_to_int(sk) != 0:
            return sk, group.scalar_mult_base(sk)
    raise InvalidInputError("DeriveKeyPairError: no non-zero scalar in 256 attempts")


def generate_key_pair() -> tuple[bytes, bytes]:
    """RFC 9497 §3.2 GenerateKeyPair: a random (skS, pkS)."""
    sk = group.random_scalar()
    return sk, group.scalar_mult_base(sk)


def public_key(sk: bytes) -> bytes:
    """pkS = skS * G."""
    return group.scalar_mult_base(group.decode_scalar(sk, name="private key"))


def _decode_private_key(sk: bytes) -> bytes:
    group.decode_scalar(sk, name="private key")
    if group.scalar_to_int(sk) == 0:
        raise InvalidInputError("private key is zero")
    return sk


# -- client: blind (RFC 9497 §3.3.1) -----------------------------------------


def hash_input(data: bytes, mode: Mode) -> bytes:
    """HashToGroup(input) for `mode`; raises InvalidInputError on the identity."""
    _check_input(data)
    element = group.hash_to_group(data, _tags(mode).hash_to_group)
    if element == group.IDENTITY:
        raise InvalidInputError("input hashes to the identity element")
    return element


def blind(data: bytes, mode: Mode) -> tuple[bytes, bytes]:
    """RFC 9497 §3.3.1 Blind: returns (blind, blinded_element)."""
    return _blind_with(data, group.random_scalar(), mode)


def _blind_with(data: bytes, blind_scalar: bytes, mode: Mode) -> tuple[bytes, bytes]:
    return blind_scalar, group.scalar_mult(blind_scalar, hash_input(data, mode))


def blind_batch(inputs: Sequence[bytes], mode: Mode) -> tuple[list[bytes], list[bytes]]:
    """Blind a batch; returns (blinds, blinded_elements) in input order."""
    return _blind_batch_with(inputs, [group.random_scalar() for _ in inputs], mode)


def _blind_batch_with(
    inputs: Sequence[bytes], blinds: Sequence[bytes], mode: Mode
) -> tuple[list[bytes], list[bytes]]:
    if len(inputs) != len(blinds):
        raise InvalidInputError("inputs and blinds differ in length")
    blinded = [
        group.scalar_mult(b, hash_input(x, mode)) for x, b in zip(inputs, blinds, strict=True)
    ]
    return list(blinds), blinded


# -- server: evaluate (RFC 9497 §3.3.1, §3.3.2) ------------------------------


def _decode_and_multiply(scalar: bytes, elements: Sequence[bytes], name: str) -> list[bytes]:
    """scalar * e for each of a peer's elements, each decoded (and rejected by name)."""
    return _products([scalar] * len(elements), elements, name)


def _products(
    scalars: Sequence[bytes], elements: Sequence[bytes], decode_as: str | None
) -> list[bytes]:
    """s_i * e_i for each pair; with `decode_as`, each e_i is a peer's element,
    decoded (and rejected as decode_as[i]) inside its multiplication."""
    pairs = zip(scalars, elements, strict=True)
    if decode_as is None:
        return [group.scalar_mult(s, e) for s, e in pairs]
    multiply = group.decode_and_scalar_mult
    return [multiply(s, e, name=f"{decode_as}[{i}]") for i, (s, e) in enumerate(pairs)]


def blind_evaluate(sk: bytes, blinded_element: bytes) -> bytes:
    """RFC 9497 §3.3.1 BlindEvaluate (OPRF mode): skS * blinded_element."""
    return blind_evaluate_batch(sk, [blinded_element])[0]


def blind_evaluate_batch(sk: bytes, blinded_elements: Sequence[bytes]) -> list[bytes]:
    """BlindEvaluate for a batch (OPRF mode, no proof)."""
    _decode_private_key(sk)
    return _decode_and_multiply(sk, blinded_elements, "blinded_element")


def verifiable_blind_evaluate_batch(
    sk: bytes, pk: bytes, blinded_elements: Sequence[bytes]
) -> tuple[list[bytes], bytes]:
    """RFC 9497 §3.3.2 BlindEvaluateBatch (VOPRF): evaluated elements and one batch proof."""
    return _verifiable_blind_evaluate_batch_with(sk, pk, blinded_elements, group.random_scalar())


def _verifiable_blind_evaluate_batch_with(
    sk: bytes, pk: bytes, blinded_elements: Sequence[bytes], r: bytes
) -> tuple[list[bytes], bytes]:
    evaluated = blind_evaluate_batch(sk, blinded_elements)
    proof = _generate_proof_with(
        sk, group.GENERATOR, pk, blinded_elements, evaluated, r, Mode.VOPRF
    )
    return evaluated, proof


# -- DLEQ proofs (RFC 9497 §2.2) ---------------------------------------------


def _composite_weights(
    b: bytes, cs: Sequence[bytes], ds: Sequence[bytes], mode: Mode
) -> list[bytes]:
    """The per-pair scalars d_i of ComputeComposites (§2.2.1)."""
    tags = _tags(mode)
    seed = hashlib.sha512(_prefixed(b) + _prefixed(tags.seed)).digest()
    prefix = _prefixed(seed)
    dst = tags.hash_to_scalar
    hash_to_scalar = group.hash_to_scalar
    return [
        hash_to_scalar(
            b"".join((prefix, _i2osp2(i), _prefixed(c), _prefixed(d), b"Composite")), dst
        )
        for i, (c, d) in enumerate(zip(cs, ds, strict=True))
    ]


def _weighted_sum(
    weights: Sequence[bytes], elements: Sequence[bytes], decode_as: str | None = None
) -> bytes:
    """sum w_i * e_i (see `_products` for `decode_as`)."""
    terms = _products(weights, elements, decode_as)
    total = terms[0] if terms else group.IDENTITY
    for term in terms[1:]:
        total = group.element_add(total, term)
    return total


def compute_composites(
    b: bytes, cs: Sequence[bytes], ds: Sequence[bytes], mode: Mode
) -> tuple[bytes, bytes]:
    """RFC 9497 §2.2.1 ComputeComposites (the verifier's form): (M, Z)."""
    return _compute_composites(b, cs, ds, mode, None, None)


def _compute_composites(
    b: bytes,
    cs: Sequence[bytes],
    ds: Sequence[bytes],
    mode: Mode,
    decode_cs_as: str | None,
    decode_ds_as: str | None,
) -> tuple[bytes, bytes]:
    if len(cs) != len(ds):
        raise InvalidInputError(f"{len(cs)} inputs but {len(ds)} evaluations")
    if len(cs) > 0xFFFF:
        raise InvalidInputError("a batch proof covers at most 65535 elements")
    for name, elements in ((decode_cs_as, cs), (decode_ds_as, ds)):
        if name is not None:  # shape and identity here (cheap); encodings in the sums
            _check_shapes(elements, name)
    weights = _composite_weights(b, cs, ds, mode)
    return _weighted_sum(weights, cs, decode_cs_as), _weighted_sum(weights, ds, decode_ds_as)


def _check_shapes(elements: Sequence[bytes], name: str) -> None:
    """decode_element's checks but the canonical-encoding one, for every element."""
    for i, e in enumerate(elements):
        if not isinstance(e, bytes) or len(e) != group.ELEMENT_LENGTH or e == group.IDENTITY:
            group.decode_element(e, name=f"{name}[{i}]")


def compute_composites_fast(
    k: bytes, b: bytes, cs: Sequence[bytes], ds: Sequence[bytes], mode: Mode
) -> tuple[bytes, bytes]:
    """RFC 9497 §2.2.1 ComputeCompositesFast (the prover's form, knowing k): (M, k*M)."""
    if len(cs) != len(ds):
        raise InvalidInputError(f"{len(cs)} inputs but {len(ds)} evaluations")
    if len(cs) > 0xFFFF:
        raise InvalidInputError("a batch proof covers at most 65535 elements")
    m = _weighted_sum(_composite_weights(b, cs, ds, mode), cs)
    return m, group.scalar_mult(k, m)


def _challenge(b: bytes, m: bytes, z: bytes, t2: bytes, t3: bytes, mode: Mode) -> bytes:
    transcript = b"".join(_prefixed(x) for x in (b, m, z, t2, t3)) + b"Challenge"
    return group.hash_to_scalar(transcript, _tags(mode).hash_to_scalar)


def generate_proof(
    k: bytes, a: bytes, b: bytes, cs: Sequence[bytes], ds: Sequence[bytes], mode: Mode
) -> bytes:
    """RFC 9497 §2.2.1 GenerateProof: a proof that log_A(B) == log_{C_i}(D_i) for all i."""
    return _generate_proof_with(k, a, b, cs, ds, group.random_scalar(), mode)


def _generate_proof_with(
    k: bytes,
    a: bytes,
    b: bytes,
    cs: Sequence[bytes],
    ds: Sequence[bytes],
    r: bytes,
    mode: Mode,
) -> bytes:
    m, z = compute_composites_fast(k, b, cs, ds, mode)
    t2 = group.scalar_mult_base(r) if a == group.GENERATOR else group.scalar_mult(r, a)
    t3 = group.scalar_mult(r, m)
    c = _challenge(b, m, z, t2, t3, mode)
    s = group.scalar_sub(r, group.scalar_mul(c, k))
    return c + s


def verify_proof(
    a: bytes, b: bytes, cs: Sequence[bytes], ds: Sequence[bytes], proof: bytes, mode: Mode
) -> None:
    """RFC 9497 §2.2.2 VerifyProof; raises VerifyError unless the proof is valid.

    Every element and both proof scalars are decoded first, so malformed peer
    data raises DeserializeError rather than reaching libsodium.
    """
    group.decode_element(b, name="public key")
    _verify_proof(a, b, cs, ds, proof, mode, "blinded_element", "evaluated_element")


def _verify_proof(
    a: bytes,
    b: bytes,
    cs: Sequence[bytes],
    ds: Sequence[bytes],
    proof: bytes,
    mode: Mode,
    decode_cs_as: str | None = None,
    decode_ds_as: str | None = None,
) -> None:
    """VerifyProof.  Elements named in `decode_cs_as` / `decode_ds_as` are a peer's
    and are decoded on the way; the others were decoded (or produced) by the caller."""
    if len(proof) != PROOF_LENGTH:
        raise DeserializeError(f"proof must be {PROOF_LENGTH} bytes, got {len(proof)}")
    c = group.decode_scalar(proof[:32], name="proof challenge")
    s = group.decode_scalar(proof[32:], name="proof response")
    m, z = _compute_composites(b, cs, ds, mode, decode_cs_as, decode_ds_as)
    sa = group.scalar_mult_base(s) if a == group.GENERATOR else group.scalar_mult(s, a)
    t2 = group.element_add(sa, group.scalar_mult(c, b))
    t3 = group.element_add(group.scalar_mult(s, m), group.scalar_mult(c, z))
    if not group.elements_equal(_challenge(b, m, z, t2, t3, mode), c):
        raise VerifyError("DLEQ proof does not verify against this public key and batch")


def verify_evaluation_proof(
    pk: bytes,
    blinded_elements: Sequence[bytes],
    evaluated_elements: Sequence[bytes],
    proof: bytes,
    mode: Mode = Mode.VOPRF,
) -> list[bytes]:
    """The client's check of a server's batch answer: decode the server's evaluated
    elements and verify the proof that they are pk's key times the client's own
    blinded elements.  Returns the decoded evaluated elements."""
    if len(blinded_elements) != len(evaluated_elements):
        got, want = len(evaluated_elements), len(blinded_elements)
        raise VerifyError(f"server answered {got} elements for {want} blinded")
    group.decode_element(pk, name="public key")
    _verify_proof(
        group.GENERATOR,
        pk,
        blinded_elements,
        evaluated_elements,
        proof,
        mode,
        decode_ds_as="evaluated_element",
    )
    return list(evaluated_elements)


# -- client: finalize (RFC 9497 §3.3.1, §3.3.2) ------------------------------


def _finalize_hash(data: bytes, unblinded: bytes, info: bytes | None = None) -> bytes:
    framed_info = b"" if info is None else _prefixed(info)
    return hashlib.sha512(
        _prefixed(data) + framed_info + _prefixed(unblinded) + b"Finalize"
    ).digest()


def finalize(data: bytes, blind_scalar: bytes, evaluated_element: bytes, mode: Mode) -> bytes:
    """RFC 9497 §3.3.1 Finalize (OPRF mode; VOPRF after `verify_proof`): 64 bytes."""
    return finalize_batch([data], [blind_scalar], [evaluated_element], mode)[0]


def finalize_batch(
    inputs: Sequence[bytes],
    blinds: Sequence[bytes],
    evaluated_elements: Sequence[bytes],
    mode: Mode,
) -> list[bytes]:
    """Finalize a batch: unblind each evaluated element and hash it with its input.

    `mode` is accepted for symmetry with the other steps; Finalize's hash does
    not depend on it for OPRF and VOPRF.  Use `verifiable_finalize_batch` in
    VOPRF mode so the proof is checked first.
    """
    if Mode(mode) is Mode.POPRF:
        raise InvalidInputError("use poprf_finalize_batch in POPRF mode")
    if not len(inputs) == len(blinds) == len(evaluated_elements):
        raise InvalidInputError("inputs, blinds and evaluated elements differ in length")
    return _unblind_and_hash(inputs, blinds, evaluated_elements, None, "evaluated_element")


def _unblind_and_hash(
    inputs: Sequence[bytes],
    blinds: Sequence[bytes],
    evaluated: Sequence[bytes],
    info: bytes | None,
    decode_as: str | None = None,
) -> list[bytes]:
    """Finalize's hash of each input with blind^-1 * evaluated; with `decode_as`,
    the evaluated elements are a peer's, decoded inside the unblinding."""
    unblinded = _products(group.scalar_invert_batch(blinds), evaluated, decode_as)
    return [_finalize_hash(x, u, info) for x, u in zip(inputs, unblinded, strict=True)]


def verifiable_finalize_batch(
    pk: bytes,
    inputs: Sequence[bytes],
    blinds: Sequence[bytes],
    blinded_elements: Sequence[bytes],
    evaluated_elements: Sequence[bytes],
    proof: bytes,
) -> list[bytes]:
    """RFC 9497 §3.3.2 Finalize (VOPRF): verify the batch proof, then finalize."""
    if not len(inputs) == len(blinds) == len(blinded_elements) == len(evaluated_elements):
        raise InvalidInputError("inputs, blinds, blinded and evaluated elements differ in length")
    evaluated = verify_evaluation_proof(pk, blinded_elements, evaluated_elements, proof)
    return _unblind_and_hash(inputs, blinds, evaluated, None)


def evaluate(sk: bytes, data: bytes, mode: Mode) -> bytes:
    """RFC 9497 §3.3.1 Evaluate (OPRF and VOPRF): the PRF output without the protocol."""
    if Mode(mode) is Mode.POPRF:
        raise InvalidInputError("use poprf_evaluate in POPRF mode")
    _decode_private_key(sk)
    element = hash_input(data, mode)
    return _finalize_hash(data, group.scalar_mult(sk, element))


# -- POPRF (RFC 9497 §3.3.3) -------------------------------------------------


def _poprf_tweak(info: bytes) -> bytes:
    _check_input(info, "info")
    return group.hash_to_scalar(b"Info" + _prefixed(info), _tags(Mode.POPRF).hash_to_scalar)


def poprf_blind_batch(
    inputs: Sequence[bytes], info: bytes, pk: bytes
) -> tuple[list[bytes], list[bytes], bytes]:
    """POPRF Blind for a batch: (blinds, blinded_elements, tweaked_key)."""
    return _poprf_blind_batch_with(inputs, [group.random_scalar() for _ in inputs], info, pk)


def _poprf_blind_batch_with(
    inputs: Sequence[bytes], blinds: Sequence[bytes], info: bytes, pk: bytes
) -> tuple[list[bytes], list[bytes], bytes]:
    group.decode_element(pk, name="public key")
    tweaked_key = group.element_add(group.scalar_mult_base(_poprf_tweak(info)), pk)
    if tweaked_key == group.IDENTITY:
        raise InvalidInputError("InvalidInputError: tweaked key is the identity")
    blinds_out, blinded = _blind_batch_with(inputs, blinds, Mode.POPRF)
    return blinds_out, blinded, tweaked_key


def poprf_blind_evaluate_batch(
    sk: bytes, blinded_elements: Sequence[bytes], info: bytes
) -> tuple[list[bytes], bytes]:
    """POPRF BlindEvaluate for a batch: evaluated elements and one batch proof."""
    return _poprf_blind_evaluate_batch_with(sk, blinded_elements, info, group.random_scalar())


def _poprf_tweaked_private_key(sk: bytes, info: bytes) -> bytes:
    _decode_private_key(sk)
    t = group.scalar_add(sk, _poprf_tweak(info))
    if group.scalar_to_int(t) == 0:
        raise InvalidInputError("InverseError: tweaked private key is zero")
    return t


def _poprf_blind_evaluate_batch_with(
    sk: bytes, blinded_elements: Sequence[bytes], info: bytes, r: bytes
) -> tuple[list[bytes], bytes]:
    t = _poprf_tweaked_private_key(sk, info)
    t_inv = group.scalar_invert(t)
    evaluated = _decode_and_multiply(t_inv, blinded_elements, "blinded_element")
    blinded = list(blinded_elements)
    tweaked_key = group.scalar_mult_base(t)
    # The POPRF proof shows log_G(tweaked_key) == log_{evaluated}(blinded).
    proof = _generate_proof_with(t, group.GENERATOR, tweaked_key, evaluated, blinded, r, Mode.POPRF)
    return evaluated, proof


def poprf_finalize_batch(
    inputs: Sequence[bytes],
    blinds: Sequence[bytes],
    blinded_elements: Sequence[bytes],
    evaluated_elements: Sequence[bytes],
    proof: bytes,
    info: bytes,
    tweaked_key: bytes,
) -> list[bytes]:
    """POPRF Finalize for a batch: verify the proof against the tweaked key, then finalize."""
    if not len(inputs) == len(blinds) == len(blinded_elements) == len(evaluated_elements):
        raise InvalidInputError("inputs, blinds, blinded and evaluated elements differ in length")
    _verify_proof(
        group.GENERATOR,
        tweaked_key,
        evaluated_elements,
        blinded_elements,
        proof,
        Mode.POPRF,
        decode_cs_as="evaluated_element",
    )
    return _unblind_and_hash(inputs, blinds, evaluated_elements, info)


def poprf_evaluate(sk: bytes, data: bytes, info: bytes) -> bytes:
    """POPRF Evaluate: the PRF output for `data` under `info` without the protocol."""
    t = _poprf_tweaked_private_key(sk, info)
    element = hash_input(data, Mode.POPRF)
    return _finalize_hash(data, group.scalar_mult(group.scalar_invert(t), element), info)
