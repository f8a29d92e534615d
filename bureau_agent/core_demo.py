"""A short, real run of the cryptographic core, for `blindmatch demo --core`.

Nothing is simulated: a 2-of-3 key ceremony, custodians' partial
evaluations checked per batch (a DLEQ proof over a secret random
combination of the batch, as the agents check enrollment batches) or by a
proof in every answer, the bureau's combination and finalization, all
through `psi`.  The transcript is returned as data; the CLI
renders it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from psi import oprf, tags, threshold
from psi.errors import VerifyError
from psi.identifiers import DateOrder, MatchKey, passport_key, person_keys
from psi.oprf import Mode

__all__ = ["DemoStep", "run_core_demo"]

CUSTODIANS = {1: "FRA", 2: "DEU", 3: "BRA"}


@dataclass
class DemoStep:
    """One titled step of the transcript, with its lines and whether it passed."""

    title: str
    lines: list[str] = field(default_factory=list)
    ok: bool = True


def _tag_with(
    shares: Sequence[threshold.KeyShare],
    public: dict[int, bytes],
    participants: tuple[int, ...],
    keys: Sequence[MatchKey],
) -> list[bytes]:
    """The bureau's side of tagging, talking to the custodians in `participants`:
    unproven answers, then each custodian's proven evaluation of the batch's
    secret random combination."""
    inputs = [k.oprf_input for k in keys]
    blinds, blinded = oprf.blind_batch(inputs, Mode.VOPRF)
    check = threshold.batch_check(blinded)
    by_index = {s.index: s for s in shares}
    partials = [
        threshold.unproven_partial_evaluate(by_index[i], participants, blinded)
        for i in participants
    ]
    proven = [
        threshold.partial_evaluate(by_index[i], participants, [check.composite])
        for i in participants
    ]
    outputs = threshold.checked_finalize(inputs, blinds, check, partials, proven, public)
    return [tags.tag_from_output(o) for o in outputs]


def run_core_demo() -> list[DemoStep]:
    """Run the demonstration and return its transcript."""
    steps: list[DemoStep] = []

    ceremony = DemoStep("Key ceremony: epoch key split 2-of-3 among FRA, DEU, BRA")
    shares, commitments = threshold.generate_threshold_key(2, 3)
    for share in shares:
        threshold.verify_share(share, commitments)
        public_share = commitments.public_share(share.index).hex()[:16]
        ceremony.lines.append(
            f"custodian {CUSTODIANS[share.index]} (index {share.index}) checked its share "
            f"against the Feldman commitments: public share {public_share}…"
        )
    ceremony.lines.append(f"group public key {commitments.group_public_key.hex()[:16]}…")
    steps.append(ceremony)
    public = {s.index: commitments.public_share(s.index) for s in shares}

    keys_step = DemoStep("Identifiers become canonical match keys")
    records = {
        "FRA watch list": [
            passport_key("FRA", "12 AB-34567"),
            *person_keys("Müller, Hans-Peter", "1980-02-03"),
            *person_keys("Mohammed Al-Rashid", "1975-05-06"),
        ],
        "DEU passenger list": [
            passport_key("fr", "12ab34567"),
            *person_keys("HANS PETER MUELLER", "03.02.1980", date_order=DateOrder.DMY),
            *person_keys("محمد الراشد", "06/05/1975", date_order=DateOrder.DMY),
        ],
        "BRA stolen passports": [passport_key("BRA", "FX 998 877")],
    }
    for source, keys in records.items():
        for key in keys:
            keys_step.lines.append(
                f"{source:<22} {key.type.value:<16} {key.value}  ({key.type.strength.value})"
            )
    steps.append(keys_step)

    tagging = DemoStep("Tagging with every pair of custodians gives the same tags")
    fra_keys = records["FRA watch list"]
    results = {}
    for pair in ((1, 2), (1, 3), (2, 3)):
        results[pair] = _tag_with(shares, public, pair, fra_keys)
        names = "+".join(CUSTODIANS[i] for i in pair)
        tagging.lines.append(
            f"custodians {names:<8} -> " + " ".join(t.hex()[:12] for t in results[pair])
        )
    agree = len({tuple(r) for r in results.values()}) == 1
    # For this demonstration only, the ceremony's key is reconstructed so the
    # threshold result can be compared with the single-key RFC 9497 Evaluate.
    epoch_key = threshold.recover_key(shares[:2])
    single = [
        tags.tag_from_output(oprf.evaluate(epoch_key, k.oprf_input, Mode.VOPRF)) for k in fra_keys
    ]
    tagging.lines.append(
        "single-key RFC 9497 Evaluate -> " + " ".join(t.hex()[:12] for t in single)
    )
    tagging.ok = agree and results[(1, 2)] == single
    tagging.lines.append("all equal: " + ("yes" if tagging.ok else "NO"))
    steps.append(tagging)

    matching = DemoStep("Matching tags across bureaus (what the hub sees)")
    deu = _tag_with(shares, public, (2, 3), records["DEU passenger list"])
    bra = _tag_with(shares, public, (1, 3), records["BRA stolen passports"])
    fra_index = {t: k for t, k in zip(results[(1, 2)], fra_keys, strict=True)}
    hits = [
        (fra_index[t], k)
        for t, k in zip(deu, records["DEU passenger list"], strict=True)
        if t in fra_index
    ]
    for fra_key, _ in hits:
        matching.lines.append(
            f"DEU hits FRA's {fra_key.value!r}: {fra_key.type.strength.value} match"
        )
    matching.lines.append(f"BRA hits FRA: {sum(t in fra_index for t in bra)} (different passport)")
    # Everything but the exact key of the Arabic-script name meets: that one is a
    # candidate only, because two transliterations are not the same exact name.
    matching.ok = len(hits) == len(fra_keys) - 1 and not any(t in fra_index for t in bra)
    steps.append(matching)

    cheat = DemoStep("A dishonest custodian is caught and named")
    forged_share = threshold.KeyShare(3, threshold.generate_threshold_key(1, 1)[0][0].value)
    inputs = [k.oprf_input for k in fra_keys]
    blinds, blinded = oprf.blind_batch(inputs, Mode.VOPRF)
    honest = threshold.partial_evaluate(shares[0], (1, 3), blinded)
    forged = threshold.partial_evaluate(forged_share, (1, 3), blinded)
    caught = 0
    try:
        threshold.verify_and_combine(public, blinded, [honest, forged])
        cheat.lines.append("forged answer accepted: FAILURE")
    except VerifyError as exc:
        cheat.lines.append(f"a proof in every answer: rejected: {exc}")
        caught += 1
    # The per-batch check: BRA proves its evaluation of the combination
    # honestly but changes one element of its unproven answer.
    check = threshold.batch_check(blinded)
    lying = list(threshold.unproven_partial_evaluate(shares[2], (1, 3), blinded).evaluated)
    lying[1] = oprf.blind_evaluate(threshold.generate_threshold_key(1, 1)[0][0].value, blinded[1])
    try:
        threshold.checked_finalize(
            inputs,
            blinds,
            check,
            [
                threshold.unproven_partial_evaluate(shares[0], (1, 3), blinded),
                threshold.PartialEvaluation(3, tuple(lying), b""),
            ],
            [threshold.partial_evaluate(shares[i - 1], (1, 3), [check.composite]) for i in (1, 3)],
            public,
        )
        cheat.lines.append("changed element accepted: FAILURE")
    except threshold.PartialsRejected as exc:
        cheat.lines.append(f"the per-batch check: rejected: {exc}")
        caught += 1
    retry = _tag_with(shares, public, (1, 2), fra_keys)
    cheat.lines.append("retried with FRA+DEU: tags " + ("match" if retry == single else "DIFFER"))
    cheat.ok = caught == 2 and retry == single
    steps.append(cheat)

    alone = DemoStep("One custodian alone (t - 1) cannot produce the tags")
    lone = _tag_with(shares, public, (1,), fra_keys)
    alone.ok = all(a != b for a, b in zip(lone, single, strict=True))
    alone.lines.append("FRA alone -> " + " ".join(t.hex()[:12] for t in lone))
    alone.lines.append("differs from the real tags: " + ("yes" if alone.ok else "NO"))
    steps.append(alone)
    return steps
