"""Disclosure round trip on loopback (issue: consent-gated disclosure).

    python -m benchmarks.bench_disclosure [--rounds 50]

A hub and four agents as real processes.  For each round, through the
agents' local APIs (no CLI start-up): USA requests the record behind a
match (signed, routed by the hub), FRA approves (resolves its record, seals
two fields to USA with ML-KEM-768 + X25519 HPKE, signs), USA fetches,
verifies and opens.  Reports each leg and the whole round trip, p50/p99,
and `audit verify` time at the end.  Prints a table and JSON; writes
benchmarks/results/bench_disclosure.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from blindmatch.v1 import agent_pb2, agent_pb2_grpc
from bureau_agent.demo import write_demo_data
from bureau_agent.localfed import LocalFederation

RESULTS = Path(__file__).parent / "results" / "bench_disclosure.json"


def _stub(fed: LocalFederation, code: str) -> agent_pb2_grpc.AgentStub:
    return agent_pb2_grpc.AgentStub(
        grpc.insecure_channel(f"unix:{fed.state_dir(code) / 'agent.sock'}")
    )


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "mean": statistics.fmean(ordered),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--json-out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="blindmatch-bench-disclosure-"))
    legs: dict[str, list[float]] = {"request": [], "approve": [], "open": [], "round_trip": []}
    fed = LocalFederation(root, ["FRA", "DEU", "BRA", "USA"], ["FRA", "DEU", "BRA"], threshold=2)
    try:
        fed.create()
        data = write_demo_data(root / "data", size=50)
        with fed.running():
            fed.cli(
                "FRA",
                "enroll",
                str(data["FRA"]),
                "--dataset",
                "watchlist",
                "--schema",
                str(data["schema"]),
                "--json",
            )
            usa, fra = _stub(fed, "USA"), _stub(fed, "FRA")
            ids = agent_pb2.Identifiers(passport="12AB34567", passport_issuer="FRA")
            print(f"{args.rounds} disclosure round trips ...", file=sys.stderr, flush=True)
            for _ in range(args.rounds):
                match_id = (
                    usa.Query(agent_pb2.LocalQueryRequest(identifiers=ids)).matches[0].match_id
                )
                t0 = time.perf_counter()
                case = usa.RequestDisclosure(
                    agent_pb2.LocalDisclosureRequest(
                        match_id=match_id, purpose="benchmark", legal_basis="test"
                    )
                )
                t1 = time.perf_counter()
                fra.ApproveDisclosure(
                    agent_pb2.LocalApproveRequest(
                        request_id=case.request_id, fields=["name", "dob"]
                    )
                )
                t2 = time.perf_counter()
                shown = usa.ShowDisclosure(
                    agent_pb2.LocalShowDisclosureRequest(request_id=case.request_id)
                )
                t3 = time.perf_counter()
                assert shown.status == "approved" and shown.record["dob"] == "1980-02-03"
                for leg, seconds in (
                    ("request", t1 - t0),
                    ("approve", t2 - t1),
                    ("open", t3 - t2),
                    ("round_trip", t3 - t0),
                ):
                    legs[leg].append(seconds * 1000)
            t0 = time.perf_counter()
            report = usa.VerifyAudit(agent_pb2.LocalVerifyAuditRequest())
            verify_ms = (time.perf_counter() - t0) * 1000
            assert report.ok, list(report.problems)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result: dict[str, Any] = {
        "benchmark": "bench_disclosure",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "rounds": args.rounds,
        "ms": {leg: _summary(values) for leg, values in legs.items()},
        "audit_verify_ms": verify_ms,
        "audit_tree_size": report.tree_size,
        "audit_own_events_verified": report.own_events_verified,
    }
    lines = [f"Disclosure round trip, {result['date']}, {args.rounds} rounds (ms)"]
    for leg, s in result["ms"].items():
        lines.append(
            f"  {leg:<12} p50 {s['p50']:7.1f}   p99 {s['p99']:7.1f}   mean {s['mean']:7.1f}"
        )
    lines.append(
        f"  audit verify: {verify_ms:.0f} ms for a log of {report.tree_size} entries, "
        f"{report.own_events_verified} own events checked"
    )
    print("\n".join(lines))
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
