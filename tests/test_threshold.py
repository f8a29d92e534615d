"""t-of-n threshold VOPRF: dealing, Feldman checks, partial evaluation, combination."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from psi import group, oprf, threshold
from psi.errors import DeserializeError, InvalidInputError, VerifyError
from psi.oprf import Mode
from psi.threshold import KeyShare, PartialEvaluation

MODE = Mode.VOPRF
Setup = tuple[tuple[KeyShare, ...], threshold.FeldmanCommitments]


def threshold_outputs(
    shares: tuple[KeyShare, ...],
    commitments: threshold.FeldmanCommitments,
    subset: tuple[int, ...],
    xs: list[bytes],
) -> list[bytes]:
    """The whole bureau-side flow for one participant subset."""
    blinds, blinded = oprf.blind_batch(xs, MODE)
    by_index = {s.index: s for s in shares}
    partials = [threshold.partial_evaluate(by_index[i], subset, blinded) for i in subset]
    public = {i: commitments.public_share(i) for i in subset}
    combined = threshold.verify_and_combine(public, blinded, partials)
    return oprf.finalize_batch(xs, blinds, combined, MODE)


@settings(max_examples=12, deadline=None)
@given(
    t_n=st.tuples(st.integers(1, 4), st.integers(0, 2)).map(lambda p: (p[0], p[0] + p[1])),
    xs=st.lists(st.binary(max_size=20), min_size=1, max_size=3),
)
def test_every_t_subset_gives_the_single_key_output(t_n: tuple[int, int], xs: list[bytes]) -> None:
    t, n = t_n
    key = group.random_scalar()
    shares, commitments = threshold.split_key(key, t, n)
    expected = [oprf.evaluate(key, x, MODE) for x in xs]
    assert commitments.group_public_key == oprf.public_key(key)
    for subset in itertools.combinations(range(1, n + 1), t):
        assert threshold_outputs(shares, commitments, subset, xs) == expected


@settings(max_examples=12, deadline=None)
@given(
    t_n=st.tuples(st.integers(2, 4), st.integers(0, 2)).map(lambda p: (p[0], p[0] + p[1])),
    xs=st.lists(st.binary(max_size=20), min_size=1, max_size=3),
    data=st.data(),
)
def test_a_custodians_own_unproven_partial_gives_the_same_output(
    t_n: tuple[int, int], xs: list[bytes], data: st.DataObject
) -> None:
    """A custodian bureau applies its own share without a proof and verifies
    the others: the outputs are the single-key ones all the same."""
    t, n = t_n
    key = group.random_scalar()
    shares, commitments = threshold.split_key(key, t, n)
    subset = tuple(sorted(data.draw(st.sets(st.integers(1, n), min_size=t, max_size=t))))
    own = data.draw(st.sampled_from(subset))
    blinds, blinded = oprf.blind_batch(xs, MODE)
    mine = threshold.own_partial_evaluate(shares[own - 1], subset, blinded)
    assert mine.proof == b""
    others = [
        threshold.partial_evaluate(shares[i - 1], subset, blinded) for i in subset if i != own
    ]
    for partial in others:
        threshold.verify_partial(partial, commitments.public_share(partial.index), subset, blinded)
    outputs = threshold.finalize(xs, blinds, [mine, *others])
    assert outputs == [oprf.evaluate(key, x, MODE) for x in xs]
    # The unproven partial is the proven one without its proof.
    assert (
        mine.evaluated
        == threshold._partial_evaluate_with(
            shares[own - 1], subset, blinded, group.random_scalar()
        ).evaluated
    )


@settings(max_examples=10, deadline=None)
@given(t=st.integers(2, 5))
def test_t_minus_one_shares_do_not_give_the_output(t: int) -> None:
    key = group.random_scalar()
    shares, commitments = threshold.split_key(key, t, t + 1)
    xs = [b"passport|FRA|12AB34567"]
    expected = [oprf.evaluate(key, x, MODE) for x in xs]
    subset = tuple(range(1, t))  # t - 1 custodians
    assert threshold_outputs(shares, commitments, subset, xs) != expected
    assert threshold.recover_key(shares[: t - 1]) != key
    assert threshold.recover_key(shares[1 : t + 1]) == key


def test_every_share_passes_its_feldman_check() -> None:
    shares, commitments = threshold.generate_threshold_key(3, 5)
    for share in shares:
        threshold.verify_share(share, commitments)


@settings(max_examples=20, deadline=None)
@given(index=st.integers(1, 5), delta=st.integers(1, 2**64))
def test_a_tampered_share_fails_its_feldman_check(index: int, delta: int) -> None:
    shares, commitments = threshold.generate_threshold_key(3, 5)
    share = shares[index - 1]
    bad_value = group.scalar_from_int(group.scalar_to_int(share.value) + delta)
    with pytest.raises(VerifyError, match=f"share {index} does not match"):
        threshold.verify_share(KeyShare(index, bad_value), commitments)
    with pytest.raises(VerifyError):  # a good value presented under another index
        threshold.verify_share(KeyShare(index % 5 + 1, share.value), commitments)


def test_share_repr_does_not_leak_the_secret() -> None:
    shares, _ = threshold.generate_threshold_key(2, 3)
    assert shares[0].value.hex() not in repr(shares[0])
    assert "redacted" in repr(shares[0])


@pytest.fixture(scope="module")
def setup_2_of_3() -> Setup:
    return threshold.generate_threshold_key(2, 3)


def _partials(
    shares: tuple[KeyShare, ...], subset: tuple[int, ...], blinded: list[bytes]
) -> list[PartialEvaluation]:
    return [threshold.partial_evaluate(shares[i - 1], subset, blinded) for i in subset]


def test_custodian_with_another_key_is_detected_and_named(setup_2_of_3: Setup) -> None:
    shares, commitments = setup_2_of_3
    _, blinded = oprf.blind_batch([b"a", b"b"], MODE)
    subset = (1, 3)
    partials = _partials(shares, subset, blinded)
    impostor = threshold.partial_evaluate(KeyShare(3, group.random_scalar()), subset, blinded)
    public = {i: commitments.public_share(i) for i in subset}
    with pytest.raises(VerifyError, match="custodian 3"):
        threshold.verify_and_combine(public, blinded, [partials[0], impostor])


def test_wrong_element_for_one_item_is_detected(setup_2_of_3: Setup) -> None:
    shares, commitments = setup_2_of_3
    _, blinded = oprf.blind_batch([b"a", b"b", b"c"], MODE)
    subset = (1, 2)
    p1, p2 = _partials(shares, subset, blinded)
    wrong = list(p2.evaluated)
    wrong[1] = group.scalar_mult(group.scalar_from_int(2), wrong[1])
    forged = PartialEvaluation(2, tuple(wrong), p2.proof)
    with pytest.raises(VerifyError, match="custodian 2"):
        threshold.verify_partial(forged, commitments.public_share(2), subset, blinded)
    threshold.verify_partial(p1, commitments.public_share(1), subset, blinded)


def test_replayed_answer_for_another_batch_is_detected(setup_2_of_3: Setup) -> None:
    shares, commitments = setup_2_of_3
    subset = (2, 3)
    _, old = oprf.blind_batch([b"a", b"b"], MODE)
    _, new = oprf.blind_batch([b"a", b"b"], MODE)
    replay = threshold.partial_evaluate(shares[1], subset, old)
    with pytest.raises(VerifyError, match="custodian 2"):
        threshold.verify_partial(replay, commitments.public_share(2), subset, new)


def test_answer_for_another_participant_set_is_detected(setup_2_of_3: Setup) -> None:
    shares, commitments = setup_2_of_3
    _, blinded = oprf.blind_batch([b"a"], MODE)
    # Computed with lambda for {1, 2} but presented for {1, 3}.
    partial = threshold.partial_evaluate(shares[0], (1, 2), blinded)
    with pytest.raises(VerifyError, match="custodian 1"):
        threshold.verify_partial(partial, commitments.public_share(1), (1, 3), blinded)


def test_malformed_element_from_custodian(setup_2_of_3: Setup) -> None:
    shares, commitments = setup_2_of_3
    _, blinded = oprf.blind_batch([b"a", b"b"], MODE)
    p = threshold.partial_evaluate(shares[0], (1, 2), blinded)
    for bad in (group.IDENTITY, b"\xff" * 32):
        forged = PartialEvaluation(1, (p.evaluated[0], bad), p.proof)
        with pytest.raises(DeserializeError, match=r"evaluated_element\[1\]"):
            threshold.verify_partial(forged, commitments.public_share(1), (1, 2), blinded)


def test_short_answer_is_detected(setup_2_of_3: Setup) -> None:
    shares, commitments = setup_2_of_3
    _, blinded = oprf.blind_batch([b"a", b"b"], MODE)
    p = threshold.partial_evaluate(shares[0], (1, 2), blinded)
    short = PartialEvaluation(1, p.evaluated[:1], p.proof)
    with pytest.raises(VerifyError, match="answered 1 elements for 2"):
        threshold.verify_partial(short, commitments.public_share(1), (1, 2), blinded)


def test_known_polynomial_shares() -> None:
    # f(x) = 7 + 3x + 5x^2, so f(1) = 15, f(2) = 33, f(3) = 61.
    s = group.scalar_from_int
    shares, commitments = threshold._split_key_with(s(7), 3, 3, [s(3), s(5)])
    assert [group.scalar_to_int(x.value) for x in shares] == [15, 33, 61]
    assert commitments.points == tuple(group.scalar_mult_base(s(v)) for v in (7, 3, 5))
    assert group.scalar_to_int(threshold.recover_key(shares)) == 7


def test_lagrange_coefficients_sum_to_one_and_reject_bad_sets() -> None:
    subset = (2, 5, 9)
    total = sum(group.scalar_to_int(threshold.lagrange_coefficient(i, subset)) for i in subset)
    assert total % group.ORDER == 1
    with pytest.raises(InvalidInputError, match="not in the participant set"):
        threshold.lagrange_coefficient(4, subset)
    with pytest.raises(InvalidInputError, match="repeats"):
        threshold.lagrange_coefficient(2, (2, 2))
    with pytest.raises(InvalidInputError, match="outside"):
        threshold.lagrange_coefficient(0, (0, 1))


@pytest.mark.parametrize(("t", "n"), [(0, 3), (4, 3), (2, 256)])
def test_bad_threshold_parameters(t: int, n: int) -> None:
    with pytest.raises(InvalidInputError, match="threshold"):
        threshold.split_key(group.random_scalar(), t, n)


def test_commitments_decode_rejects_identity() -> None:
    _, commitments = threshold.generate_threshold_key(2, 3)
    with pytest.raises(DeserializeError, match=r"commitment\[1\]"):
        threshold.FeldmanCommitments.decode([commitments.points[0], group.IDENTITY])
