"""The public surface of psi is pinned: a change here is a deliberate API change."""

from __future__ import annotations

from psi import group, oprf, tags, threshold
from psi.oprf import Mode


def test_oprf_contract() -> None:
    # The contract from the foundation issue, verbatim.
    seed, info = bytes(range(32)), b"epoch 1"
    sk, pk = oprf.derive_key_pair(seed, info, oprf.Mode.VOPRF)
    out = oprf.evaluate(sk, b"input", oprf.Mode.VOPRF)
    assert isinstance(sk, bytes) and isinstance(pk, bytes)
    assert len(sk) == 32 and len(pk) == 32 and len(out) == 64
    assert pk == oprf.public_key(sk)
    assert [m.value for m in Mode] == [0, 1, 2]


def test_public_names() -> None:
    assert set(oprf.__all__) == {
        "OUTPUT_LENGTH", "PROOF_LENGTH", "SUITE_ID", "Mode", "blind", "blind_batch",
        "blind_evaluate", "blind_evaluate_batch", "compute_composites",
        "compute_composites_fast", "context_string", "derive_key_pair", "evaluate", "finalize",
        "finalize_batch", "generate_key_pair", "generate_proof", "hash_input",
        "poprf_blind_batch", "poprf_blind_evaluate_batch", "poprf_evaluate",
        "poprf_finalize_batch", "public_key", "verifiable_blind_evaluate_batch",
        "verifiable_finalize_batch", "verify_evaluation_proof", "verify_proof",
    }  # fmt: skip
    assert set(threshold.__all__) == {
        "MAX_CUSTODIANS", "BatchCheck", "FeldmanCommitments", "KeyShare", "PartialEvaluation",
        "PartialsRejected", "batch_check", "checked_finalize", "combine", "finalize",
        "generate_threshold_key", "lagrange_coefficient", "partial_evaluate", "recover_key",
        "split_key", "unproven_partial_evaluate", "verified_finalize", "verify_and_combine",
        "verify_partial", "verify_share",
    }  # fmt: skip
    assert set(tags.__all__) == {"TAG_LENGTH", "tag_from_output"}
    for module in (group, oprf, tags, threshold):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"
            obj = getattr(module, name)
            if callable(obj) and not isinstance(obj, type):
                assert obj.__doc__, f"{module.__name__}.{name} has no docstring"
