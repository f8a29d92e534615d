"""OPRF core benchmark: per-step costs, tagging throughput, the libsodium floor,
and the peers (openmined-psi, voprf) measured in the same run.

    python -m benchmarks.bench_oprf [--n 100000] [--quick] [--json-out PATH]

Prints a readable table on stderr-free stdout followed by one JSON document
(also written to benchmarks/results/bench_oprf.json).  Nothing here is
asserted; the figures go to the README and the issue notes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import rbcl

from benchmarks import peers
from psi import group, oprf, tags, threshold
from psi.oprf import Mode

RESULTS = Path(__file__).parent / "results" / "bench_oprf.json"
BATCH = 1000

# -- inputs ------------------------------------------------------------------


def make_inputs(n: int) -> list[bytes]:
    """Deterministic canonical-looking match-key inputs (what enrollment feeds the OPRF)."""
    out = []
    for i in range(n):
        digest = hashlib.sha256(i.to_bytes(8, "big")).hexdigest()[:9].upper()
        out.append(f"blindmatch/v1|passport|FRA{digest}".encode())
    return out


def batches(items: Sequence[bytes], size: int = BATCH) -> list[list[bytes]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


# -- the pipelines (module level so a process pool can run them) -------------

_KEY: tuple[bytes, bytes] | None = None
_SHARES: tuple[tuple[threshold.KeyShare, ...], dict[int, bytes]] | None = None


def _init_worker(seed: bytes) -> None:
    """Give every worker the same single key and the same 2-of-3 sharing of it."""
    global _KEY, _SHARES
    sk, pk = oprf.derive_key_pair(seed, b"bench", Mode.VOPRF)
    _KEY = (sk, pk)
    coefficients = [group.hash_to_scalar(seed, b"bench-coefficient")]
    shares, commitments = threshold._split_key_with(sk, 2, 3, coefficients)
    _SHARES = (shares, {s.index: commitments.public_share(s.index) for s in shares})


def tag_batch_oprf(xs: list[bytes]) -> list[bytes]:
    """Client blind -> server evaluate -> client finalize -> tag, OPRF mode."""
    assert _KEY is not None
    sk, _ = _KEY
    blinds, blinded = oprf.blind_batch(xs, Mode.OPRF)
    evaluated = oprf.blind_evaluate_batch(sk, blinded)
    return [tags.tag_from_output(o) for o in oprf.finalize_batch(xs, blinds, evaluated, Mode.OPRF)]


def tag_batch_voprf(xs: list[bytes]) -> list[bytes]:
    """The same with the batch DLEQ proof generated and verified."""
    assert _KEY is not None
    sk, pk = _KEY
    blinds, blinded = oprf.blind_batch(xs, Mode.VOPRF)
    evaluated, proof = oprf.verifiable_blind_evaluate_batch(sk, pk, blinded)
    outputs = oprf.verifiable_finalize_batch(pk, xs, blinds, blinded, evaluated, proof)
    return [tags.tag_from_output(o) for o in outputs]


def tag_batch_threshold(xs: list[bytes]) -> list[bytes]:
    """2-of-3 threshold VOPRF as the agents run it: unproven answers and the
    per-batch check; both custodians' work and the bureau's, in one process."""
    assert _SHARES is not None
    shares, public = _SHARES
    participants = (1, 3)
    blinds, blinded = oprf.blind_batch(xs, Mode.VOPRF)
    check = threshold.batch_check(blinded)
    partials = [
        threshold.unproven_partial_evaluate(shares[i - 1], participants, blinded)
        for i in participants
    ]
    proven = [
        threshold.partial_evaluate(shares[i - 1], participants, [check.composite])
        for i in participants
    ]
    outputs = threshold.checked_finalize(xs, blinds, check, partials, proven, public)
    return [tags.tag_from_output(o) for o in outputs]


def tag_batch_threshold_proven(xs: list[bytes]) -> list[bytes]:
    """2-of-3 with a batch DLEQ proof in every custodian's answer (the agents'
    path for query-sized batches), for comparison."""
    assert _SHARES is not None
    shares, public = _SHARES
    participants = (1, 3)
    blinds, blinded = oprf.blind_batch(xs, Mode.VOPRF)
    partials = [
        threshold.partial_evaluate(shares[i - 1], participants, blinded) for i in participants
    ]
    outputs = threshold.verified_finalize(xs, blinds, blinded, partials, public)
    return [tags.tag_from_output(o) for o in outputs]


PIPELINES: dict[str, Callable[[list[bytes]], list[bytes]]] = {
    "OPRF": tag_batch_oprf,
    "VOPRF": tag_batch_voprf,
    "2-of-3 VOPRF": tag_batch_threshold,
    "2-of-3 proofs": tag_batch_threshold_proven,
}


def run_pipeline(
    name: str, items: Sequence[bytes], processes: int, seed: bytes
) -> tuple[float, list[bytes]]:
    fn = PIPELINES[name]
    chunks = batches(items)
    if processes == 1:
        _init_worker(seed)
        start = time.perf_counter()
        result = [t for chunk in chunks for t in fn(chunk)]
        return time.perf_counter() - start, result
    with ProcessPoolExecutor(processes, initializer=_init_worker, initargs=(seed,)) as pool:
        list(pool.map(fn, chunks[:processes]))  # warm the workers up outside the timing
        start = time.perf_counter()
        result = [t for part in pool.map(fn, chunks) for t in part]
        return time.perf_counter() - start, result


# -- per-step costs ----------------------------------------------------------


def _per_element(fn: Callable[[], object], n: int, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best / n * 1e6


def step_costs(xs: list[bytes], seed: bytes) -> dict[str, float]:
    """Microseconds per element of each VOPRF step, on one batch."""
    sk, pk = oprf.derive_key_pair(seed, b"bench", Mode.VOPRF)
    n = len(xs)
    blinds, blinded = oprf.blind_batch(xs, Mode.VOPRF)
    evaluated = oprf.blind_evaluate_batch(sk, blinded)
    proof = oprf.generate_proof(sk, group.GENERATOR, pk, blinded, evaluated, Mode.VOPRF)
    return {
        "hash_to_group": _per_element(lambda: [oprf.hash_input(x, Mode.VOPRF) for x in xs], n),
        "blind (incl. hash_to_group)": _per_element(lambda: oprf.blind_batch(xs, Mode.VOPRF), n),
        "evaluate": _per_element(lambda: oprf.blind_evaluate_batch(sk, blinded), n),
        "proof": _per_element(
            lambda: oprf.generate_proof(sk, group.GENERATOR, pk, blinded, evaluated, Mode.VOPRF), n
        ),
        "verify": _per_element(
            lambda: oprf.verify_proof(group.GENERATOR, pk, blinded, evaluated, proof, Mode.VOPRF), n
        ),
        "unblind + finalize": _per_element(
            lambda: oprf.finalize_batch(xs, blinds, evaluated, Mode.VOPRF), n
        ),
    }


# -- the libsodium floor -----------------------------------------------------

# What each pipeline must ask of libsodium per element (batch inversion costs
# three scalar multiplications per element plus one inversion per batch).  A
# peer's element is decoded inside the multiplication that first uses it
# (`group.decode_and_scalar_mult`), so validation adds no call of its own.
FLOOR_CALLS: dict[str, dict[str, int]] = {
    "OPRF": {"from_hash": 1, "scalarmult": 3, "scalar_mul": 3},
    "VOPRF": {"from_hash": 1, "scalarmult": 6, "add": 3, "scalar_mul": 3},
    # Blind 1; the check's weight (1 random scalar) and combination 1 (+1 add);
    # per custodian (x2) evaluate 1; combine 1 add; the combination of the
    # sums 1 (+1 add); unblind 1.  The proofs about the one combined element
    # are per batch, not per element.
    "2-of-3 VOPRF": {
        "from_hash": 1,
        "scalarmult": 6,
        "add": 3,
        "scalar_mul": 3,
        "scalar_random": 1,
    },
    # Blind 1; per custodian (x2) evaluate 1 and composite 1 (+1 add); the bureau's
    # verification per custodian (x2) 2 (+2 adds); combine 1 add; unblind 1.
    "2-of-3 proofs": {"from_hash": 1, "scalarmult": 10, "add": 7, "scalar_mul": 3},
}


def libsodium_call_costs(samples: int = 2000) -> dict[str, float]:
    """Microseconds per call of each libsodium primitive, on random valid data."""
    scalars = [rbcl.crypto_core_ristretto255_scalar_random() for _ in range(samples)]
    points = [rbcl.crypto_core_ristretto255_random() for _ in range(samples)]
    hashes = [os.urandom(64) for _ in range(samples)]
    mult = rbcl.crypto_scalarmult_ristretto255
    add = rbcl.crypto_core_ristretto255_add
    valid = rbcl.crypto_core_ristretto255_is_valid_point
    from_hash = rbcl.crypto_core_ristretto255_from_hash
    smul = rbcl.crypto_core_ristretto255_scalar_mul
    srandom = rbcl.crypto_core_ristretto255_scalar_random
    pairs = list(zip(scalars, points, strict=True))
    return {
        "scalarmult": _per_element(lambda: [mult(s, p) for s, p in pairs], samples),
        "add": _per_element(lambda: [add(p, p) for p in points], samples),
        "is_valid_point": _per_element(lambda: [valid(p) for p in points], samples),
        "from_hash": _per_element(lambda: [from_hash(h) for h in hashes], samples),
        "scalar_mul": _per_element(lambda: [smul(s, s) for s in scalars], samples),
        "scalar_random": _per_element(lambda: [srandom() for _ in scalars], samples),
    }


def floor_us(pipeline: str, costs: dict[str, float]) -> float:
    return sum(costs[call] * count for call, count in FLOOR_CALLS[pipeline].items())


# -- the report --------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="inputs to tag (default 100,000)")
    parser.add_argument("--quick", action="store_true", help="10,000 inputs, for a smoke run")
    parser.add_argument("--json-out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    n = 10_000 if args.quick else args.n
    seed = hashlib.sha256(b"blindmatch bench").digest()
    items = make_inputs(n)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    log(f"per-step costs on a batch of {BATCH} ...")
    steps = step_costs(items[:BATCH], seed)
    log("libsodium floor ...")
    calls = libsodium_call_costs()

    throughput: dict[str, dict[str, float]] = {}
    reference: dict[str, list[bytes]] = {}
    for name in PIPELINES:
        row: dict[str, float] = {}
        for procs in (1, 2):
            log(f"tagging {n} inputs: {name}, {procs} process(es) ...")
            seconds, result = run_pipeline(name, items, procs, seed)
            row[f"{procs}p_per_s"] = n / seconds
            row[f"{procs}p_us_per_element"] = seconds / n * 1e6
            if name in reference:
                # Both process counts and the threshold path must agree on every tag.
                assert result == reference[name], f"{name}: tags differ between runs"
            reference[name] = result
        row["two_core_scaling"] = row["2p_per_s"] / row["1p_per_s"]
        row["floor_us_per_element"] = floor_us(name, calls)
        row["overhead_over_floor"] = row["1p_us_per_element"] / row["floor_us_per_element"] - 1
        throughput[name] = row
    for name in ("2-of-3 VOPRF", "2-of-3 proofs"):
        assert reference["VOPRF"] == reference[name], f"{name}: tags differ from single-key"

    peer_rows: dict[str, dict[str, float]] = {}
    if peers.openmined_psi_available():
        log(f"openmined-psi on the same {n} inputs ...")
        peer_rows["openmined-psi"] = peers.bench_openmined_psi(items)
    if peers.voprf_available():
        log(f"voprf (Rust) on the same {n} inputs ...")
        peer_rows["voprf"] = peers.bench_voprf(items, batch_size=BATCH)

    ratios: dict[str, float] = {}
    if "openmined-psi" in peer_rows:
        ratios["OPRF 2 cores / openmined-psi client"] = (
            throughput["OPRF"]["2p_per_s"]
            * peer_rows["openmined-psi"]["client_us_per_element"]
            / 1e6
        )
    if "voprf" in peer_rows:
        ratios["VOPRF 2 cores / voprf"] = (
            throughput["VOPRF"]["2p_per_s"] * peer_rows["voprf"]["total_us_per_element"] / 1e6
        )

    report: dict[str, Any] = {
        "benchmark": "bench_oprf",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "inputs": n,
        "batch": BATCH,
        "step_us_per_element": steps,
        "libsodium_us_per_call": calls,
        "floor_calls_per_element": FLOOR_CALLS,
        "throughput": throughput,
        "peers": peer_rows,
        "ratios": ratios,
    }
    print(render_table(report))
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


def render_table(report: dict[str, Any]) -> str:
    lines = [
        f"Blindmatch OPRF benchmark, {report['date']}, {report['inputs']:,} inputs, batches of {report['batch']}",
        "",
    ]
    lines.append("Per-element cost of each VOPRF step (us)")
    for step, us in report["step_us_per_element"].items():
        lines.append(f"  {step:<30} {us:8.1f}")
    lines.append("")
    lines.append("libsodium call cost (us)")
    for call, us in report["libsodium_us_per_call"].items():
        lines.append(f"  {call:<30} {us:8.2f}")
    lines.append("")
    header = f"  {'pipeline':<14}{'1 core/s':>10}{'2 cores/s':>11}{'scaling':>9}{'us/elt':>9}{'floor us':>10}{'overhead':>10}"
    lines.append("Tagging throughput (client + server work, tags per second)")
    lines.append(header)
    for name, row in report["throughput"].items():
        lines.append(
            f"  {name:<14}{row['1p_per_s']:>10,.0f}{row['2p_per_s']:>11,.0f}{row['two_core_scaling']:>8.2f}x"
            f"{row['1p_us_per_element']:>9.1f}{row['floor_us_per_element']:>10.1f}{row['overhead_over_floor']:>9.1%}"
        )
    if report["peers"]:
        lines.append("")
        lines.append("Peers on the same inputs (us per element, single process)")
        for name, row in report["peers"].items():
            detail = ", ".join(
                f"{k}={v:.1f}" for k, v in row.items() if k.endswith("us_per_element")
            )
            lines.append(f"  {name:<14} {detail}")
        for name, ratio in report["ratios"].items():
            lines.append(f"  {name:<40} {ratio:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
