"""t-of-n threshold evaluation of the RFC 9497 VOPRF.

The epoch key k is split with Shamir's scheme over the scalar field of
ristretto255: f(x) = k + a_1 x + ... + a_{t-1} x^{t-1}, custodian i holds
k_i = f(i).  Feldman commitments C_j = a_j * G (C_0 = k * G, the group public
key) let each custodian check its share, and give anyone the public share
K_i = k_i * G = sum_j i^j * C_j.

A bureau blinds a batch once and sends the same blinded elements B with the
participant set S (|S| >= t) to every custodian in S.  Custodian i returns
lambda_i * k_i * B_j for each j; since sum_{i in S} lambda_i k_i = k, the
sums Y_j of the partials are exactly the single-key k * B_j, which the bureau
unblinds.

Two ways to check the custodians:

* per custodian (`partial_evaluate`, `verify_partial`): each answer carries
  an RFC 9497 batch DLEQ proof (§2.2) against lambda_i * K_i.  Making and
  checking the proofs costs three multiplications per element and custodian.
* per batch (`batch_check`, `checked_finalize`): the custodians answer
  without proofs (`unproven_partial_evaluate`).  Once every answer is in, the
  bureau sends each participant one element, M = sum_j d_j * B_j with weights
  d_j it drew at random and keeps to itself, and gets back W_i = lambda_i *
  k_i * M with an RFC 9497 proof over that single element.  It accepts the
  batch iff sum_i W_i == sum_j d_j * Y_j.  Soundness: the proofs make sum_i
  W_i = k * M, so acceptance means sum_j d_j * (Y_j - k * B_j) = 0; the Y_j
  were fixed before any custodian saw anything that depends on the d_j, and in
  a group of prime order q, for any nonzero error vector, at most a 1/q
  fraction of weight vectors satisfy that.  This is the random-linear-
  combination batch test (Bellare, Garay and Rabin, 1998) over one DLEQ
  proof.  Cost per element: the custodians' multiplications and two for the
  bureau (M, and the combination of the Y_j), whatever t is.  When the check
  fails, the per-custodian combinations sum_j d_j * Z_ij, compared with each
  proven W_i, name the custodian that lied.  The extra evaluation of M is an
  ordinary evaluation of one element: it reveals nothing (M is a uniformly
  random element) and is metered like any other.

All arithmetic on secret scalars goes through libsodium (constant time);
Lagrange coefficients depend only on public indices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from psi import group, oprf
from psi.errors import DeserializeError, InvalidInputError, VerifyError

__all__ = [
    "MAX_CUSTODIANS",
    "BatchCheck",
    "FeldmanCommitments",
    "KeyShare",
    "PartialEvaluation",
    "PartialsRejected",
    "batch_check",
    "checked_finalize",
    "combine",
    "finalize",
    "generate_threshold_key",
    "lagrange_coefficient",
    "partial_evaluate",
    "recover_key",
    "split_key",
    "unproven_partial_evaluate",
    "verified_finalize",
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


def unproven_partial_evaluate(
    share: KeyShare, participants: Sequence[int], blinded_elements: Sequence[bytes]
) -> PartialEvaluation:
    """The custodian's step without a proof (`proof` is empty): lambda_i * k_i
    * B for each blinded element.  For a batch the bureau checks with
    `batch_check` and `checked_finalize`, or for the bureau's own share."""
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


def verified_finalize(
    inputs: Sequence[bytes],
    blinds: Sequence[bytes],
    blinded_elements: Sequence[bytes],
    partials: Sequence[PartialEvaluation],
    public_shares: Mapping[int, bytes],
    *,
    trusted: int | None = None,
) -> list[bytes]:
    """RFC 9497 Finalize over partials that each carry a valid proof (share
    `trusted`, the caller's own, carries none and is not checked).  Every
    answer is checked, so PartialsRejected names all custodians at fault."""
    participants = [p.index for p in partials]
    bad: dict[int, str] = {}
    for partial in partials:
        if partial.index == trusted:
            continue
        try:
            if partial.index not in public_shares:
                raise InvalidInputError(f"no public share known for custodian {partial.index}")
            verify_partial(partial, public_shares[partial.index], participants, blinded_elements)
        except (VerifyError, DeserializeError, InvalidInputError) as exc:
            named = str(exc).startswith(f"custodian {partial.index}")
            bad[partial.index] = str(exc) if named else f"custodian {partial.index}: {exc}"
    if bad:
        raise PartialsRejected(bad)
    return finalize(inputs, blinds, partials)


# -- the per-batch check -----------------------------------------------------


class PartialsRejected(VerifyError):
    """Custodians' answers to one batch failed its check; `by_custodian` maps
    each share index found at fault to what was wrong with its answer."""

    def __init__(self, by_custodian: Mapping[int, str]) -> None:
        self.by_custodian = dict(by_custodian)
        super().__init__("; ".join(self.by_custodian[i] for i in sorted(self.by_custodian)))


@dataclass(frozen=True)
class BatchCheck:
    """A bureau's private random combination of one blinded batch.

    `composite` M = sum_j d_j * B_j is what every participant evaluates, with
    a proof, once all its answers are in; the weights d_j never leave the
    bureau (a custodian that knew them before answering could hide errors
    that cancel in the combination).
    """

    weights: tuple[bytes, ...]
    composite: bytes

    def __repr__(self) -> str:  # the weights must not reach a log
        return f"BatchCheck({len(self.weights)} weights, composite={self.composite.hex()})"


def batch_check(blinded_elements: Sequence[bytes]) -> BatchCheck:
    """Fresh random weights for the caller's own blinded batch, and their
    combination.  Once its composite has been shown to a custodian, a batch
    asked again (of another participant set) needs a new check."""
    return _batch_check_with(blinded_elements, [group.random_scalar() for _ in blinded_elements])


def _batch_check_with(blinded_elements: Sequence[bytes], weights: Sequence[bytes]) -> BatchCheck:
    if not blinded_elements:
        raise InvalidInputError("an empty batch has nothing to check")
    if len(weights) != len(blinded_elements):
        raise InvalidInputError(f"{len(weights)} weights for {len(blinded_elements)} elements")
    composite = oprf._weighted_sum(weights, blinded_elements)
    if composite == group.IDENTITY:  # probability about len/q; the caller may draw again
        raise InvalidInputError("the batch's random combination is the identity")
    return BatchCheck(tuple(weights), composite)


def checked_finalize(
    inputs: Sequence[bytes],
    blinds: Sequence[bytes],
    check: BatchCheck,
    partials: Sequence[PartialEvaluation],
    proven: Sequence[PartialEvaluation],
    public_shares: Mapping[int, bytes],
    *,
    trusted: int | None = None,
) -> list[bytes]:
    """RFC 9497 Finalize over unproven partials that pass the batch check.

    `partials` are the participants' answers for the batch (proofs ignored),
    `proven` their answers for `check.composite` alone, each a single element
    with a DLEQ proof against lambda_i * K_i.  Share `trusted` is the
    caller's own: its two answers carry no proof and are not checked.
    Raises PartialsRejected naming every custodian found at fault.
    """
    participants = _check_participants([p.index for p in partials])
    if sorted(p.index for p in proven) != list(participants):
        raise InvalidInputError("proven evaluations must come from exactly the participants")
    size = len(check.weights)
    if not len(inputs) == len(blinds) == size:
        raise InvalidInputError("inputs, blinds and the batch check differ in length")
    bad: dict[int, str] = {}
    for partial in partials:
        if len(partial.evaluated) != size:
            got = len(partial.evaluated)
            bad[partial.index] = f"custodian {partial.index} answered {got} elements for {size}"
        elif partial.index != trusted:
            try:  # lengths and the identity: cheap; the encodings count in the sum
                oprf._check_shapes(partial.evaluated, "evaluated_element")
            except DeserializeError as exc:
                bad[partial.index] = f"custodian {partial.index}: {exc}"
    proven_by: dict[int, bytes] = {}
    for answer in proven:
        if answer.index == trusted:
            proven_by[answer.index] = answer.evaluated[0]
            continue
        try:
            _verify_check_answer(answer, public_shares, participants, check.composite)
        except (VerifyError, DeserializeError, InvalidInputError) as exc:
            bad[answer.index] = f"custodian {answer.index}, proving the batch check: {exc}"
            continue
        proven_by[answer.index] = answer.evaluated[0]
    if bad:
        raise PartialsRejected(bad)
    total = proven_by[participants[0]]
    for index in participants[1:]:
        total = group.element_add(total, proven_by[index])
    try:
        combined = combine(partials)
        passed = group.elements_equal(oprf._weighted_sum(check.weights, combined), total)
    except RuntimeError:  # a non-canonical element reached libsodium: blame below names it
        passed = False
    if not passed:
        raise PartialsRejected(_blame(check, partials, proven_by, trusted))
    return oprf._unblind_and_hash(inputs, blinds, combined, None)


def _verify_check_answer(
    answer: PartialEvaluation,
    public_shares: Mapping[int, bytes],
    participants: Sequence[int],
    composite: bytes,
) -> None:
    if answer.index not in public_shares:
        raise InvalidInputError(f"no public share known for custodian {answer.index}")
    if len(answer.evaluated) != 1:
        raise VerifyError(f"answered {len(answer.evaluated)} elements for 1")
    weight = lagrange_coefficient(answer.index, participants)
    weighted_public = group.scalar_mult(
        weight, group.decode_element(public_shares[answer.index], name="public share")
    )
    oprf.verify_evaluation_proof(weighted_public, [composite], answer.evaluated, answer.proof, MODE)


def _blame(
    check: BatchCheck,
    partials: Sequence[PartialEvaluation],
    proven_by: Mapping[int, bytes],
    trusted: int | None,
) -> dict[int, str]:
    """Who made the batch check fail: each custodian's own combination of its
    answers against its proven evaluation of the combined element."""
    bad: dict[int, str] = {}
    for partial in partials:
        if partial.index == trusted:
            continue
        try:
            mine = oprf._weighted_sum(check.weights, partial.evaluated, "evaluated_element")
        except DeserializeError as exc:
            bad[partial.index] = f"custodian {partial.index}: {exc}"
            continue
        if not group.elements_equal(mine, proven_by[partial.index]):
            bad[partial.index] = (
                f"custodian {partial.index}: its answers for the batch do not match "
                "its proven evaluation of their random combination"
            )
    if not bad:  # every other answer checks out: the caller's own two disagree
        raise VerifyError(
            f"the batch check failed on the caller's own share {trusted}: its answer "
            "for the batch and its answer for the combination disagree"
        )
    return bad
