"""End-to-end federation benchmark on loopback (issue: the federation).

    python -m benchmarks.bench_federation [--records 5000] [--runs 3] [--queries 300]
                                           [--wait-quiet 60]

A hub and four bureau agents as real processes (FRA, DEU, BRA hold a 2-of-3
key), real mutual TLS and SQLite.  Measures, through the agent's local API
(no CLI start-up):

* enrollment records/s of USA enrolling N records with 3 match keys each
  (passport, exact person, phonetic person), 2-of-3 VOPRF with every batch
  checked (`psi.threshold.batch_check`), custodians on this same 2-core machine; `--runs` enrollments of
  the file (as new datasets), the median is reported, with every run, the
  CPU the federation's processes used per key, and how busy the machine was
  with other work (`benchmarks.machine`; each run first waits up to
  `--wait-quiet` seconds for a quiet machine);
* single-query latency p50/p99 (agent -> 2 custodians -> hub -> answer);
* the floor: the libsodium calls that path needs per key, timed in this run
  (six scalar multiplications for 2-of-3 VOPRF with the per-batch check),
  and the measured per-key cost against it.

Prints a readable table and JSON; writes benchmarks/results/bench_federation.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from benchmarks.bench_oprf import FLOOR_CALLS, floor_us, libsodium_call_costs
from benchmarks.machine import Foreign, tree_cpu_seconds, wait_for_quiet
from blindmatch.v1 import agent_pb2, agent_pb2_grpc, common_pb2
from bureau_agent.demo import FIRST, LAST, SCHEMA
from bureau_agent.localfed import LocalFederation

RESULTS = Path(__file__).parent / "results" / "bench_federation.json"


def write_records(path: Path, n: int) -> None:
    """n distinct records, each yielding exactly 3 keys (passport, person, phonetic)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["case_id", "name", "dob", "passport", "passport_issuer", "phone", "email"])
        for i in range(n):
            first, last = FIRST[i % len(FIRST)], LAST[(i // len(FIRST)) % len(LAST)]
            dob = f"{1940 + i % 60}-{1 + i % 12:02d}-{1 + (i // 7) % 28:02d}"
            writer.writerow([f"R{i:07d}", f"{first} {last}", dob, f"X{i:08d}", "USA", "", ""])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3, help="enrollments of the file (median)")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument(
        "--wait-quiet", type=float, default=60.0, help="seconds to wait for a quiet machine"
    )
    parser.add_argument("--json-out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    root = Path(tempfile.mkdtemp(prefix="blindmatch-bench-"))
    fed = LocalFederation(root, ["FRA", "DEU", "BRA", "USA"], ["FRA", "DEU", "BRA"], threshold=2)
    try:
        fed.create()
        data = root / "records.csv"
        write_records(data, args.records)
        schema = root / "schema.toml"
        schema.write_text(SCHEMA)
        with fed.running():
            channel = grpc.insecure_channel(f"unix:{fed.state_dir('USA') / 'agent.sock'}")
            agent = agent_pb2_grpc.AgentStub(channel)
            # Warm up: connections, worker processes, custodians' pools.
            agent.Query(
                agent_pb2.LocalQueryRequest(
                    identifiers=agent_pb2.Identifiers(passport="X1", passport_issuer="USA")
                )
            )

            runs: list[dict[str, Any]] = []
            for run in range(1, args.runs + 1):
                quiet = wait_for_quiet(args.wait_quiet)
                log(f"enrolling {args.records:,} records (run {run} of {args.runs}) ...")
                cpu_before = tree_cpu_seconds()
                with Foreign() as machine:
                    start = time.perf_counter()
                    summary = None
                    for event in agent.Enroll(
                        agent_pb2.LocalEnrollRequest(
                            path=str(data),
                            schema_path=str(schema),
                            dataset=f"bench-{run}",
                            policy=common_pb2.DatasetPolicy(),
                        )
                    ):
                        if event.WhichOneof("event") == "summary":
                            summary = event.summary
                    seconds = time.perf_counter() - start
                cpu = tree_cpu_seconds() - cpu_before
                assert summary is not None and summary.accepted == args.records
                keys = summary.keys
                runs.append(
                    {
                        "seconds": seconds,
                        "records_per_second": args.records / seconds,
                        "cpu_us_per_key": cpu / keys * 1e6,
                        "waited_for_quiet": quiet,
                        "machine": machine.result,
                    }
                )
                log(
                    f"  {args.records / seconds:,.0f} records/s; other processes used "
                    f"{machine.result.get('other_cpu_cores', 0):.2f} cores"
                )
            enroll_seconds = statistics.median(r["seconds"] for r in runs)
            cpu_per_key = statistics.median(r["cpu_us_per_key"] for r in runs)

            # Queries from FRA for USA's records (hits) and unknown ones (no hits).
            fra = agent_pb2_grpc.AgentStub(
                grpc.insecure_channel(f"unix:{fed.state_dir('FRA') / 'agent.sock'}")
            )
            quiet = wait_for_quiet(args.wait_quiet)
            for _ in range(10):  # warm up after the wait: connections, caches
                fra.Query(
                    agent_pb2.LocalQueryRequest(
                        identifiers=agent_pb2.Identifiers(passport="X1", passport_issuer="USA")
                    )
                )
            log(f"{args.queries} single queries ...")
            latencies: list[float] = []
            hits = 0
            with Foreign() as query_machine:
                for i in range(args.queries):
                    ids = agent_pb2.Identifiers(
                        passport=f"X{(i * 7919) % (2 * args.records):08d}", passport_issuer="USA"
                    )
                    t0 = time.perf_counter()
                    reply = fra.Query(agent_pb2.LocalQueryRequest(identifiers=ids))
                    latencies.append((time.perf_counter() - t0) * 1000)
                    hits += bool(reply.matches)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    wait_for_quiet(min(args.wait_quiet, 30.0))
    log("libsodium floor ...")
    calls = libsodium_call_costs()
    floor_per_key = floor_us("2-of-3 VOPRF", calls)
    cores = os.cpu_count() or 1
    measured_per_key = enroll_seconds / keys * 1e6
    report: dict[str, Any] = {
        "benchmark": "bench_federation",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpus": cores, "python": platform.python_version()},
        "records": args.records,
        "keys": keys,
        "enroll_seconds": enroll_seconds,
        "records_per_second": args.records / enroll_seconds,
        "keys_per_second": keys / enroll_seconds,
        "enroll_runs": runs,
        "query_ms": {
            "count": len(latencies),
            "hits": hits,
            "p50": statistics.median(latencies),
            "p99": percentile(latencies, 0.99),
            "mean": statistics.fmean(latencies),
            "waited_for_quiet": quiet,
            "machine": query_machine.result,
        },
        "floor": {
            "calls_per_key": FLOOR_CALLS["2-of-3 VOPRF"],
            "libsodium_us_per_call": calls,
            "cpu_us_per_key": floor_per_key,
            "wall_us_per_key_on_all_cores": floor_per_key / cores,
            "measured_wall_us_per_key": measured_per_key,
            "measured_over_floor": measured_per_key / (floor_per_key / cores),
            "measured_cpu_us_per_key": cpu_per_key,
            "measured_cpu_over_floor": cpu_per_key / floor_per_key,
        },
    }
    print(render(report))
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


def render(r: dict[str, Any]) -> str:
    q, f = r["query_ms"], r["floor"]
    runs = ", ".join(
        f"{x['records_per_second']:,.0f}"
        f" ({x['machine'].get('other_cpu_cores', 0):.2f} cores used by others)"
        for x in r["enroll_runs"]
    )
    return "\n".join(
        [
            f"Blindmatch federation benchmark, {r['date']}, {r['machine']['cpus']} cores",
            f"  enrollment: {r['records']:,} records, {r['keys']:,} keys in {r['enroll_seconds']:.2f} s"
            f" = {r['records_per_second']:,.0f} records/s ({r['keys_per_second']:,.0f} keys/s),"
            f" median of {len(r['enroll_runs'])} runs: {runs} records/s",
            f"  single query (agent -> 2 custodians -> hub): p50 {q['p50']:.1f} ms, p99 {q['p99']:.1f} ms"
            f" over {q['count']} queries ({q['hits']} hits)",
            f"  floor per key: {f['cpu_us_per_key']:.0f} us of libsodium CPU"
            f" ({f['wall_us_per_key_on_all_cores']:.0f} us wall on all cores);"
            f" measured {f['measured_wall_us_per_key']:.0f} us = {f['measured_over_floor']:.2f}x the floor"
            f" ({f['measured_cpu_us_per_key']:.0f} us CPU = {f['measured_cpu_over_floor']:.2f}x)",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
