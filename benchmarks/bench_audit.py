"""Audit log and disclosure crypto benchmark: MerkleLog append throughput,
proof latency at a million leaves against a naive recomputation, proof
sizes, verification, and HPKE seal/open with the hybrid and fallback suites.

    python -m benchmarks.bench_audit [--n 1000000] [--quick] [--json-out PATH]

Prints a readable table followed by one JSON document (also written to
benchmarks/results/bench_audit.json).  Targets from the issue are reported
alongside (append >= 20,000 leaves/s; inclusion and consistency proofs at a
million leaves <= 2 ms); nothing here is asserted.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from psi import audit, disclosure, merkle
from psi.disclosure import Suite
from psi.merkle import MerkleLog

RESULTS = Path(__file__).parent / "results" / "bench_audit.json"
CHUNK = 100_000
TARGET_APPEND_PER_S = 20_000
TARGET_PROOF_MS = 2.0


# -- inputs ------------------------------------------------------------------

# Canonical v1 audit entries (psi.audit) of the three most frequent kinds,
# ~100 bytes on average; the templates are checked against the real encoder.
_TEMPLATES = (
    (b'{"hits":%d,"kind":"query","requester":"FRA","tags":%d,"time_ms":%d,"v":1}', "query"),
    (b'{"bureau":"DEU","kind":"standing_match","match_id":"%032x","other":"ITA","time_ms":%d,"v":1}', "standing_match"),
    (b'{"bureau":"ITA","kind":"quota_refusal","operation":"query","time_ms":%d,"v":1}', "quota_refusal"),
)  # fmt: skip
_T0 = 1_700_000_000_000


def entry(i: int) -> bytes:
    """The i-th benchmark entry (deterministic, canonical)."""
    kind = i % 5
    if kind < 3:
        return _TEMPLATES[0][0] % (i % 7, 1 + i % 1000, _T0 + i)
    if kind == 3:
        return _TEMPLATES[1][0] % (i * 2654435761 % (1 << 128), _T0 + i)
    return _TEMPLATES[2][0] % (_T0 + i,)


def check_entries() -> float:
    """Confirm the templates are canonical entries; return the mean size."""
    sizes = []
    for i in range(10):
        e = entry(i)
        assert audit.decode_entry(e).encode() == e
        sizes.append(len(e))
    return statistics.fmean(len(entry(i)) for i in range(1000))


# -- timing helpers ----------------------------------------------------------


def sample_ms(fn: Callable[[], object], count: int) -> list[float]:
    out = []
    for _ in range(count):
        t = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t) / 1e6)
    return out


def summary(samples_ms: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "median_ms": statistics.median(ordered),
        "p99_ms": p99,
        "max_ms": ordered[-1],
        "samples": len(ordered),
    }


# -- the naive recomputation (RFC 9162 §2.1 recursions over a list) -------------


def naive_mth(d: Sequence[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return merkle.EMPTY_ROOT
    if n == 1:
        return d[0]
    k = 1 << ((n - 1).bit_length() - 1)
    return merkle.node_hash(naive_mth(d[:k]), naive_mth(d[k:]))


def naive_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*naive_path(m, d[:k]), naive_mth(d[k:])]
    return [*naive_path(m - k, d[k:]), naive_mth(d[:k])]


def naive_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [naive_mth(d)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*naive_subproof(m, d[:k], b), naive_mth(d[k:])]
    return [*naive_subproof(m - k, d[k:], False), naive_mth(d[:k])]


# -- the measurements ----------------------------------------------------------


def bench_append(n: int, log_msg: Callable[[str], None]) -> tuple[MerkleLog, dict[str, float]]:
    log = MerkleLog()
    timed = 0.0
    total_bytes = 0
    for start in range(0, n, CHUNK):
        chunk = [entry(i) for i in range(start, min(n, start + CHUNK))]
        total_bytes += sum(map(len, chunk))
        append = log.append
        t = time.perf_counter()
        for e in chunk:
            append(e)
        timed += time.perf_counter() - t
        log_msg(f"  appended {log.size:,} leaves")
    stored = sum(len(log.level_bytes(level)) for level in range(log.height))
    return log, {
        "leaves": n,
        "seconds": timed,
        "leaves_per_s": n / timed,
        "mean_entry_bytes": total_bytes / n,
        "stored_node_bytes": stored,
        "target_leaves_per_s": TARGET_APPEND_PER_S,
    }


def bench_proofs(log: MerkleLog, count: int) -> dict[str, Any]:
    n = log.size
    head = log.root()
    indices = [secrets.randbelow(n) for _ in range(count)]
    olds = [1 + secrets.randbelow(n - 1) for _ in range(count)]
    it_i, it_c = iter(indices), iter(olds)
    incl = sample_ms(lambda: log.inclusion_proof(next(it_i)), count)
    cons = sample_ms(lambda: log.consistency_proof(next(it_c)), count)
    roots = sample_ms(lambda: log.root(1 + secrets.randbelow(n)), count)

    incl_proofs = [(i, log.inclusion_proof(i)) for i in indices]
    cons_proofs = [(m, log.root(m), log.consistency_proof(m)) for m in olds]
    it_vi, it_vc = iter(incl_proofs), iter(cons_proofs)

    def verify_one_inclusion() -> None:
        i, proof = next(it_vi)
        merkle.verify_inclusion(log.leaf_hash(i), i, n, proof, head)

    def verify_one_consistency() -> None:
        m, old_root, proof = next(it_vc)
        merkle.verify_consistency(m, n, old_root, head, proof)

    v_incl = sample_ms(verify_one_inclusion, count)
    v_cons = sample_ms(verify_one_consistency, count)
    incl_sizes = [32 * len(p) for _, p in incl_proofs]
    cons_sizes = [32 * len(p) for _, _, p in cons_proofs]
    return {
        "tree_size": n,
        "inclusion_proof": summary(incl),
        "consistency_proof": summary(cons),
        "root_of_earlier_size": summary(roots),
        "verify_inclusion": summary(v_incl),
        "verify_consistency": summary(v_cons),
        "inclusion_proof_bytes": {"mean": statistics.fmean(incl_sizes), "max": max(incl_sizes)},
        "consistency_proof_bytes": {"mean": statistics.fmean(cons_sizes), "max": max(cons_sizes)},
        "target_ms": TARGET_PROOF_MS,
    }


def bench_rebuild(log: MerkleLog) -> dict[str, float]:
    levels = [log.level_bytes(level) for level in range(log.height)]
    out = {}
    for verify in (False, True):
        t = time.perf_counter()
        rebuilt = MerkleLog.from_levels(levels, verify=verify)
        out[f"from_levels_verify_{str(verify).lower()}_s"] = time.perf_counter() - t
        assert rebuilt.root() == log.root()
    return out


def bench_naive(n: int, count: int) -> dict[str, Any]:
    d = [merkle.leaf_hash(entry(i)) for i in range(n)]
    log = MerkleLog.from_leaf_hashes(d)
    indices = [secrets.randbelow(n) for _ in range(count)]
    olds = [1 + secrets.randbelow(n - 1) for _ in range(count)]
    for i, m in zip(indices[:20], olds[:20], strict=True):  # same answers
        assert log.inclusion_proof(i) == naive_path(i, d)
        assert log.consistency_proof(m) == naive_subproof(m, d, True)
    rows: dict[str, Any] = {"tree_size": n}
    for name, fast, slow in (
        ("inclusion_proof", lambda i: log.inclusion_proof(i), lambda i: naive_path(i, d)),
        ("consistency_proof", lambda m: log.consistency_proof(m),
         lambda m: naive_subproof(m, d, True)),
        ("root", lambda m: log.root(m), lambda m: naive_mth(d[:m])),
    ):  # fmt: skip
        args = indices if name == "inclusion_proof" else olds
        it_f, it_s = iter(args), iter(args)
        f = summary(sample_ms(lambda: fast(next(it_f)), count))  # noqa: B023
        s = summary(sample_ms(lambda: slow(next(it_s)), count))  # noqa: B023
        rows[name] = {
            "merkle_log_median_ms": f["median_ms"],
            "naive_median_ms": s["median_ms"],
            "speedup": s["median_ms"] / f["median_ms"],
        }
    return rows


def bench_hpke(count: int) -> dict[str, Any]:
    key = disclosure.generate_hpke_key()
    public = key.public_key()
    rid = secrets.token_bytes(16)
    # ~1 KB of realistic text fields.
    record = {
        "surname": "Dupont-Moreau",
        "given_names": "Jean Baptiste Marie",
        "date_of_birth": "1979-04-23",
        "passport": "FRA 12AB34567",
        "address": "17 rue des Lilas, 69003 Lyon, France",
        "case_reference": "PJ-LYON-2024-000117",
        "notes": ("Subject of a European arrest warrant; last seen at the Lyon Part-Dieu "
                  "station; travels with a second passport. ") * 7,
    }  # fmt: skip
    plaintext_bytes = len(disclosure._encode_record(record))
    out: dict[str, Any] = {"record_plaintext_bytes": plaintext_bytes}
    for suite in Suite:
        seal = functools.partial(
            disclosure.seal_record, record, public, request_id=rid, requester="FRA",
            owner="DEU", suite=suite,
        )  # fmt: skip
        sealed = seal()
        open_ = functools.partial(
            disclosure.open_record, sealed, key, request_id=rid, requester="FRA",
            owner="DEU", suite=suite,
        )  # fmt: skip
        assert open_() == record
        seal_ms = sample_ms(seal, count)
        open_ms = sample_ms(open_, count)
        out[suite.name] = {
            "seal": summary(seal_ms),
            "open": summary(open_ms),
            "seal_plus_open_median_ms": statistics.median(seal_ms) + statistics.median(open_ms),
            "sealed_bytes": len(sealed),
            "overhead_bytes": len(sealed) - plaintext_bytes,
        }
    return out


def bench_signatures(count: int) -> dict[str, Any]:
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    head = merkle.TreeHead(size=1_000_000, root=hashlib.sha256(b"r").digest(), timestamp_ms=_T0)
    signature = merkle.sign_tree_head(key, head)
    return {
        "sign_tree_head": summary(sample_ms(lambda: merkle.sign_tree_head(key, head), count)),
        "verify_tree_head": summary(
            sample_ms(lambda: merkle.verify_tree_head(public, head, signature), count)
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    assert __doc__
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="leaves (default 1,000,000)")
    parser.add_argument("--naive-n", type=int, default=1 << 14, help="leaves for the naive side")
    parser.add_argument("--proofs", type=int, default=1000, help="random proofs per measurement")
    parser.add_argument("--quick", action="store_true", help="100,000 leaves, for a smoke run")
    parser.add_argument("--json-out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    n = 100_000 if args.quick else args.n

    def log_msg(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    mean_entry = check_entries()
    log_msg(f"appending {n:,} entries (~{mean_entry:.0f} bytes each) ...")
    log, append = bench_append(n, log_msg)
    log_msg(f"{args.proofs} random proofs at {n:,} leaves ...")
    proofs = bench_proofs(log, args.proofs)
    log_msg("rebuilding from persisted levels ...")
    rebuild = bench_rebuild(log)
    del log
    log_msg(f"naive recomputation at {args.naive_n:,} leaves ...")
    naive = bench_naive(args.naive_n, 50)
    log_msg("HPKE seal/open ...")
    hpke_rows = bench_hpke(200)
    signatures = bench_signatures(500)

    report: dict[str, Any] = {
        "benchmark": "bench_audit",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "append": append,
        "proofs": proofs,
        "rebuild": rebuild,
        "naive_comparison": naive,
        "tree_head_signatures": signatures,
        "hpke_1kb_record": hpke_rows,
    }
    print(render_table(report))
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


def _ok(value: float, target: float, *, at_least: bool) -> str:
    return "ok" if (value >= target if at_least else value <= target) else "MISSED"


def render_table(report: dict[str, Any]) -> str:
    a, p = report["append"], report["proofs"]
    lines = [
        f"Blindmatch audit log benchmark, {report['date']}, {report['machine']['cpus']} CPUs, "
        f"Python {report['machine']['python']}",
        "",
        f"MerkleLog append ({a['leaves']:,} leaves, ~{a['mean_entry_bytes']:.0f}-byte entries, leaf hashing included)",
        f"  {a['leaves_per_s']:>12,.0f} leaves/s   (target >= {a['target_leaves_per_s']:,}: "
        f"{_ok(a['leaves_per_s'], a['target_leaves_per_s'], at_least=True)})",
        f"  {a['stored_node_bytes'] / 1e6:>12.1f} MB of stored subtree hashes",
        "",
        f"At {p['tree_size']:,} leaves ({p['inclusion_proof']['samples']} random requests each)",
        f"  {'operation':<28}{'median ms':>11}{'p99 ms':>10}{'max ms':>10}",
    ]
    for name in ("inclusion_proof", "consistency_proof", "root_of_earlier_size",
                 "verify_inclusion", "verify_consistency"):  # fmt: skip
        row = p[name]
        flag = ""
        if name in ("inclusion_proof", "consistency_proof"):
            flag = f"   (target <= {p['target_ms']} ms: {_ok(row['p99_ms'], p['target_ms'], at_least=False)})"
        lines.append(
            f"  {name:<28}{row['median_ms']:>11.4f}{row['p99_ms']:>10.4f}{row['max_ms']:>10.4f}{flag}"
        )
    ib, cb = p["inclusion_proof_bytes"], p["consistency_proof_bytes"]
    lines += [
        f"  proof sizes: inclusion mean {ib['mean']:.0f} B (max {ib['max']}), "
        f"consistency mean {cb['mean']:.0f} B (max {cb['max']})",
        "  rebuild from persisted levels: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in report["rebuild"].items()),
        "",
        f"Incremental vs naive recomputation at {report['naive_comparison']['tree_size']:,} leaves (median ms)",
        f"  {'operation':<20}{'MerkleLog':>12}{'naive':>12}{'speedup':>10}",
    ]
    for name, row in report["naive_comparison"].items():
        if name == "tree_size":
            continue
        lines.append(
            f"  {name:<20}{row['merkle_log_median_ms']:>12.4f}{row['naive_median_ms']:>12.2f}{row['speedup']:>9,.0f}x"
        )
    s = report["tree_head_signatures"]
    lines += [
        "",
        f"Tree head: sign {s['sign_tree_head']['median_ms']:.3f} ms, verify {s['verify_tree_head']['median_ms']:.3f} ms (median)",
        "",
        f"HPKE single-shot, {report['hpke_1kb_record']['record_plaintext_bytes']}-byte record (median ms)",
        f"  {'suite':<18}{'seal':>8}{'open':>8}{'both':>8}{'sealed B':>10}{'overhead B':>12}",
    ]
    for suite in Suite:
        row = report["hpke_1kb_record"][suite.name]
        lines.append(
            f"  {suite.name:<18}{row['seal']['median_ms']:>8.3f}{row['open']['median_ms']:>8.3f}"
            f"{row['seal_plus_open_median_ms']:>8.3f}{row['sealed_bytes']:>10}{row['overhead_bytes']:>12}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
