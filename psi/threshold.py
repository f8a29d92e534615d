"""t-of-n threshold evaluation of the RFC 9497 VOPRF.

The epoch key k is split with Shamir's scheme over the scalar field of
ristretto255: f(x) = k + a_1 x + ... + a_{t-1} x^{t-1}, custodian i holds
k_i = f(i).  Feldman commitments C_j = a_j * G (C_0 = k * G, the group public
key) let each custodian check its share, and give anyone the public share
K_i = k_i * G = sum_j i^j * C_j.

A bureau blinds a batch once and sends the same blinded elements B with the
participant set S (|S| >= t) to every custodian in S.  Custodian i returns
lambda_i * k_i * B_j for each j, with one batch DLEQ proof (RFC 9497 §2.2)
that the same scalar maps G to lambda_i * K_i.  The bureau verifies every
proof, sums the partials and unblinds; since sum_{i in S} lambda_i k_i = k,
the result is exactly the single-key VOPRF output under k.

All arithmetic on secret scalars goes through libsodium (constant time);
Lagrange coefficients depend only on public indices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from psi import group, oprf
from psi.errors import InvalidInputError, VerifyError

__all__ = [
    "MAX_CUSTODIANS",
    "FeldmanCommitments",
    "KeyShare",
    "PartialEvaluation",
    "combine",
    "finalize",
    "generate_threshold_key",
    "lagrange_coefficient",
    "own_partial_evaluate",
    "partial_evaluate",
    "recover_key",
    "split_key",
    "verify_and_combine",
    "verify_partial",
    "verify_share",
]

MAX_CUSTODIANS = 255
MODE = oprf.Mode.VOPRF


@dataclass(frozen=True)
class KeyShare:
    """Custodian `index`'s Shamir share k_i = f(index) of the epoch key."""

    index: int
    value: bytes

    def __repr__(self) -> str:  # never print the secret
        return f"KeyShare(index={self.index}, value=<redacted>)"


@dataclass(frozen=True)
class FeldmanCommitments:
    """Commitments a_j * G to the sharing polynomial's coefficients, j = 0..t-1."""

    points: tuple[bytes, ...]

    @property
    def threshold(self) -> int:
        """t: how many shares reconstruct the key."""
        return len(self.points)

    @property
    def group_public_key(self) -> bytes:
        """pkS = k * G, the public key of the single-key VOPRF the shares implement."""
        return self.points[0]

    def public_share(self, index: int) -> bytes:
        """K_i = k_i * G = sum_j index^j * C_j."""
        _check_index(index)
        total = group.IDENTITY
        power = 1
        for point in self.points:
            total = group.element_add(total, group.scalar_mult(group.scalar_from_int(power), point))
            power = power * index % group.ORDER
        return total

    @classmethod
    def decode(cls, points: Sequence[bytes]) -> FeldmanCommitments:
        """Commitments received from elsewhere: every point must be a valid element."""
        if not 1 <= len(points) <= MAX_CUSTODIANS:
            raise InvalidInputError(f"between 1 and {MAX_CUSTODIANS} commitments are needed")
        return cls(
            tuple(group.decode_element(p, name=f"commitment[{j}]") for j, p in enumerate(points))
        )


@dataclass(frozen=True)
class PartialEvaluation:
    """Custodian `index`'s answer: lambda_i * k_i * B_j for each B_j, and a batch proof."""

    index: int
    evaluated: tuple[bytes, ...]
    proof: bytes


def _check_index(index: int) -> None:
    if not 1 <= index <= MAX_CUSTODIANS:
        raise InvalidInputError(f"custodian index {index} outside 1..{MAX_CUSTODIANS}")


def _check_participants(participants: Sequence[int]) -> tuple[int, ...]:
    if not participants:
        raise InvalidInputError("participant set is empty")
    for index in participants:
        _check_index(index)
    if len(set(participants)) != len(participants):
        raise InvalidInputError(f"participant set {list(participants)} repeats an index")
    return tuple(sorted(participants))


# -- dealing -----------------------------------------------------------------


def split_key(
    key: bytes, threshold: int, shares: int
) -> tuple[tuple[KeyShare, ...], FeldmanCommitments]:
    """Shamir-split `key` into `shares` shares, any `threshold` of which recover it."""
    coefficients = [group.random_scalar() for _ in range(threshold - 1)]
    return _split_key_with(key, threshold, shares, coefficients)


def _split_key_with(
    key: bytes, threshold: int, shares: int, coefficients: Sequence[bytes]
) -> tuple[tuple[KeyShare, ...], FeldmanCommitments]:
    if not 1 <= threshold <= shares <= MAX_CUSTODIANS:
        raise InvalidInputError(
            f"need 1 <= threshold <= shares <= {MAX_CUSTODIANS}, got {threshold}-of-{shares}"
        )
    if len(coefficients) != threshold - 1:
        raise InvalidInputError("a degree t-1 polynomial needs t-1 random coefficients")
    group.decode_scalar(key, name="key")
    if group.scalar_to_int(key) == 0:
        raise InvalidInputError("key is zero")
    poly = [key, *coefficients]
    out = []
    for index in range(1, shares + 1):
        x = group.scalar_from_int(index)
        value = poly[-1]
        for coefficient in reversed(poly[:-1]):  # Horner's rule
            value = group.scalar_add(group.scalar_mul(value, x), coefficient)
        out.append(KeyShare(index, value))
    commitments = FeldmanCommitments(tuple(group.scalar_mult_base(a) for a in poly))
    return tuple(out), commitments


def generate_threshold_key(
    threshold: int, shares: int
) -> tuple[tuple[KeyShare, ...], FeldmanCommitments]:
    """A fresh random epoch key, split; the whole key is never returned."""
    return split_key(group.random_scalar(), threshold, shares)


def verify_share(share: KeyShare, commitments: FeldmanCommitments) -> None:
    """Feldman check k_i * G == K_i; raises VerifyError naming the share on failure."""
    group.decode_scalar(share.value, name=f"share {share.index}")
    if group.scalar_to_int(share.value) == 0:
        raise VerifyError(f"share {share.index} is zero")
    expected = commitments.public_share(share.index)
    if not group.elements_equal(group.scalar_mult_base(share.value), expected):
        raise VerifyError(f"share {share.index} does not match the published commitments")


def lagrange_coefficient(index: int, participants: Sequence[int]) -> bytes:
    """lambda_i for interpolation at 0 over `participants` (public values only)."""
    members = _check_participants(participants)
    if index not in members:
        raise InvalidInputError(f"custodian {index} is not in the participant set {list(members)}")
    numerator, denominator = 1, 1
    for j in members:
        if j != index:
            numerator = numerator * j % group.ORDER
            denominator = denominator * (j - index) % group.ORDER
    return group.scalar_from_int(numerator * pow(denominator, -1, group.ORDER))


def recover_key(shares: Sequence[KeyShare]) -> bytes:
    """Interpolate the key from shares (for the key ceremony's self-check and for
    tests that model a coalition of custodians; never used on the evaluation path)."""
    members = [s.index for s in shares]
    key = bytes(group.SCALAR_LENGTH)
    for share in shares:
        weighted = group.scalar_mul(lagrange_coefficient(share.index, members), share.value)
        key = group.scalar_add(key, weighted)
    return key


# -- evaluation --------------------------------------------------------------


def partial_evaluate(
    share: KeyShare, participants: Sequence[int], blinded_elements: Sequence[bytes]
) -> PartialEvaluation:
    """The custodian's step: lambda_i * k_i * B for each blinded element, with a proof."""
    return _partial_evaluate_with(share, participants, blinded_elements, group.random_scalar())


def _partial_evaluate_with(
    share: KeyShare, participants: Sequence[int], blinded_elements: Sequence[bytes], r: bytes
) -> PartialEvaluation:
    weighted_key = group.scalar_mul(lagrange_coefficient(share.index, participants), share.value)
    weighted_public = group.scalar_mult_base(weighted_key)
    evaluated, proof = oprf._verifiable_blind_evaluate_batch_with(
        weighted_key, weighted_public, blinded_elements, r
    )
    return PartialEvaluation(share.index, tuple(evaluated), proof)


def own_partial_evaluate(
    share: KeyShare, participants: Sequence[int], blinded_elements: Sequence[bytes]
) -> PartialEvaluation:
    """A custodian's step for its own bureau's batch: lambda_i * k_i * B for
    each blinded element, without a proof (`proof` is empty).  The proof
    convinces the bureau that asked; when that bureau holds the share itself
    it has nobody to convince, and skips making (one composite) and checking
    (two) it.  Only for partials that `verify_and_combine` / `finalize` get
    from the caller's own share."""
    weight = lagrange_coefficient(share.index, participants)
    weighted_key = group.scalar_mul(weight, share.value)
    return PartialEvaluation(
        share.index, tuple(oprf.blind_evaluate_batch(weighted_key, blinded_elements)), b""
    )


def verify_partial(
    partial: PartialEvaluation,
    public_share: bytes,
    participants: Sequence[int],
    blinded_elements: Sequence[bytes],
) -> None:
    """Check a custodian's answer against its public share K_i; raises VerifyError
    (naming the custodian) or DeserializeError for a malformed element."""
    if len(partial.evaluated) != len(blinded_elements):
        raise VerifyError(
            f"custodian {partial.index} answered {len(partial.evaluated)} elements "
            f"for {len(blinded_elements)} blinded"
        )
    weight = lagrange_coefficient(partial.index, participants)
    weighted_public = group.scalar_mult(
        weight, group.decode_element(public_share, name="public share")
    )
    try:
        oprf.verify_evaluation_proof(
            weighted_public, blinded_elements, partial.evaluated, partial.proof, MODE
        )
    except VerifyError as exc:
        raise VerifyError(f"custodian {partial.index}: {exc}") from exc


def combine(partials: Sequence[PartialEvaluation]) -> list[bytes]:
    """Sum verified partial evaluations element-wise: the single-key k * B_j."""
    if not partials:
        raise InvalidInputError("no partial evaluations to combine")
    length = len(partials[0].evaluated)
    if any(len(p.evaluated) != length for p in partials):
        raise InvalidInputError("partial evaluations differ in length")
    _check_participants([p.index for p in partials])
    totals = list(partials[0].evaluated)
    for partial in partials[1:]:
        totals = [group.element_add(a, b) for a, b in zip(totals, partial.evaluated, strict=True)]
    return totals


def finalize(
    inputs: Sequence[bytes], blinds: Sequence[bytes], partials: Sequence[PartialEvaluation]
) -> list[bytes]:
    """RFC 9497 Finalize over the combined partials: the 64-byte OPRF outputs.

    The partials must have passed `verify_partial` (which decodes every
    element), so their sums are not decoded again.
    """
    combined = combine(partials)
    if not len(inputs) == len(blinds) == len(combined):
        raise InvalidInputError("inputs, blinds and evaluated elements differ in length")
    return oprf._unblind_and_hash(inputs, blinds, combined, None)


def verify_and_combine(
    public_shares: Mapping[int, bytes],
    blinded_elements: Sequence[bytes],
    partials: Sequence[PartialEvaluation],
) -> list[bytes]:
    """Verify every partial against its custodian's public share, then combine."""
    participants = [p.index for p in partials]
    for partial in partials:
        if partial.index not in public_shares:
            raise InvalidInputError(f"no public share known for custodian {partial.index}")
        verify_partial(partial, public_shares[partial.index], participants, blinded_elements)
    return combine(partials)
