"""t-of-n threshold VOPRF: dealing, Feldman checks, partial evaluation, combination."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from psi import group, oprf, threshold
from psi.errors import DeserializeError, InvalidInputError, VerifyError
from psi.oprf import Mode
from psi.threshold import KeyShare, PartialEvaluation

MODE = Mode.VOPRF
Setup = tuple[tuple[KeyShare, ...], threshold.FeldmanCommitments]
Lie = Callable[[int, list[bytes], threshold.BatchCheck], list[bytes]]


def t_of_n(least: int) -> st.SearchStrategy[tuple[int, int]]:
    """(t, n) with least <= t <= 4 and t <= n <= t + 2."""
    return st.tuples(st.integers(least, 4), st.integers(0, 2)).map(lambda p: (p[0], p[0] + p[1]))


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
    t_n=t_of_n(least=1),
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
    t_n=t_of_n(least=2),
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
    mine = threshold.unproven_partial_evaluate(shares[own - 1], subset, blinded)
    assert mine.proof == b""
    others = [
        threshold.partial_evaluate(shares[i - 1], subset, blinded) for i in subset if i != own
    ]
    public = {i: commitments.public_share(i) for i in subset}
    outputs = threshold.verified_finalize(xs, blinds, blinded, [mine, *others], public, trusted=own)
    assert outputs == [oprf.evaluate(key, x, MODE) for x in xs]
    # Not trusted, the unproven partial is rejected, by name.
    with pytest.raises(threshold.PartialsRejected, match=f"custodian {own}") as caught:
        threshold.verified_finalize(xs, blinds, blinded, [mine, *others], public)
    assert set(caught.value.by_custodian) == {own}
    # The unproven partial is the proven one without its proof.
    assert (
        mine.evaluated
        == threshold._partial_evaluate_with(
            shares[own - 1], subset, blinded, group.random_scalar()
        ).evaluated
    )


# -- the per-batch check ---------------------------------------------------------------


def checked(
    shares: tuple[KeyShare, ...],
    commitments: threshold.FeldmanCommitments,
    subset: tuple[int, ...],
    xs: list[bytes],
    lie: Lie | None = None,
    prove: Callable[[int, PartialEvaluation], PartialEvaluation] | None = None,
    trusted: int | None = None,
) -> list[bytes]:
    """The bureau-side flow with the per-batch check.  `lie(index, answer,
    check)` may change custodian `index`'s unproven answer for the batch,
    `prove(index, answer)` its proven answer for the combination."""
    blinds, blinded = oprf.blind_batch(xs, MODE)
    check = threshold.batch_check(blinded)
    partials, proven = [], []
    for i in subset:
        answer = list(threshold.unproven_partial_evaluate(shares[i - 1], subset, blinded).evaluated)
        if lie is not None:
            answer = lie(i, answer, check)
        partials.append(PartialEvaluation(i, tuple(answer), b""))
        one = threshold.partial_evaluate(shares[i - 1], subset, [check.composite])
        proven.append(prove(i, one) if prove is not None else one)
    public = {i: commitments.public_share(i) for i in subset}
    return threshold.checked_finalize(xs, blinds, check, partials, proven, public, trusted=trusted)


@settings(max_examples=12, deadline=None)
@given(
    t_n=t_of_n(least=1),
    xs=st.lists(st.binary(max_size=20), min_size=1, max_size=4),
    data=st.data(),
)
def test_the_batch_check_passes_honest_answers_with_the_single_key_output(
    t_n: tuple[int, int], xs: list[bytes], data: st.DataObject
) -> None:
    t, n = t_n
    key = group.random_scalar()
    shares, commitments = threshold.split_key(key, t, n)
    subset = tuple(sorted(data.draw(st.sets(st.integers(1, n), min_size=t, max_size=n))))
    trusted = data.draw(st.sampled_from([None, *subset]))

    def unproven_own(i: int, answer: PartialEvaluation) -> PartialEvaluation:
        return PartialEvaluation(i, answer.evaluated, b"") if i == trusted else answer

    expected = [oprf.evaluate(key, x, MODE) for x in xs]
    assert checked(shares, commitments, subset, xs, prove=unproven_own, trusted=trusted) == expected


LIES: dict[str, Lie] = {
    "doubled": lambda i, a, c: [*a[:-1], group.scalar_mult(group.scalar_from_int(2), a[-1])],
    "random element": lambda i, a, c: [group.scalar_mult_base(group.random_scalar()), *a[1:]],
    "swapped": lambda i, a, c: [a[-1], *a[1:-1], a[0]] if len(a) > 1 else [a[0]] * 2,
    "non-canonical": lambda i, a, c: [*a[:-1], b"\xff" * 32],
    "identity": lambda i, a, c: [group.IDENTITY, *a[1:]],
    "short": lambda i, a, c: a[:-1],
    "too long": lambda i, a, c: [*a, a[0]],
    "wrong length": lambda i, a, c: [a[0][:31], *a[1:]],
}


@settings(max_examples=40, deadline=None)
@given(
    lie=st.sampled_from(sorted(LIES)),
    liars=st.sets(st.sampled_from([1, 3, 4]), min_size=1, max_size=3),
    size=st.integers(1, 6),
)
def test_every_lie_in_the_batch_is_caught_and_only_liars_are_named(
    setup_3_of_4: Setup, lie: str, liars: set[int], size: int
) -> None:
    shares, commitments = setup_3_of_4
    xs = [bytes([j]) for j in range(size)]
    if lie == "swapped" and size == 1:
        lie = "doubled"  # nothing to swap
    forge = LIES[lie]
    with pytest.raises(threshold.PartialsRejected) as caught:
        checked(
            shares,
            commitments,
            (1, 3, 4),
            xs,
            lie=lambda i, a, c: forge(i, a, c) if i in liars else a,
        )
    assert set(caught.value.by_custodian) == liars, (lie, caught.value.by_custodian)
    for index, why in caught.value.by_custodian.items():
        assert why.startswith(f"custodian {index}"), why
    if lie == "non-canonical":
        assert "not a canonical ristretto255 encoding" in str(caught.value)


def test_answers_from_another_key_batch_or_participant_set_are_caught(
    setup_3_of_4: Setup,
) -> None:
    shares, commitments = setup_3_of_4
    xs = [b"a", b"b", b"c"]
    _, other_batch = oprf.blind_batch(xs, MODE)
    other_key = KeyShare(3, group.random_scalar())
    other_set = group.scalar_mul(
        threshold.lagrange_coefficient(3, (1, 2, 3)),
        group.scalar_invert(threshold.lagrange_coefficient(3, (1, 3, 4))),
    )
    answers: dict[str, Lie] = {
        "another key": lambda i, a, c: list(
            threshold.unproven_partial_evaluate(other_key, (1, 3, 4), other_batch).evaluated
        ),
        "another batch": lambda i, a, c: list(
            threshold.unproven_partial_evaluate(shares[2], (1, 3, 4), other_batch).evaluated
        ),
        # lambda_3 for {1, 2, 3} instead of {1, 3, 4}, on the right batch
        "another participant set": lambda i, a, c: [group.scalar_mult(other_set, e) for e in a],
    }
    for what, forge in answers.items():

        def only_3(
            i: int, a: list[bytes], c: threshold.BatchCheck, forge: Lie = forge
        ) -> list[bytes]:
            return forge(i, a, c) if i == 3 else a

        with pytest.raises(threshold.PartialsRejected) as caught:
            checked(shares, commitments, (1, 3, 4), xs, lie=only_3)
        assert set(caught.value.by_custodian) == {3}, what


@pytest.mark.parametrize("lie", ["other key", "garbage proof", "two elements", "identity"])
def test_a_lie_about_the_combination_is_caught(setup_3_of_4: Setup, lie: str) -> None:
    shares, commitments = setup_3_of_4

    def prove(i: int, answer: PartialEvaluation) -> PartialEvaluation:
        if i != 4:
            return answer
        if lie == "other key":
            return threshold.partial_evaluate(
                KeyShare(4, group.random_scalar()),
                (1, 3, 4),
                [group.scalar_mult_base(group.random_scalar())],
            )
        if lie == "garbage proof":
            return PartialEvaluation(i, answer.evaluated, bytes(reversed(answer.proof)))
        if lie == "two elements":
            return PartialEvaluation(i, answer.evaluated * 2, answer.proof)
        return PartialEvaluation(i, (group.IDENTITY,), answer.proof)

    with pytest.raises(
        threshold.PartialsRejected, match="custodian 4, proving the batch check"
    ) as caught:
        checked(shares, commitments, (1, 3, 4), [b"a", b"b"], prove=prove)
    assert set(caught.value.by_custodian) == {4}


def test_errors_that_cancel_out_leave_the_output_right(setup_3_of_4: Setup) -> None:
    """Two custodians may shift their answers by opposite amounts: the sums,
    hence the tags, are exactly right, which is all the check promises."""
    shares, commitments = setup_3_of_4
    key = threshold.recover_key(shares)
    shift = group.scalar_mult_base(group.random_scalar())
    xs = [b"a", b"b"]

    def lie(i: int, answer: list[bytes], check: threshold.BatchCheck) -> list[bytes]:
        if i == 1:
            return [group.element_add(answer[0], shift), *answer[1:]]
        if i == 3:
            return [group.element_sub(answer[0], shift), *answer[1:]]
        return answer

    assert checked(shares, commitments, (1, 3, 4), xs, lie=lie) == [
        oprf.evaluate(key, x, MODE) for x in xs
    ]


def test_a_custodian_that_knew_the_weights_could_hide_an_error(setup_3_of_4: Setup) -> None:
    """Why the weights never leave the bureau: with them, an error on one
    element is cancelled by a matching one on another and passes the check."""
    shares, commitments = setup_3_of_4
    key = threshold.recover_key(shares)
    xs = [b"a", b"b"]

    def lie(i: int, answer: list[bytes], check: threshold.BatchCheck) -> list[bytes]:
        if i != 3:
            return answer
        # e_0 = E, e_1 = -(d_0 / d_1) E: sum_j d_j e_j = 0.
        error = group.scalar_mult_base(group.random_scalar())
        ratio = group.scalar_mul(check.weights[0], group.scalar_invert(check.weights[1]))
        return [
            group.element_add(answer[0], error),
            group.element_sub(answer[1], group.scalar_mult(ratio, error)),
        ]

    outputs = checked(shares, commitments, (1, 3, 4), xs, lie=lie)
    assert outputs != [oprf.evaluate(key, x, MODE) for x in xs]


def test_own_answers_that_disagree_are_reported_as_the_callers_own(
    setup_3_of_4: Setup,
) -> None:
    """The caller's own share is not checked (it passed its Feldman check when
    loaded); if its two answers disagree, no custodian is blamed for it."""
    shares, commitments = setup_3_of_4
    two = group.scalar_from_int(2)

    def prove(i: int, answer: PartialEvaluation) -> PartialEvaluation:
        if i != 3:
            return answer
        return PartialEvaluation(i, (group.scalar_mult(two, answer.evaluated[0]),), b"")

    with pytest.raises(VerifyError, match="caller's own share 3") as caught:
        checked(shares, commitments, (1, 3, 4), [b"a"], prove=prove, trusted=3)
    assert not isinstance(caught.value, threshold.PartialsRejected)


def test_the_batch_check_keeps_its_weights_out_of_reprs_and_refuses_bad_shapes() -> None:
    _, blinded = oprf.blind_batch([b"a", b"b"], MODE)
    check = threshold.batch_check(blinded)
    assert len(check.weights) == 2 and check.composite != group.IDENTITY
    assert all(w.hex() not in repr(check) for w in check.weights)
    assert check != threshold.batch_check(blinded)  # fresh weights every time
    with pytest.raises(InvalidInputError, match="empty batch"):
        threshold.batch_check([])
    with pytest.raises(InvalidInputError, match="1 weights for 2 elements"):
        threshold._batch_check_with(blinded, check.weights[:1])


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


@pytest.fixture(scope="module")
def setup_3_of_4() -> Setup:
    return threshold.generate_threshold_key(3, 4)


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
