"""The hub under load (issue 6, "Scale"): ingest, single-tag query latency at
a fixed offered load, bulk match against a numpy floor, disk and memory.

    python -m benchmarks.bench_hub_load [--tags 2000000] [--datasets 194]
        [--bulk 1000000] [--rates 250,500,1000,1500,2000,3000] [--profile]

The hub runs as its own process (`python -m hub --config ...`, mutual TLS on
loopback, its production defaults) and is driven through its real RPCs with
precomputed random 16-byte tags and handles, so that only the hub is
measured: no OPRF, no agent.  The requests are encoded once and sent
pre-serialized, so the load generator spends almost nothing per key: by
default as `TaggedKeyColumns` / `QueryTagColumns` (the agent's form), with
`--form keys` as one message per key, encoded with numpy straight into
protobuf wire format (checked against the generated classes).

* Ingest: `--tags` keys spread evenly over `--datasets` datasets, each one
  client-streaming `Hub.Enroll` (header, `TagBatch`es of 10,000 keys = the
  hub's max_tags_per_request, trailer with the SHA-256 digest), with
  `--ingest-streams` enrollments in flight at once.  The datasets are owned
  by `--owners` bureaus (each with a real certificate; the hub cannot tell
  one bureau owning 24 datasets from 24 bureaus owning one each, as every
  dataset is its own stream and its own rows).  Default policy: not linkable
  (no standing-match probe).
* Query latency: `--clients` mutual-TLS connections from a bureau that owns
  no dataset, an open-loop schedule at each rate of `--rates` for
  `--step-seconds` (latency counted from the scheduled send time, so a slow
  hub cannot slow the schedule down), for three calls: the standard health
  `Check` (the trivial grpc.aio reference), `Hub.GetStatus` (authentication
  and one reader-thread SQL statement) and `Hub.Query` with one tag (plus
  the writer transaction that records the audit leaf, one fsync).  A load
  is held when p99 <= 10 ms, every call succeeded and at least 99 % of the
  schedule completed within the step.
* Bulk match: `--bulk` tags (a fraction `--hit-rate` of them enrolled, the
  rest fresh) through one `Hub.BulkMatch` stream in batches of 10,000,
  pipelined, `--bulk-runs` times (the median is reported); every planted
  hit must come back.  The floor: the same keys
  searched with numpy in this process (big-endian 64-bit prefixes of the
  enrolled tags sorted once; timed: `np.searchsorted` of the queries'
  prefixes, then a comparison of the full 16 bytes; best of 3).
* Disk bytes per tag (database + WAL while running; database after the
  hub's clean shutdown), hub resident memory (VmRSS and VmHWM of the hub
  process from /proc) after each phase.
* The cost of one audit-leaf commit: a one-row transaction in WAL mode with
  synchronous=FULL on the same file system, timed here.

Stores: SQLite always; PostgreSQL when `hub.store_pg` exists, the hub's
configuration can select it and a PostgreSQL server can be started here,
otherwise reported as "not measured" with the reason.

`--profile` samples the hub with py-spy (`pip install py-spy`) during each
phase and writes collapsed stacks to benchmarks/results/profiles/.

Prints a readable table and one JSON document (also written to
benchmarks/results/bench_hub_load.json).  Targets from the issue are shown
beside the figures; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from benchmarks.machine import Foreign, wait_for_quiet
from blindmatch.v1 import common_pb2, hub_pb2
from bureau_agent import pki

RESULTS = Path(__file__).parent / "results" / "bench_hub_load.json"
PROFILES = Path(__file__).parent / "results" / "profiles"

OWNER_CODES = ("FRA", "DEU", "ITA", "ESP", "NLD", "POL", "SWE", "AUT", "BEL", "PRT", "GRC", "CZE")
QUERIER = "USA"
EPOCH = 1
BATCH = 10_000  # the hub's default max_tags_per_request
KEY_TYPES = np.array([1, 3, 4], dtype=np.uint8)  # passport, person, person_phonetic

TARGETS = {
    "ingest_tags_per_s": 150_000,
    "query_p99_ms": 10.0,
    "query_rate_at_p99": 2000,
    "bulk_seconds": 2.0,
    "bulk_over_floor": 1.5,
    "bytes_per_tag": 60,
    "rss_bytes": 1.5e9,
}

QUERY = "Hub.Query (1 tag)"
METHODS = {
    "health Check": "/grpc.health.v1.Health/Check",
    "Hub.GetStatus": "/blindmatch.v1.Hub/GetStatus",
    QUERY: "/blindmatch.v1.Hub/Query",
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the keys -------------------------------------------------------------------


@dataclass
class Keys:
    """`n` random enrolled keys and the datasets they belong to."""

    tags: np.ndarray  # (n, 16) uint8
    handles: np.ndarray  # (n, 16) uint8
    key_types: np.ndarray  # (n,) uint8, wire codes
    bounds: list[int]  # dataset j holds rows bounds[j] .. bounds[j + 1]

    @classmethod
    def random(cls, n: int, datasets: int, seed: int) -> Keys:
        rng = np.random.default_rng(seed)
        tags = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
        handles = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
        key_types = KEY_TYPES[tags[:, 15] % len(KEY_TYPES)]
        bounds = [round(j * n / datasets) for j in range(datasets + 1)]
        return cls(tags, handles, key_types, bounds)

    @property
    def n(self) -> int:
        return len(self.tags)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_tag_batch(
    tags: np.ndarray, handles: np.ndarray, key_types: np.ndarray, form: str = "columns"
) -> bytes:
    """EnrollRequest{batch: TagBatch{columns}} (what the agent sends), or with
    form "keys" TagBatch{keys} in protobuf wire format, 40 bytes a key."""
    if form == "columns":
        columns = common_pb2.TaggedKeyColumns(
            tags=tags.tobytes(), handles=handles.tobytes(), key_types=key_types.tolist()
        )
        return hub_pb2.EnrollRequest(batch=hub_pb2.TagBatch(columns=columns)).SerializeToString()
    n = len(tags)
    rows = np.empty((n, 40), dtype=np.uint8)
    rows[:, 0:2] = (0x0A, 38)  # TagBatch.keys (1), a 38-byte TaggedKey
    rows[:, 2:4] = (0x0A, 16)  # TaggedKey.tag (1)
    rows[:, 4:20] = tags
    rows[:, 20:22] = (0x12, 16)  # TaggedKey.handle (2)
    rows[:, 22:38] = handles
    rows[:, 38] = 0x18  # TaggedKey.key_type (3), varint
    rows[:, 39] = key_types
    body = rows.tobytes()
    return b"\x12" + _varint(len(body)) + body  # EnrollRequest.batch (2)


def encode_bulk_batch(
    batch_id: int, tags: np.ndarray, key_types: np.ndarray, form: str = "columns"
) -> bytes:
    """BulkMatchRequest{batch_id, epoch, columns, answer_in_columns} (what the
    agent sends), or with form "keys" {batch_id, epoch, tags} in protobuf wire
    format, 22 bytes a tag (answered in `matches`)."""
    if form == "columns":
        columns = common_pb2.QueryTagColumns(tags=tags.tobytes(), key_types=key_types.tolist())
        return hub_pb2.BulkMatchRequest(
            batch_id=batch_id, epoch=EPOCH, columns=columns, answer_in_columns=True
        ).SerializeToString()
    n = len(tags)
    rows = np.empty((n, 22), dtype=np.uint8)
    rows[:, 0:2] = (0x1A, 20)  # BulkMatchRequest.tags (3), a 20-byte QueryTag
    rows[:, 2:4] = (0x0A, 16)  # QueryTag.tag (1)
    rows[:, 4:20] = tags
    rows[:, 20] = 0x10  # QueryTag.key_type (2)
    rows[:, 21] = key_types
    return b"\x08" + _varint(batch_id) + b"\x10" + _varint(EPOCH) + rows.tobytes()


def digest_of(tags: np.ndarray, handles: np.ndarray, key_types: np.ndarray) -> bytes:
    """SHA-256 over tag || handle || key type byte of every key (the trailer's digest)."""
    rows = np.empty((len(tags), 33), dtype=np.uint8)
    rows[:, :16] = tags
    rows[:, 16:32] = handles
    rows[:, 32] = key_types
    return hashlib.sha256(rows.tobytes()).digest()


def _kt(code: object) -> common_pb2.KeyType.ValueType:
    return common_pb2.KeyType.ValueType(int(code))  # type: ignore[call-overload]


def check_encoders() -> None:
    """The numpy encodings are byte-identical to the generated classes'."""
    keys = Keys.random(5, 1, seed=7)
    expected = hub_pb2.EnrollRequest(
        batch=hub_pb2.TagBatch(
            keys=[
                common_pb2.TaggedKey(tag=t.tobytes(), handle=h.tobytes(), key_type=_kt(k))
                for t, h, k in zip(keys.tags, keys.handles, keys.key_types, strict=True)
            ]
        )
    ).SerializeToString()
    assert encode_tag_batch(keys.tags, keys.handles, keys.key_types, "keys") == expected
    expected = hub_pb2.BulkMatchRequest(
        batch_id=300,
        epoch=EPOCH,
        tags=[
            common_pb2.QueryTag(tag=t.tobytes(), key_type=_kt(k))
            for t, k in zip(keys.tags, keys.key_types, strict=True)
        ],
    ).SerializeToString()
    assert encode_bulk_batch(300, keys.tags, keys.key_types, "keys") == expected
    manual = hashlib.sha256()
    for t, h, k in zip(keys.tags, keys.handles, keys.key_types, strict=True):
        manual.update(t.tobytes() + h.tobytes() + bytes([int(k)]))
    assert digest_of(keys.tags, keys.handles, keys.key_types) == manual.digest()


def query_mix(
    keys: Keys, count: int, hit_rate: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` query tags: a fraction `hit_rate` drawn from the enrolled keys
    (with their key type), the rest fresh random tags; and which are hits."""
    rng = np.random.default_rng(seed)
    hit = rng.random(count) < hit_rate
    tags = rng.integers(0, 256, size=(count, 16), dtype=np.uint8)
    key_types = KEY_TYPES[rng.integers(0, len(KEY_TYPES), size=count)]
    picks = rng.integers(0, keys.n, size=int(hit.sum()))
    tags[hit] = keys.tags[picks]
    key_types[hit] = keys.key_types[picks]
    return tags, key_types, hit


# -- the hub process ------------------------------------------------------------


def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class HubProcess:
    """`python -m hub --config FILE` with its log, address and pid."""

    root: Path
    federation: Path
    store: dict[str, str]  # the configuration keys that choose the store
    listeners: int | None = None  # hub.toml listeners (None: the hub's default)
    process: subprocess.Popen[bytes] | None = None
    address: str = ""

    @property
    def config_path(self) -> Path:
        return self.root / "hub.toml"

    @property
    def database(self) -> Path:
        return Path(self.store.get("database", self.root / "hub.sqlite"))

    @property
    def log_path(self) -> Path:
        return self.root / "hub.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 60.0) -> str:
        hub_dir = self.federation / "hub"
        address_file = self.root / "address"
        address_file.unlink(missing_ok=True)
        lines = [
            'listen = "127.0.0.1:0"',
            *([f"listeners = {self.listeners}"] if self.listeners is not None else []),
            *(f"{k} = {json.dumps(v)}" for k, v in self.store.items()),
            f'address_file = "{address_file}"',
            f'federation = "{self.federation}"',
            f'tls_cert = "{hub_dir / "tls.crt"}"',
            f'tls_key = "{hub_dir / "tls.key"}"',
            f'ca_cert = "{hub_dir / "ca.crt"}"',
            # The hub alone is measured: no per-bureau rate limit.
            "[quota]",
            "enabled = false",
        ]
        self.config_path.write_text("\n".join(lines) + "\n")
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hub", "--config", str(self.config_path)],
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if address_file.exists() and address_file.read_text().strip():
                self.address = address_file.read_text().strip()
                return self.address
            if self.process.poll() is not None:
                raise RuntimeError(f"the hub exited with {self.process.returncode}: {self.tail()}")
            time.sleep(0.05)
        raise TimeoutError(f"the hub did not start within {timeout} s: {self.tail()}")

    def tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def sqlite_disk_bytes(database: Path) -> dict[str, int]:
    out = {}
    for suffix in ("", "-wal", "-shm"):
        path = Path(str(database) + suffix)
        out["db" + suffix.replace("-", "_")] = path.stat().st_size if path.exists() else 0
    return out


def py_spy() -> str | None:
    """py-spy beside this interpreter (a virtualenv's bin) or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """py-spy sampling the hub during a phase (only with --profile)."""

    def __init__(self, folder: Path | None, pid: int, label: str) -> None:
        self.executable = py_spy()
        self.enabled = folder is not None and self.executable is not None
        self.pid = pid
        self.path = (folder or PROFILES) / f"hub_load_{label}.txt"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profiler:
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.process = subprocess.Popen(
                [str(self.executable), "record", "--pid", str(self.pid), "--rate", "200", "--threads",
                 "--nonblocking", "--format", "raw", "--output", str(self.path)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def summary(self, top: int = 12) -> dict[str, Any]:
        """Shares of samples: per thread, by innermost frame, and by the hub's own
        frames anywhere on the stack (inclusive)."""
        if not self.enabled or not self.path.exists():
            return {}
        return summarize_stacks(self.path.read_text().splitlines(), top)


def summarize_stacks(lines: Sequence[str], top: int) -> dict[str, Any]:
    threads: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        thread = frames[0]
        threads[thread.split(" ")[-1].strip('"') if "(" in thread else thread] += count
        self_time[frames[-1]] += count
        for frame in set(frames[1:]):
            if "(hub/" in frame or "(psi/" in frame or "(bureau_agent/" in frame:
                inclusive[frame] += count
    if not total:
        return {}

    def share(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(c / total, 4)) for name, c in counter.most_common(top)]

    return {
        "samples": total,
        "threads": share(threads),
        "self": share(self_time),
        "inclusive": share(inclusive),
    }


# -- the federation's credentials -----------------------------------------------


def make_credentials(root: Path, owners: Sequence[str]) -> Path:
    federation = root / "federation"
    pki.init_federation(federation, "bench")
    pki.issue_hub(federation)
    for code in [*owners, QUERIER]:
        pki.issue_bureau(federation, code)
    return federation


def channel_for(federation: Path, code: str, address: str, index: int = 0) -> grpc.aio.Channel:
    """A mutual-TLS channel of its own (no shared subchannel) for bureau `code`."""
    return grpc.aio.secure_channel(
        address,
        pki.TlsFiles.in_folder(federation / "bureaus" / code).channel_credentials(),
        options=[
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 64 << 20),
            ("bench.client", index),
        ],
    )


# -- ingest ---------------------------------------------------------------------


async def enroll_dataset(
    channel: grpc.aio.Channel, keys: Keys, j: int, batch: int, form: str
) -> int:
    lo, hi = keys.bounds[j], keys.bounds[j + 1]
    enroll: grpc.aio.StreamUnaryMultiCallable[bytes, hub_pb2.EnrollResponse] = channel.stream_unary(
        "/blindmatch.v1.Hub/Enroll",
        request_serializer=None,
        response_deserializer=hub_pb2.EnrollResponse.FromString,
    )
    header = hub_pb2.EnrollRequest(
        header=hub_pb2.EnrollHeader(dataset=f"ds{j:03d}", epoch=EPOCH, category="bench")
    ).SerializeToString()
    tags, handles, kts = keys.tags[lo:hi], keys.handles[lo:hi], keys.key_types[lo:hi]
    trailer = hub_pb2.EnrollRequest(
        trailer=hub_pb2.EnrollTrailer(tag_count=hi - lo, digest=digest_of(tags, handles, kts))
    ).SerializeToString()

    def messages() -> Iterator[bytes]:
        yield header
        for start in range(0, hi - lo, batch):
            end = start + batch
            yield encode_tag_batch(tags[start:end], handles[start:end], kts[start:end], form)
        yield trailer

    call = enroll()
    for message in messages():
        await call.write(message)
    await call.done_writing()
    response: hub_pb2.EnrollResponse = await call
    assert response.tag_count == hi - lo, (response.tag_count, hi - lo)
    return hi - lo


async def ingest(
    federation: Path,
    address: str,
    keys: Keys,
    owners: Sequence[str],
    streams: int,
    batch: int,
    form: str,
) -> dict[str, Any]:
    channels = {code: channel_for(federation, code, address, i) for i, code in enumerate(owners)}
    queue: asyncio.Queue[int] = asyncio.Queue()
    datasets = len(keys.bounds) - 1
    for j in range(datasets):
        queue.put_nowait(j)
    progress: list[tuple[float, int]] = []
    done = 0
    start = time.perf_counter()

    async def worker() -> None:
        nonlocal done
        while not queue.empty():
            j = queue.get_nowait()
            enrolled = await enroll_dataset(channels[owners[j % len(owners)]], keys, j, batch, form)
            done += enrolled
            progress.append((time.perf_counter() - start, done))
            if len(progress) % max(1, datasets // 10) == 0:
                log(f"  {len(progress)}/{datasets} datasets, {done:,} tags, "
                    f"{done / (time.perf_counter() - start):,.0f} tags/s")  # fmt: skip

    await asyncio.gather(*(worker() for _ in range(streams)))
    seconds = time.perf_counter() - start
    for channel in channels.values():
        await channel.close()
    # Rate over the first and the last tenth of the datasets: the index grows.
    tenth = max(1, len(progress) // 10)
    first_s, first_n = progress[tenth - 1]
    last_s0, last_n0 = progress[-tenth - 1] if len(progress) > tenth else (0.0, 0)
    last_s, last_n = progress[-1]
    return {
        "tags": keys.n,
        "datasets": datasets,
        "owners": len(owners),
        "streams": streams,
        "batch": batch,
        "seconds": seconds,
        "tags_per_s": keys.n / seconds,
        "first_tenth_tags_per_s": first_n / first_s,
        "last_tenth_tags_per_s": (last_n - last_n0) / (last_s - last_s0),
        "target_tags_per_s": TARGETS["ingest_tags_per_s"],
    }


# -- open-loop latency ----------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def open_loop(
    channels: Sequence[grpc.aio.Channel],
    method: str,
    requests: Sequence[bytes],
    rate: float,
    seconds: float,
    count_hits: Callable[[bytes], int] | None,
) -> dict[str, Any]:
    """Send requests[i] at t0 + i / rate on channel i % len(channels), whatever
    is still outstanding; latency from the scheduled time to the answer."""
    calls: list[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = [
        ch.unary_unary(method, request_serializer=None, response_deserializer=None)
        for ch in channels
    ]
    total = int(rate * seconds)
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    details: dict[str, str] = {}
    hits = 0
    outstanding: set[asyncio.Task[None]] = set()
    t0 = time.perf_counter() + 0.05

    async def one(i: int, scheduled: float) -> None:
        nonlocal hits
        try:
            reply = await calls[i % len(calls)](requests[i % len(requests)], timeout=30)
        except grpc.aio.AioRpcError as exc:
            errors[exc.code().name] += 1
            details.setdefault(exc.code().name, str(exc.details())[:200])
            return
        latencies.append(time.perf_counter() - scheduled)
        if count_hits is not None:
            hits += count_hits(reply)

    i = 0
    while i < total:
        now = time.perf_counter()
        while i < total and t0 + i / rate <= now:
            task = asyncio.create_task(one(i, t0 + i / rate))
            outstanding.add(task)
            task.add_done_callback(outstanding.discard)
            i += 1
        if i < total:
            await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
    end_of_schedule = t0 + total / rate
    # What completes within one second after the schedule counts as on time.
    with_deadline = asyncio.gather(*outstanding)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            asyncio.shield(with_deadline),
            timeout=max(0.0, end_of_schedule + 1.0 - time.perf_counter()),
        )
    on_time = len(latencies) + sum(errors.values())
    await with_deadline
    ms = [x * 1000 for x in latencies]
    return {
        "offered_per_s": rate,
        "sent": total,
        "completed": len(latencies),
        "completed_on_time": on_time,
        "errors": dict(errors),
        "error_details": details,
        "p50_ms": percentile(ms, 0.50),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": max(ms) if ms else float("nan"),
        "hits": hits,
    }


def held(step: dict[str, Any]) -> bool:
    return (
        not step["errors"]
        and step["completed_on_time"] >= 0.99 * step["sent"]
        and step["p99_ms"] <= TARGETS["query_p99_ms"]
    )


async def latency_sweep(
    federation: Path,
    addresses: Sequence[str],
    keys: Keys,
    rates: Sequence[float],
    seconds: float,
    clients: int,
    hit_rate: float,
    profile: Callable[[str], Profiler],
    hub_pids: Sequence[int],
    methods: Mapping[str, str] = METHODS,
) -> dict[str, Any]:
    """Each method at each offered rate; client i talks to addresses[i % len]
    (several hub processes: a load balancer that spreads connections)."""
    channels = [
        channel_for(federation, QUERIER, addresses[i % len(addresses)], i) for i in range(clients)
    ]
    for ch in channels:
        await asyncio.wait_for(ch.channel_ready(), 30)
    count = int(max(rates) * seconds)
    tags, kts, hit = query_mix(keys, count, hit_rate, seed=11)
    query_requests = [
        hub_pb2.QueryRequest(
            epoch=EPOCH, tags=[common_pb2.QueryTag(tag=t.tobytes(), key_type=_kt(k))]
        ).SerializeToString()
        for t, k in zip(tags, kts, strict=True)
    ]

    def query_hits(reply: bytes) -> int:
        return len(hub_pb2.QueryResponse.FromString(reply).matches)

    out: dict[str, Any] = {"clients": clients, "step_seconds": seconds, "hit_rate": hit_rate}
    for name, method in methods.items():
        is_query = method.endswith("/Query")
        requests = query_requests if is_query else [b""]
        log(f"  {name}: warm-up")
        await open_loop(channels, method, requests[-200:], 200, 1.0, None)
        steps: list[dict[str, Any]] = []
        for rate in rates:
            if (
                len(steps) >= 2
                and not any(st["held"] for st in steps[-2:])
                and all(st["completed_on_time"] < 0.9 * st["sent"] for st in steps[-2:])
            ):
                log(f"    {rate:>6,.0f}/s  skipped: saturated at lower rates")
                continue
            gc.collect()
            label = f"{name.split()[0].split('.')[-1].lower()}_{int(rate)}"
            client0, t0 = time.process_time(), time.perf_counter()
            hub0 = sum(proc_cpu_seconds(pid) for pid in hub_pids)
            with profile(label) as prof, Foreign() as other:
                step = await open_loop(channels, method, requests, rate, seconds,
                                       query_hits if is_query else None)  # fmt: skip
            wall = time.perf_counter() - t0
            step["machine"] = other.result
            step["client_cpu_cores"] = round((time.process_time() - client0) / wall, 2)
            hub_cpu = sum(proc_cpu_seconds(pid) for pid in hub_pids) - hub0
            step["hub_cpu_cores"] = round(hub_cpu / wall, 2)
            if prof.enabled:
                step["profile"] = prof.summary()
            if is_query:
                step["expected_hits"] = int(hit[: step["sent"]].sum())
            step["held"] = held(step)
            steps.append(step)
            log(f"    {rate:>6,.0f}/s  p50 {step['p50_ms']:7.2f} ms  p99 {step['p99_ms']:8.2f} ms  "
                f"completed {step['completed_on_time']}/{step['sent']}  errors {step['errors'] or 0}"
                f"{'' if step['held'] else '  (not held)'}")  # fmt: skip
            await asyncio.sleep(0.5)
        best = max((s["offered_per_s"] for s in steps if s["held"]), default=0)
        out[name] = {"steps": steps, "highest_rate_held": best}
    for ch in channels:
        await ch.close()
    return out


# -- bulk match -----------------------------------------------------------------


async def bulk_match(
    federation: Path, address: str, tags: np.ndarray, kts: np.ndarray, form: str, ahead: int = 4
) -> dict[str, Any]:
    """One BulkMatch stream of `tags` in batches of 10,000, `ahead` batches in flight."""
    channel = channel_for(federation, QUERIER, address, 99)
    await asyncio.wait_for(channel.channel_ready(), 30)
    stream: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(
        "/blindmatch.v1.Hub/BulkMatch", request_serializer=None, response_deserializer=None
    )
    messages = [
        encode_bulk_batch(b + 1, tags[s : s + BATCH], kts[s : s + BATCH], form)
        for b, s in enumerate(range(0, len(tags), BATCH))
    ]
    matched = np.zeros(len(tags), dtype=bool)
    matches = 0
    window = asyncio.Semaphore(ahead)
    start = time.perf_counter()
    call = stream()

    async def writer() -> None:
        for message in messages:
            await window.acquire()
            await call.write(message)
        await call.done_writing()

    sending = asyncio.create_task(writer())
    for expected_id in range(1, len(messages) + 1):
        raw = await call.read()
        assert isinstance(raw, bytes)
        window.release()
        reply = hub_pb2.BulkMatchResponse.FromString(raw)
        assert reply.batch_id == expected_id
        base = (expected_id - 1) * BATCH
        if reply.HasField("match_columns"):
            found = np.asarray(reply.match_columns.query_indices, dtype=np.int64)
        else:
            found = np.array([m.query_index for m in reply.matches], dtype=np.int64)
        matched[base + found] = True
        matches += len(found)
    await sending
    seconds = time.perf_counter() - start
    await channel.close()
    return {"seconds": seconds, "matches": matches, "matched": matched, "batches": len(messages)}


def numpy_floor(keys: Keys, tags: np.ndarray, repeat: int = 3) -> tuple[dict[str, Any], np.ndarray]:
    """Sort the enrolled tags' 64-bit prefixes once; time searchsorted + full-tag check."""
    t = time.perf_counter()
    prefixes = keys.tags[:, :8].copy().view(">u8").ravel().astype(np.uint64)
    order = np.argsort(prefixes, kind="stable")
    sorted_prefixes = prefixes[order]
    sorted_tags = keys.tags[order]
    build = time.perf_counter() - t
    del prefixes, order
    best = float("inf")
    found = np.zeros(0, dtype=bool)
    for _ in range(repeat):
        t = time.perf_counter()
        q = tags[:, :8].copy().view(">u8").ravel().astype(np.uint64)
        idx = np.minimum(np.searchsorted(sorted_prefixes, q), len(sorted_prefixes) - 1)
        found = (sorted_tags[idx] == tags).all(axis=1)
        best = min(best, time.perf_counter() - t)
    return {"seconds": best, "index_build_seconds": build, "hits": int(found.sum())}, found


# -- the audit-leaf commit ------------------------------------------------------


def commit_cost(folder: Path, count: int = 400) -> dict[str, float]:
    """A one-row transaction (an audit leaf's shape) in WAL with synchronous=FULL."""
    path = folder / "commit-probe.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE leaves (idx INTEGER PRIMARY KEY, entry BLOB NOT NULL)")
    entry = b'{"hits":0,"kind":"query","requester":"USA","tags":1,"time_ms":1700000000000,"v":1}'
    samples = []
    for i in range(count):
        t = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO leaves VALUES (?, ?)", (i, entry))
        conn.execute("COMMIT")
        samples.append((time.perf_counter() - t) * 1000)
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    median = percentile(samples, 0.5)
    return {
        "median_ms": median,
        "p99_ms": percentile(samples, 0.99),
        "serial_commits_per_s": 1000 / statistics_mean(samples),
    }


def statistics_mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


# -- the stores -----------------------------------------------------------------


class Store:
    """Where a measured hub keeps its data: its configuration keys and its footprint."""

    name = "?"
    several_hubs = False  # whether several hub processes may serve it at once

    def config(self, folder: Path) -> dict[str, str]:
        raise NotImplementedError

    def disk(self) -> dict[str, int]:
        raise NotImplementedError

    def server_memory(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass


class SqliteStore(Store):
    name = "sqlite"

    def __init__(self) -> None:
        self.database = Path()

    def config(self, folder: Path) -> dict[str, str]:
        self.database = folder / "hub.sqlite"
        return {"database": str(self.database)}

    def disk(self) -> dict[str, int]:
        return sqlite_disk_bytes(self.database)


def postgres_unavailable() -> str | None:
    """Why the PostgreSQL store cannot be measured here, or None."""
    if importlib.util.find_spec("hub.store_pg") is None:
        return "hub.store_pg does not exist in this tree (the PostgreSQL store is not merged yet)"
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        return f"psycopg does not import ({exc})"
    from hub import config as hub_config

    if "postgres_dsn" not in getattr(hub_config, "_KNOWN", frozenset()):
        return "the hub's configuration has no postgres_dsn key to select the PostgreSQL store"
    try:
        from tests.pg import find_bin_dir

        find_bin_dir()
    except Exception as exc:  # tests.pg missing, or no PostgreSQL server programs
        return f"no PostgreSQL server to start: {type(exc).__name__}: {exc}"
    return None


class PostgresStore(Store):
    """A throw-away PostgreSQL cluster (tests/pg.py's), but durable: fsync,
    synchronous_commit and full_page_writes on, as a production hub's would be
    (the tests' server turns them off), with 1 GB of shared buffers."""

    name = "postgres"
    several_hubs = True

    def __init__(self) -> None:
        from tests.pg import PostgresServer

        class DurablePostgres(PostgresServer):
            def start(self) -> None:
                if self.user is not None:
                    os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
                self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                          "--encoding=UTF8", "--locale=C")  # fmt: skip
                options = " ".join([
                    "-c listen_addresses=''", f"-c unix_socket_directories='{self.socket_dir}'",
                    "-c port=5432", "-c fsync=on", "-c synchronous_commit=on",
                    "-c full_page_writes=on", "-c max_connections=100",
                    "-c shared_buffers=1GB", "-c max_wal_size=8GB",
                ])  # fmt: skip
                self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l",
                          str(self.log), "-o", options)  # fmt: skip
                self._running = True

        self.server = DurablePostgres()
        self.server.start()
        self.dsn = self.server.new_database()

    def config(self, folder: Path) -> dict[str, str]:
        return {"store": "postgres", "postgres_dsn": self.dsn}

    def disk(self) -> dict[str, int]:
        files = self.server.database_files(self.dsn)
        wal = self.server.data / "pg_wal"
        return {
            "database_files": sum(p.stat().st_size for p in files),
            "pg_wal": sum(p.stat().st_size for p in wal.iterdir() if p.is_file()),
        }

    def server_memory(self) -> dict[str, int]:
        """Proportional set size summed over the server's processes (shared buffers counted once)."""
        total = 0
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if pid_dir.joinpath("comm").read_text().strip() != "postgres":
                    continue
                for line in pid_dir.joinpath("smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
        return {"postgres_pss": total}

    def close(self) -> None:
        self.server.stop()


# -- the run --------------------------------------------------------------------


@dataclass
class Args:
    tags: int
    datasets: int
    owners: int
    bulk: int
    hit_rate: float
    rates: list[float]
    step_seconds: float
    clients: int
    ingest_streams: int
    enroll_batch: int
    bulk_runs: int
    form: str
    profile: Path | None
    seed: int
    wait_quiet: float
    hubs: int
    listeners: int | None


def several_hubs(
    args: Args, keys: Keys, store: Store, folder: Path, federation: Path, first: HubProcess
) -> dict[str, Any]:
    """The single-tag query again, served by `args.hubs` hub processes on the
    one database (the first one and more started for this), each client
    connected to one of them."""
    extra = [
        HubProcess(folder / f"hub{n + 2}", federation, store.config(folder), args.listeners)
        for n in range(args.hubs - 1)
    ]
    try:
        for hub in extra:
            hub.root.mkdir(parents=True, exist_ok=True)
            hub.start()
        hubs = [first, *extra]
        log(f"query latency, {len(hubs)} hub processes on one database ...")
        wait_for_quiet(args.wait_quiet)
        sweep = latency_sweep(
            federation,
            [h.address for h in hubs],
            keys,
            args.rates,
            args.step_seconds,
            args.clients,
            args.hit_rate,
            lambda label: Profiler(None, first.pid, label),
            [h.pid for h in hubs],
            {QUERY: METHODS[QUERY]},
        )
        result = asyncio.run(sweep)
    finally:
        for hub in extra:
            hub.stop()
    result["hubs"] = args.hubs
    return result


def measure(args: Args, keys: Keys, store: Store, root: Path, federation: Path) -> dict[str, Any]:
    folder = root / store.name
    folder.mkdir(parents=True)
    hub = HubProcess(folder, federation, store.config(folder), args.listeners)
    address = hub.start()
    log(f"hub ({store.name}) pid {hub.pid} on {address}")
    memory: dict[str, dict[str, int]] = {"idle": proc_memory(hub.pid)}
    quiet: dict[str, Any] = {}

    def profile(label: str) -> Profiler:
        return Profiler(args.profile, hub.pid, f"{store.name}_{label}")

    try:
        owners = OWNER_CODES[: args.owners]
        log(f"ingest: {keys.n:,} tags in {args.datasets} datasets of {len(owners)} bureaus, "
            f"{args.ingest_streams} streams ...")  # fmt: skip
        quiet["ingest"] = wait_for_quiet(args.wait_quiet)
        cpu0 = proc_cpu_seconds(hub.pid)
        with profile("ingest") as prof, Foreign() as other:
            ingest_row = asyncio.run(
                ingest(
                    federation,
                    address,
                    keys,
                    owners,
                    args.ingest_streams,
                    args.enroll_batch,
                    args.form,
                )
            )
        ingest_row["hub_cpu_seconds"] = proc_cpu_seconds(hub.pid) - cpu0
        ingest_row["machine"] = other.result
        if prof.enabled:
            ingest_row["profile"] = prof.summary()
        memory["after_ingest"] = {**proc_memory(hub.pid), **store.server_memory()}
        disk_running = store.disk()
        log(
            f"  {ingest_row['tags_per_s']:,.0f} tags/s; disk {sum(disk_running.values()) / keys.n:.1f} B/tag"
        )

        quiet["latency"] = wait_for_quiet(args.wait_quiet)
        log(f"query latency, {args.clients} clients, open loop ...")
        sweep = latency_sweep(federation, [address], keys, args.rates, args.step_seconds,
                              args.clients, args.hit_rate, profile, [hub.pid])  # fmt: skip
        latency = asyncio.run(sweep)
        memory["after_queries"] = proc_memory(hub.pid)
        if store.several_hubs and args.hubs > 1:
            latency["several_hubs"] = several_hubs(args, keys, store, folder, federation, hub)

        log(f"bulk match: {args.bulk:,} tags ({args.hit_rate:.0%} enrolled), "
            f"median of {args.bulk_runs} runs ...")  # fmt: skip
        qtags, qkts, qhit = query_mix(keys, args.bulk, args.hit_rate, seed=23)
        runs = []
        for run in range(args.bulk_runs):
            quiet[f"bulk_{run + 1}"] = wait_for_quiet(args.wait_quiet)
            cpu0 = proc_cpu_seconds(hub.pid)
            with profile(f"bulk_{run + 1}") as prof, Foreign() as other:
                one = asyncio.run(bulk_match(federation, address, qtags, qkts, args.form))
            one["hub_cpu_seconds"] = proc_cpu_seconds(hub.pid) - cpu0
            one["machine"] = other.result
            if prof.enabled:
                one["profile"] = prof.summary()
            matched = one.pop("matched")
            one["planted"] = int(qhit.sum())
            one["recall"] = float(matched[qhit].mean()) if qhit.any() else 1.0
            one["false_hits"] = int((matched & ~qhit).sum())
            log(f"  run {run + 1}: {one['seconds']:.2f} s, recall {one['recall']:.4f}")
            runs.append(one)
        memory["after_bulk"] = {**proc_memory(hub.pid), **store.server_memory()}
        bulk = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]  # the median run
        bulk["runs_seconds"] = [r["seconds"] for r in runs]
        bulk["recall"] = min(r["recall"] for r in runs)
        bulk["false_hits"] = max(r["false_hits"] for r in runs)
        log("numpy floor ...")
        floor, found = numpy_floor(keys, qtags)
        assert np.array_equal(found, qhit), "the numpy floor disagrees with the planted hits"
        bulk["numpy_floor"] = floor
        bulk["over_floor"] = bulk["seconds"] / floor["seconds"]
        bulk["tags"] = args.bulk
        bulk["index_tags"] = keys.n
    finally:
        code = hub.stop()
    disk_closed = store.disk()
    return {
        "store": store.name,
        "measured": True,
        "hub_exit_code": code,
        "ingest": ingest_row,
        "latency": latency,
        "bulk": bulk,
        "disk": {
            "running": disk_running,
            "running_bytes_per_tag": sum(disk_running.values()) / keys.n,
            "closed": disk_closed,
            "closed_bytes_per_tag": sum(disk_closed.values()) / keys.n,
            # The data files alone (SQLite's WAL is empty after a clean shutdown;
            # PostgreSQL's pg_wal is recycled, its size set by max_wal_size).
            "data_bytes_per_tag": disk_closed.get("db", disk_closed.get("database_files", 0))
            / keys.n,
            "target_bytes_per_tag": TARGETS["bytes_per_tag"],
        },
        "memory": memory,
        "waits_for_quiet": quiet,
    }


def source_state() -> dict[str, Any]:
    """The commit measured and the files that differed from it (others edit the tree too)."""
    # BLINDMATCH_BENCH_REPO: the checkout a copy of the tree being measured was taken from.
    repo = Path(os.environ.get("BLINDMATCH_BENCH_REPO") or Path(__file__).resolve().parent.parent)

    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=repo, capture_output=True, text=True,
                                  check=False, timeout=30).stdout.strip()  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return ""

    changed = [line[3:] for line in git("status", "--porcelain").splitlines()
               if line[3:].startswith(("hub/", "psi/", "bureau_agent/"))]  # fmt: skip
    return {"commit": git("rev-parse", "HEAD"), "uncommitted_hub_agent_psi_files": changed}


def main(argv: Sequence[str] | None = None) -> int:
    assert __doc__
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tags", type=int, default=2_000_000, help="enrolled tags (full run: 10000000)"
    )
    parser.add_argument("--datasets", type=int, default=194)
    parser.add_argument("--owners", type=int, default=8, help="bureaus owning the datasets")
    parser.add_argument("--bulk", type=int, default=1_000_000, help="tags in the bulk match")
    parser.add_argument(
        "--bulk-runs", type=int, default=3, help="bulk matches (the median is reported)"
    )
    parser.add_argument(
        "--hit-rate", type=float, default=0.05, help="fraction of query tags enrolled"
    )
    parser.add_argument(
        "--rates", default="250,500,1000,1500,2000,3000", help="offered q/s, comma-separated"
    )
    parser.add_argument("--step-seconds", type=float, default=4.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--listeners",
        type=int,
        default=None,
        help="gRPC servers sharing the hub's port (hub.toml listeners; default: the hub's)",
    )
    parser.add_argument("--ingest-streams", type=int, default=2, help="enrollments in flight")
    parser.add_argument("--enroll-batch", type=int, default=BATCH, help="keys per TagBatch")
    parser.add_argument(
        "--form",
        choices=["columns", "keys"],
        default="columns",
        help="how batches carry keys: TaggedKeyColumns (the agent's form) or one message per key",
    )
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--profile", action="store_true", help="sample the hub with py-spy")
    parser.add_argument(
        "--profile-dir", type=Path, default=PROFILES, help="py-spy's collapsed stacks"
    )
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=60.0,
        help="before each phase, wait up to this many seconds for other processes to go quiet",
    )
    parser.add_argument(
        "--hubs",
        type=int,
        default=2,
        help="hub processes on one database for a second query sweep (PostgreSQL only; 1: none)",
    )
    parser.add_argument("--json-out", type=Path, default=RESULTS)
    ns = parser.parse_args(argv)
    args = Args(
        tags=ns.tags, datasets=ns.datasets, owners=min(ns.owners, len(OWNER_CODES)), bulk=ns.bulk,
        hit_rate=ns.hit_rate, rates=[float(r) for r in ns.rates.split(",")],
        step_seconds=ns.step_seconds, clients=ns.clients, ingest_streams=ns.ingest_streams,
        enroll_batch=ns.enroll_batch, bulk_runs=ns.bulk_runs, form=ns.form, profile=ns.profile_dir if ns.profile else None, seed=ns.seed,
        wait_quiet=ns.wait_quiet, hubs=ns.hubs, listeners=ns.listeners,
    )  # fmt: skip
    stores = [s.strip() for s in ns.stores.split(",") if s.strip()]
    if args.profile and py_spy() is None:
        log("--profile: py-spy is not on PATH (pip install py-spy); profiling skipped")

    started = time.perf_counter()
    source = source_state()
    check_encoders()
    log(f"{args.tags:,} random tags and handles ...")
    keys = Keys.random(args.tags, args.datasets, args.seed)
    root = Path(tempfile.mkdtemp(prefix="blindmatch-hub-load-"))
    results: dict[str, Any] = {}
    try:
        federation = make_credentials(root, OWNER_CODES[: args.owners])
        wait_for_quiet(args.wait_quiet)
        probe = commit_cost(root)
        for name in stores:
            why = postgres_unavailable() if name == "postgres" else None
            if why is not None:
                results[name] = {"store": name, "measured": False, "why": why}
                log(f"{name}: not measured: {why}")
                continue
            store: Store = SqliteStore() if name == "sqlite" else PostgresStore()
            try:
                results[name] = measure(args, keys, store, root, federation)
            except Exception as exc:
                if name == "sqlite":
                    raise
                results[name] = {"store": name, "measured": False,
                                 "why": f"the run failed: {type(exc).__name__}: {exc}"}  # fmt: skip
                log(f"{name}: not measured: {results[name]['why']}")
            finally:
                store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    report: dict[str, Any] = {
        "benchmark": "bench_hub_load",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "grpcio": grpc.__version__,
        },
        "parameters": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "source": source,
        "audit_leaf_commit": probe,
        "stores": results,
        "targets": TARGETS,
        "wall_seconds": time.perf_counter() - started,
    }
    print(render(report))
    args_out: Path = ns.json_out
    args_out.parent.mkdir(parents=True, exist_ok=True)
    args_out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


def _others(row: dict[str, Any]) -> str:
    """CPU cores that processes outside the benchmark used during a phase."""
    cores = row.get("machine", {}).get("other_cpu_cores")
    return "?" if cores is None else f"{cores:.2f}"


def _ok(good: bool) -> str:
    return "ok" if good else "MISSED"


def _step_row(call: str, step: dict[str, Any]) -> str:
    """One line of the latency table."""
    return (
        f"  {call:<20}{step['offered_per_s']:>7,.0f}{step['p50_ms']:>9.2f}{step['p99_ms']:>9.2f}"
        f"{step['max_ms']:>9.1f}{step['completed_on_time'] / step['sent']:>9.1%}"
        f"{step.get('hub_cpu_cores', float('nan')):>6.2f}{step.get('client_cpu_cores', float('nan')):>7.2f}"
        f"{_others(step):>7}  {'yes' if step['held'] else 'no'}"
    )


def render(r: dict[str, Any]) -> str:
    p = r["parameters"]
    lines = [
        f"Blindmatch hub under load, {r['date']}, {r['machine']['cpus']} cores, "
        f"Python {r['machine']['python']}, SQLite {r['machine']['sqlite']}",
        f"  {p['tags']:,} tags in {p['datasets']} datasets of {p['owners']} bureaus; "
        f"queries from {p['clients']} mutual-TLS clients; {p['hit_rate']:.0%} of query tags enrolled",
        f"  audit-leaf commit (1 row, WAL, synchronous=FULL): median {r['audit_leaf_commit']['median_ms']:.2f} ms, "
        f"p99 {r['audit_leaf_commit']['p99_ms']:.2f} ms = at most "
        f"{r['audit_leaf_commit']['serial_commits_per_s']:,.0f} serialized commits/s",
    ]
    for name, s in r["stores"].items():
        lines.append("")
        if not s.get("ingest"):
            lines.append(f"{name}: not measured: {s.get('why', '?')}")
            continue
        i, b, d, m = s["ingest"], s["bulk"], s["disk"], s["memory"]
        peak = max(v.get("VmHWM", 0) for v in m.values())
        lines += [
            f"{name}",
            f"  ingest through Hub.Enroll ({i['streams']} streams, batches of {i['batch']:,}): "
            f"{i['tags_per_s']:,.0f} tags/s in {i['seconds']:.1f} s "
            f"(first tenth {i['first_tenth_tags_per_s']:,.0f}, last tenth {i['last_tenth_tags_per_s']:,.0f}); "
            f"hub CPU {i['hub_cpu_seconds']:.0f} s, others {_others(i)} cores   target >= {i['target_tags_per_s']:,}: "
            f"{_ok(i['tags_per_s'] >= i['target_tags_per_s'])}",
            f"  disk: {d['data_bytes_per_tag']:.1f} B/tag in the data files after shutdown, "
            f"{d['running_bytes_per_tag']:.1f} B/tag with the WAL while running   "
            f"target <= {d['target_bytes_per_tag']}: {_ok(d['data_bytes_per_tag'] <= d['target_bytes_per_tag'])}",
            f"  hub memory: RSS after ingest {m['after_ingest']['VmRSS'] / 1e6:,.0f} MB, after bulk "
            f"{m['after_bulk']['VmRSS'] / 1e6:,.0f} MB, peak {peak / 1e6:,.0f} MB   target <= 1,500 MB: "
            f"{_ok(peak <= TARGETS['rss_bytes'])}",
            "",
            f"  open-loop latency ({p['step_seconds']:.0f} s per step; held = p99 <= 10 ms, no errors, >= 99% on time)",
            f"  {'call':<20}{'q/s':>7}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'on time':>9}{'hub':>6}{'client':>7}{'others':>7}  held",
        ]
        lat = s["latency"]
        for call in METHODS:
            lines += [_step_row(call, step) for step in lat[call]["steps"]]
        q = lat[QUERY]["highest_rate_held"]
        several = lat.get("several_hubs")
        if several:
            lines.append(
                f"  {several['hubs']} hub processes on this database, each client connected to one:"
            )
            lines += [_step_row(QUERY, step) for step in several[QUERY]["steps"]]
        lines += [
            "  highest load held: "
            + ", ".join(f"{c} {lat[c]['highest_rate_held']:,.0f} q/s" for c in METHODS)
            + f"   Query target >= {TARGETS['query_rate_at_p99']:,}: {_ok(q >= TARGETS['query_rate_at_p99'])}"
            + (
                f"; {several['hubs']} hubs: {several[QUERY]['highest_rate_held']:,.0f} q/s"
                if several
                else ""
            ),
            "",
            f"  bulk match {b['tags']:,} tags against {b['index_tags']:,} ({b['batches']} batches): "
            f"{b['seconds']:.2f} s (median; runs "
            + ", ".join(f"{x:.2f}" for x in b.get("runs_seconds", [b["seconds"]]))
            + f"), recall {b['recall']:.4f} of {b['planted']:,} planted, "
            f"{b['false_hits']} false; hub CPU {b['hub_cpu_seconds']:.1f} s, others {_others(b)} cores",
            f"    numpy floor {b['numpy_floor']['seconds']:.2f} s -> {b['over_floor']:.1f}x   "
            f"target <= {TARGETS['bulk_seconds']} s: {_ok(b['seconds'] <= TARGETS['bulk_seconds'])}, "
            f"<= {TARGETS['bulk_over_floor']}x: {_ok(b['over_floor'] <= TARGETS['bulk_over_floor'])}",
        ]
        if "postgres_pss" in m.get("after_bulk", {}):
            lines.append(f"  PostgreSQL server memory (PSS, all its processes): "
                         f"{m['after_bulk']['postgres_pss'] / 1e6:,.0f} MB")  # fmt: skip
    lines.append(
        "\n  (hub, client = CPU cores the hub process and this load generator used; others = "
        "cores used by processes outside this benchmark during the phase; the machine has 2)"
    )
    lines.append(f"wall time {r['wall_seconds']:.0f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
