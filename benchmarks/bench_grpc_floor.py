"""What a trivial grpc.aio unary call holds on this machine: the floor under
the hub's single-tag query rate (issue 6 asks for p99 <= 10 ms at >= 2,000
queries/s and quotes about 3,500 calls/s for a trivial call).

    python -m benchmarks.bench_grpc_floor [--rates 1000,2000,2500,3000,3500]
        [--servers 1,2] [--step-seconds 4]

A server process answers one unary method with an empty reply and does
nothing else (no interceptor, no authentication, no database).  It runs
with and without mutual TLS (the hub's credentials, made by `bureau_agent.pki`
here), as one process or as several processes sharing the port
(SO_REUSEPORT, so the kernel spreads connections over them: what a
multi-process hub front end would get at best).  The load generator is the
hub benchmark's own (`bench_hub_load.open_loop`): 16 connections, an
open-loop schedule, latency counted from the scheduled send time, held when
p99 <= 10 ms and at least 99 % completes on time.  CPU cores used by the
servers and by the load generator are reported per step: on a machine of
two cores, the sum is what no faster handler can give back.

Prints a table and one JSON document (also written to
benchmarks/results/bench_grpc_floor.json).  Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from benchmarks.bench_hub_load import held, open_loop, proc_cpu_seconds
from benchmarks.machine import Foreign, wait_for_quiet
from bureau_agent import pki

RESULTS = Path(__file__).parent / "results" / "bench_grpc_floor.json"
METHOD = "/bench.Floor/Call"
CLIENTS = 16


# -- the server ----------------------------------------------------------------------


async def _serve(port: int, tls: Path | None) -> None:
    async def call(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return b""

    handler = grpc.method_handlers_generic_handler(
        "bench.Floor",
        {
            "Call": grpc.unary_unary_rpc_method_handler(
                call, request_deserializer=None, response_serializer=None
            )
        },
    )
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    server.add_generic_rpc_handlers((handler,))
    address = f"127.0.0.1:{port}"
    if tls is None:
        server.add_insecure_port(address)
    else:
        server.add_secure_port(address, pki.TlsFiles.in_folder(tls).server_credentials())
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop(0.5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Servers:
    """`count` server processes sharing one port."""

    def __init__(self, count: int, tls: Path | None) -> None:
        self.port = _free_port()
        argv = [sys.executable, "-m", "benchmarks.bench_grpc_floor", "--serve", str(self.port)]
        if tls is not None:
            argv += ["--tls", str(tls)]
        self.processes = [
            subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(count)
        ]
        for p in self.processes:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a floor server did not start")

    @property
    def cpu_seconds(self) -> float:
        return sum(proc_cpu_seconds(p.pid) for p in self.processes)

    def close(self) -> None:
        for p in self.processes:
            p.send_signal(signal.SIGTERM)
        for p in self.processes:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# -- the load --------------------------------------------------------------------------


def _channels(port: int, tls: Path | None) -> list[grpc.aio.Channel]:
    address = f"127.0.0.1:{port}"
    out = []
    for i in range(CLIENTS):
        options = [("grpc.use_local_subchannel_pool", 1), ("bench.client", i)]
        if tls is None:
            out.append(grpc.aio.insecure_channel(address, options=options))
        else:
            credentials = pki.TlsFiles.in_folder(tls).channel_credentials()
            out.append(grpc.aio.secure_channel(address, credentials, options=options))
    return out


async def sweep(
    port: int, tls: Path | None, servers: Servers, rates: Sequence[float], seconds: float
) -> list[dict[str, Any]]:
    channels = _channels(port, tls)
    for ch in channels:
        await asyncio.wait_for(ch.channel_ready(), 30)
    await open_loop(channels, METHOD, [b""], 200, 1.0, None)  # warm-up
    steps = []
    for rate in rates:
        client0, server0, t0 = time.process_time(), servers.cpu_seconds, time.perf_counter()
        with Foreign() as other:
            step = await open_loop(channels, METHOD, [b""], rate, seconds, None)
        wall = time.perf_counter() - t0
        step["machine"] = other.result
        step["client_cpu_cores"] = round((time.process_time() - client0) / wall, 2)
        step["server_cpu_cores"] = round((servers.cpu_seconds - server0) / wall, 2)
        step["held"] = held(step)
        steps.append(step)
        print(
            f"    {rate:>6,.0f}/s  p50 {step['p50_ms']:6.2f} ms  p99 {step['p99_ms']:7.2f} ms  "
            f"server {step['server_cpu_cores']:.2f} client {step['client_cpu_cores']:.2f} cores"
            f"{'' if step['held'] else '  (not held)'}",
            file=sys.stderr,
            flush=True,
        )
        await asyncio.sleep(0.5)
    for ch in channels:
        await ch.close()
    return steps


def render(report: dict[str, Any]) -> str:
    lines = [
        f"trivial grpc.aio unary call, {CLIENTS} clients, open loop "
        f"({report['date']}, {report['machine']['cpus']} CPUs, grpcio {report['machine']['grpcio']})",
        f"  {'transport':10s} {'servers':>7s} {'q/s':>7s} {'p50 ms':>7s} {'p99 ms':>7s} "
        f"{'server':>7s} {'client':>7s}  held",
    ]
    for row in report["rows"]:
        for s in row["steps"]:
            lines.append(
                f"  {row['transport']:10s} {row['servers']:>7d} {s['offered_per_s']:>7,.0f} "
                f"{s['p50_ms']:>7.2f} {s['p99_ms']:>7.2f} {s['server_cpu_cores']:>7.2f} "
                f"{s['client_cpu_cores']:>7.2f}  {'yes' if s['held'] else 'no'}"
            )
        lines.append(
            f"  -> {row['transport']}, {row['servers']} server process(es): highest load held "
            f"{row['highest_rate_held']:,.0f} calls/s"
        )
    lines.append(
        "  (server, client = CPU cores used by the server processes and the load generator)"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rates", default="1000,2000,2500,3000,3500", help="offered calls/s")
    parser.add_argument("--servers", default="1,2", help="server process counts to try")
    parser.add_argument("--transports", default="insecure,mtls")
    parser.add_argument("--step-seconds", type=float, default=4.0)
    parser.add_argument("--wait-quiet", type=float, default=30.0)
    parser.add_argument("--json-out", type=Path, default=RESULTS)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tls", type=Path, help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.serve is not None:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(ns.serve, ns.tls))
        return 0

    rates = [float(r) for r in ns.rates.split(",")]
    root = Path(tempfile.mkdtemp(prefix="blindmatch-grpc-floor-"))
    rows = []
    try:
        pki.init_federation(root, "bench")
        hub_tls = pki.issue_hub(root)
        client_tls = pki.issue_bureau(root, "FRA")
        for transport in ns.transports.split(","):
            for count in (int(c) for c in ns.servers.split(",")):
                wait_for_quiet(ns.wait_quiet)
                print(f"{transport}, {count} server process(es):", file=sys.stderr, flush=True)
                tls = hub_tls if transport == "mtls" else None
                servers = Servers(count, tls)
                try:
                    steps = asyncio.run(
                        sweep(
                            servers.port,
                            client_tls if transport == "mtls" else None,
                            servers,
                            rates,
                            ns.step_seconds,
                        )
                    )
                finally:
                    servers.close()
                best = max((s["offered_per_s"] for s in steps if s["held"]), default=0)
                rows.append(
                    {"transport": transport, "servers": count, "steps": steps,
                     "highest_rate_held": best}
                )  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = {
        "benchmark": "bench_grpc_floor",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
        },
        "clients": CLIENTS,
        "step_seconds": ns.step_seconds,
        "rows": rows,
    }
    print(render(report))
    ns.json_out.parent.mkdir(parents=True, exist_ok=True)
    ns.json_out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
