"""Faults, with real processes: nothing acknowledged is lost.

* The hub is killed with SIGKILL at random points of a stream of dataset
  enrollments, many times over one database: after each restart every
  acknowledged version is live and complete, no version is ever partly
  visible (a version's tags match all or none), and the interrupted
  enrollment, sent again, completes.  BLINDMATCH_CRASH_RUNS raises the
  number of crashes (20 by default, for CI's time budget).
* A custodian killed mid-enrollment with n > t: the enrollment completes;
  with fewer than t custodians alive it fails with a clear error and the
  previous version still matches.
* The hub restarted (SIGKILL and SIGTERM, on a new port) under agents that
  follow standing-match notices and disclosure cases: they reconnect and
  resume; nothing is lost or repeated.
* The hub's disk fills up: writes are refused with UNAVAILABLE and a message
  that says why, reads go on, and once space is back everything is intact;
  a read-only database is refused at start-up with a clear message and is
  left unchanged.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import queue
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from blindmatch.v1 import audit_pb2, audit_pb2_grpc, common_pb2, hub_pb2, hub_pb2_grpc
from bureau_agent import pki
from bureau_agent.localfed import LocalFederation
from hub import policy
from hub._store_sql import _CHUNK
from psi.identifiers import KeyType

pytestmark = pytest.mark.e2e

CRASH_RUNS = int(os.environ.get("BLINDMATCH_CRASH_RUNS", "20"))
PASSPORT = common_pb2.KEY_TYPE_PASSPORT
QUERY_LIMIT = 10_000  # the hub's default max_tags_per_request


# -- a hub process over a small PKI ---------------------------------------------------


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    pki.init_federation(root, "crash")
    pki.issue_hub(root)
    for code in ("FRA", "DEU"):
        pki.issue_bureau(root, code)
    return root


@dataclass
class HubProcess:
    """`python -m hub --config` on 127.0.0.1:0 with its database in `data`."""

    federation: Path
    data: Path  # the database's folder
    work: Path  # configuration, address file and log
    process: subprocess.Popen[bytes] | None = None
    address: str = ""

    @property
    def database(self) -> Path:
        return self.data / "hub.sqlite"

    @property
    def log(self) -> Path:
        return self.work / "hub.log"

    @property
    def config(self) -> Path:
        return self.work / "hub.toml"

    @property
    def address_file(self) -> Path:
        return self.work / "address"

    def spawn(self) -> subprocess.Popen[bytes]:
        self.work.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f'listen = "127.0.0.1:0"\n'
            f'database = "{self.database}"\n'
            f'address_file = "{self.address_file}"\n'
            f'credentials = "{self.federation / "hub"}"\n'
            "grace_period = 2.0\n"
        )
        self.address_file.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hub", "--config", str(self.config)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        return self.process

    def start(self, timeout: float = 30.0) -> str:
        """Start and wait until it serves (address written, health SERVING)."""
        process = self.spawn()
        address_file = self.address_file
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"hub exited with {process.returncode}: {self.tail()}")
            if address_file.exists() and address_file.read_text().strip():
                self.address = address_file.read_text().strip()
                with self.channel("FRA") as channel:
                    health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=5
                    )
                return self.address
            time.sleep(0.01)
        raise TimeoutError(f"hub not serving after {timeout} s: {self.tail()}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(10)

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(15)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def channel(self, code: str) -> grpc.Channel:
        creds = pki.TlsFiles.in_folder(self.federation / "bureaus" / code).channel_credentials()
        return grpc.secure_channel(self.address, creds)


# -- datasets as the test sees them -----------------------------------------------------


@dataclass
class Version:
    """One enrollment attempt: a dataset name, a category unique to the
    attempt (the hub reveals it in answers, so a match says which attempt
    it came from) and its random tags."""

    name: str
    category: str
    tags: list[bytes]
    handles: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.handles:
            self.handles = [os.urandom(16) for _ in self.tags]

    def messages(self, batch: int = 1000) -> list[hub_pb2.EnrollRequest]:
        keys = [
            common_pb2.TaggedKey(tag=t, handle=h, key_type=PASSPORT)
            for t, h in zip(self.tags, self.handles, strict=True)
        ]
        digest = policy.digest_of(
            policy.TaggedKey(t, h, KeyType.PASSPORT)
            for t, h in zip(self.tags, self.handles, strict=True)
        )
        header = hub_pb2.EnrollHeader(
            dataset=self.name,
            epoch=1,
            policy=common_pb2.DatasetPolicy(reveal_category=True),
            category=self.category,
            replace=True,
        )
        return [
            hub_pb2.EnrollRequest(header=header),
            *(
                hub_pb2.EnrollRequest(batch=hub_pb2.TagBatch(keys=keys[i : i + batch]))
                for i in range(0, len(keys), batch)
            ),
            hub_pb2.EnrollRequest(
                trailer=hub_pb2.EnrollTrailer(tag_count=len(keys), digest=digest)
            ),
        ]


def categories_seen(hub: HubProcess, tags: Sequence[bytes]) -> list[list[str]]:
    """For each tag, the categories of the datasets it matches (asked by DEU)."""
    seen: list[list[str]] = [[] for _ in tags]
    with hub.channel("DEU") as channel:
        stub = hub_pb2_grpc.HubStub(channel)
        for start in range(0, len(tags), QUERY_LIMIT):
            chunk = tags[start : start + QUERY_LIMIT]
            reply = stub.Query(
                hub_pb2.QueryRequest(
                    epoch=1, tags=[common_pb2.QueryTag(tag=t, key_type=PASSPORT) for t in chunk]
                ),
                timeout=60,
            )
            for match in reply.matches:
                seen[start + match.query_index].append(match.category)
    return seen


def live_datasets(hub: HubProcess) -> dict[str, common_pb2.DatasetInfo]:
    with hub.channel("FRA") as channel:
        reply = hub_pb2_grpc.HubStub(channel).ListDatasets(
            hub_pb2.ListDatasetsRequest(), timeout=30
        )
    return {d.name: d for d in reply.datasets}


@dataclass
class CrashTally:
    runs: int = 0
    acknowledged_checked: int = 0
    tags_checked: int = 0
    lost: int = 0
    interrupted_committed: int = 0
    interrupted_not_committed: int = 0
    aimed_at_commit: int = 0
    killed_between_enrollments: int = 0
    retries_completed: int = 0


class Model:
    """What the hub must hold: the live version of each name."""

    def __init__(self) -> None:
        self.live: dict[str, Version] = {}
        self.versions: dict[str, int] = {}

    def acknowledged(self, version: Version, number: int) -> None:
        assert number == self.versions.get(version.name, 0) + 1, "versions count commits"
        self.live[version.name] = version
        self.versions[version.name] = number


def check_after_restart(
    hub: HubProcess,
    model: Model,
    recent: list[Version],
    interrupted: Version | None,
    tally: CrashTally,
) -> None:
    """Every acknowledged version in `recent` (or, with all of the model, every
    one) is live and complete; the interrupted attempt is all or nothing."""
    listed = live_datasets(hub)
    previous = model.live.get(interrupted.name) if interrupted else None
    if interrupted is not None:
        info = listed.get(interrupted.name)
        committed = info is not None and info.category == interrupted.category
        tags = interrupted.tags + (previous.tags if previous else [])
        seen = categories_seen(hub, tags)
        mine, theirs = seen[: len(interrupted.tags)], seen[len(interrupted.tags) :]
        if committed:
            assert all(s == [interrupted.category] for s in mine), "a partial version matches"
            assert all(s == [] for s in theirs), "a replaced version still matches"
            model.acknowledged(interrupted, model.versions.get(interrupted.name, 0) + 1)
            assert info is not None and info.tag_count == len(interrupted.tags)
            tally.interrupted_committed += 1
        else:
            assert all(s == [] for s in mine), "an unacknowledged, uncommitted version matches"
            if previous is not None:
                assert all(s == [previous.category] for s in theirs)
            tally.interrupted_not_committed += 1
    for version in recent:
        if model.live.get(version.name) is not version:
            continue  # replaced since, by a later acknowledged version
        info = listed.get(version.name)
        present = (
            info is not None
            and info.category == version.category
            and info.version == model.versions[version.name]
            and info.tag_count == len(version.tags)
        )
        seen = categories_seen(hub, version.tags)
        complete = all(s == [version.category] for s in seen)
        tally.acknowledged_checked += 1
        tally.tags_checked += len(version.tags)
        if not (present and complete):
            tally.lost += 1


def enroll(hub: HubProcess, version: Version, on_message: Any = None) -> int:
    """Send one enrollment; its committed version number (raises RpcError)."""
    messages = version.messages()

    def stream() -> Iterator[hub_pb2.EnrollRequest]:
        for message in messages:
            if on_message is not None:
                on_message()
            yield message

    with hub.channel("FRA") as channel:
        reply = hub_pb2_grpc.HubStub(channel).Enroll(stream(), timeout=60)
    assert reply.tag_count == len(version.tags)
    return int(reply.version)


class Killer:
    """SIGKILL the hub `jitter` seconds after the `at`-th message is handed to gRPC."""

    def __init__(self, hub: HubProcess, at: int, jitter: float) -> None:
        self.hub, self.at, self.jitter = hub, at, jitter
        self.sent = 0
        self.timer: threading.Timer | None = None

    def count(self) -> None:
        if self.sent == self.at:
            self.timer = threading.Timer(self.jitter, self.hub.kill)
            self.timer.start()
        self.sent += 1

    def join(self) -> None:
        if self.timer is not None:
            self.timer.join()


class Probe:
    """While enrollments stream, query the tags of the one in flight, again and
    again from another bureau: each answer (one snapshot) must show all of
    them or none, never part of a version."""

    def __init__(self, hub: HubProcess) -> None:
        self.hub = hub
        self.current: Version | None = None
        self.probes = 0
        self.partial: list[tuple[str, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            version = self.current
            if version is None or not self.hub.address:
                self._stop.wait(0.01)
                continue
            # One query = one snapshot: a version larger than one query is
            # probed through its first QUERY_LIMIT tags (any subset of a
            # version must be all visible or none).
            tags = version.tags[:QUERY_LIMIT]
            try:
                seen = categories_seen(self.hub, tags)
            except grpc.RpcError:
                self._stop.wait(0.01)  # the hub is down (killed): wait for the next run
                continue
            found = sum(1 for s in seen if version.category in s)
            self.probes += 1
            if found not in (0, len(tags)):
                self.partial.append((version.category, found, len(tags)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.mark.slow
def test_kill_9_during_enrollments_loses_no_acknowledged_write(
    federation: Path, tmp_path: Path
) -> None:
    seed = int(os.environ.get("BLINDMATCH_CRASH_SEED", str(random.SystemRandom().randrange(2**32))))
    rng = random.Random(seed)
    hub = HubProcess(federation, tmp_path / "db", tmp_path)
    names = [f"ds{i}" for i in range(8)]
    # Around and across the hub's staging chunk (rows on disk before the commit).
    sizes = [1, 700, 2500, _CHUNK, _CHUNK + 1, _CHUNK + 4000]
    model, tally = Model(), CrashTally()
    probe = Probe(hub)
    try:
        attempt = 0
        interrupted: Version | None = None
        recent: list[Version] = []

        def new_version(name: str) -> Version:
            nonlocal attempt
            attempt += 1
            count = rng.choice(sizes)
            return Version(name, f"{name}.a{attempt}", [rng.randbytes(16) for _ in range(count)])

        for run in range(CRASH_RUNS + 1):
            hub.start()
            check_after_restart(hub, model, recent, interrupted, tally)
            if interrupted is not None:
                # The same enrollment, sent again, completes.
                model.acknowledged(interrupted, enroll(hub, interrupted))
                tally.retries_completed += 1
                recent = [interrupted]
                interrupted = None
            else:
                recent = []
            if run == CRASH_RUNS:
                break
            plan = [new_version(n) for n in rng.sample(names, 3)]
            lengths = [len(v.messages()) for v in plan]
            if rng.random() < 0.3:
                # Aim at a commit: right after some enrollment's trailer.
                kill_at = sum(lengths[: rng.randrange(3) + 1]) - 1
                jitter = rng.uniform(0, 0.015)
                tally.aimed_at_commit += 1
            else:
                kill_at = rng.randrange(sum(lengths))
                jitter = rng.uniform(0, 0.03)
            killer = Killer(hub, kill_at, jitter)
            for version in plan:
                probe.current = version
                try:
                    number = enroll(hub, version, killer.count)
                except grpc.RpcError as exc:
                    assert exc.code() is grpc.StatusCode.UNAVAILABLE, exc
                    interrupted = version
                    break
                model.acknowledged(version, number)
                recent.append(version)
            probe.current = None
            killer.join()
            hub.kill()
            if interrupted is None:
                tally.killed_between_enrollments += 1
            tally.runs += 1
    except BaseException:
        hub.kill()
        raise
    finally:
        probe.stop()
    # The last start checks everything the model holds, then a clean stop.
    check_after_restart(hub, model, list(model.live.values()), None, tally)
    assert hub.stop() == 0, hub.tail()
    with contextlib.closing(sqlite3.connect(hub.database)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    print(
        f"\ncrash injection (seed {seed}): {tally.runs} SIGKILLs of the hub during enrollments; "
        f"{tally.acknowledged_checked} acknowledged writes checked "
        f"({tally.tags_checked} tags), {tally.lost} lost; interrupted enrollments: "
        f"{tally.interrupted_not_committed} not committed, {tally.interrupted_committed} "
        f"committed before the acknowledgement arrived, {tally.killed_between_enrollments} kills "
        f"after the last acknowledgement ({tally.aimed_at_commit} kills aimed right after a "
        f"trailer); {tally.retries_completed} retries completed; {probe.probes} concurrent "
        f"all-or-nothing probes, {len(probe.partial)} partial"
    )
    assert probe.partial == []
    assert probe.probes > 0
    assert tally.runs == CRASH_RUNS
    assert tally.lost == 0
    assert tally.acknowledged_checked >= CRASH_RUNS


# -- a federation of real agent processes ------------------------------------------------

SCHEMA = """format = "csv"
id = "case_id"

[fields]
passport = "passport"
passport_issuer = "passport_issuer"
"""


def write_passports(path: Path, numbers: Sequence[int], issuer: str = "USA") -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["case_id", "passport", "passport_issuer"])
        for n in numbers:
            writer.writerow([f"R{n:06d}", f"P{n:08d}", issuer])
    return path


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    root = tmp_path_factory.mktemp("faults")
    federation = LocalFederation(
        root, ["FRA", "DEU", "BRA", "USA"], ["FRA", "DEU", "BRA"], threshold=2
    )
    federation.create()
    # USA (not a custodian: its file has no [custodian] table) tags in small
    # batches, so that an enrollment spans many custodian calls.
    with federation.config_path("USA").open("a") as f:
        f.write("batch_size = 200\n")
    (root / "schema.toml").write_text(SCHEMA)
    with federation.running():
        yield federation


class Follower:
    """A `blindmatch ... --follow --json` process; its output lines, parsed."""

    def __init__(self, fed: LocalFederation, code: str, *args: str) -> None:
        from bureau_agent.localfed import CLI

        env = dict(os.environ, BLINDMATCH_CONFIG=str(fed.config_path(code)))
        self.process = subprocess.Popen(
            [*CLI, *args, "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.items: list[dict[str, Any]] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _drain(self, timeout: float) -> bool:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            return True
        if line is None:
            return False
        self.items.append(json.loads(line))
        return True

    def wait_for(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.items) < count:
            left = deadline - time.monotonic()
            if left <= 0 or not self._drain(min(left, 0.5)):
                stderr = ""
                if self.process.poll() is not None and self.process.stderr is not None:
                    stderr = self.process.stderr.read()
                raise AssertionError(f"{len(self.items)} of {count} items: {self.items} {stderr}")
        return self.items

    def stop(self) -> list[dict[str, Any]]:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        while self._drain(1.0) and not self._lines.empty():
            pass
        self._reader.join(5)
        while not self._lines.empty():
            self._drain(0)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()
        return self.items


def test_followers_resume_across_hub_restarts(fed: LocalFederation) -> None:
    """`hits --follow` and `disclosure list --follow` go on across a SIGKILL and
    a SIGTERM of the hub (each restart on a new port): every notice and
    every case change arrives exactly once."""
    data = fed.root / "followers"
    data.mkdir()
    schema = str(fed.root / "schema.toml")

    def enroll(code: str, name: str, numbers: Sequence[int]) -> None:
        path = write_passports(data / f"{code}-{name}.csv", numbers, issuer="FRA")
        fed.cli(code, "enroll", str(path), "--dataset", name, "--schema", schema, "--linkable")

    hits = Follower(fed, "FRA", "hits", "--follow", "--all")
    incoming = Follower(fed, "FRA", "disclosure", "list", "--incoming", "--follow")
    outgoing = Follower(fed, "DEU", "disclosure", "list", "--outgoing", "--follow")
    try:
        enroll("FRA", "watch", range(1, 6))
        enroll("BRA", "b1", [1, 2])
        hits.wait_for(2)
        fed.stop("hub", signal.SIGKILL)
        fed.start_hub()
        enroll("BRA", "b2", [3])  # the agents may not have reconnected yet
        hits.wait_for(3)
        assert fed.stop("hub") == 0  # SIGTERM: the hub ends the follow streams itself
        fed.start_hub()
        enroll("BRA", "b3", [4])
        hits.wait_for(4)

        query = json.loads(fed.cli("DEU", "query", "--passport", "FRA:P00000005", "--json").stdout)
        (match,) = query["matches"]
        case = json.loads(
            fed.cli(
                "DEU",
                "disclosure",
                "request",
                match["match_id"],
                "--purpose",
                "restart test",
                "--legal-basis",
                "test",
                "--json",
            ).stdout
        )
        incoming.wait_for(1)
        outgoing.wait_for(1)
        fed.stop("hub", signal.SIGKILL)
        fed.start_hub()
        fed.cli("FRA", "disclosure", "approve", case["request_id"], "--fields", "passport")
        incoming.wait_for(2)
        outgoing.wait_for(2)
        # One more notice after everything: a duplicate from a reconnect would
        # have come before it.
        enroll("BRA", "b4", [5])
        hits.wait_for(5)
    finally:
        notices = hits.stop()
        owner_side = incoming.stop()
        requester_side = outgoing.stop()

    sequences = [n["sequence"] for n in notices]
    assert len(notices) == 5 and sequences == sorted(set(sequences)), notices
    assert {n["dataset"] for n in notices} == {"watch"}
    for side in (owner_side, requester_side):
        assert [(c["request_id"], c["status"]) for c in side] == [
            (case["request_id"], "pending"),
            (case["request_id"], "approved"),
        ], side
    assert requester_side[-1]["record"] == {"passport": "P00000005"}
    resumed = [
        json.loads(line)
        for line in fed.log_path("FRA").read_text().splitlines()
        if "hub stream interrupted" in line
    ]
    assert {r["stream"] for r in resumed} == {"notices", "disclosures"}


def count_evaluations(fed: LocalFederation, custodian: str, caller: str) -> int:
    count = 0
    for line in fed.log_path(custodian).read_text(errors="replace").splitlines():
        if '"evaluated batch"' in line and json.loads(line).get("caller") == caller:
            count += 1
    return count


def test_custodian_killed_mid_enrollment(fed: LocalFederation) -> None:
    """Runs after the follower test: it kills custodians (and restarts them)."""
    from bureau_agent.localfed import CLI

    data = fed.root / "custodian-kill"
    data.mkdir()
    schema = str(fed.root / "schema.toml")
    original = write_passports(data / "v1.csv", range(10_000, 12_500))
    before = count_evaluations(fed, "FRA", "USA")
    env = dict(os.environ, BLINDMATCH_CONFIG=str(fed.config_path("USA")))
    enrolling = subprocess.Popen(
        [*CLI, "enroll", str(original), "--dataset", "big", "--schema", schema, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    # FRA has the lowest index, so USA's tagger always asks it first.
    deadline = time.monotonic() + 60
    while count_evaluations(fed, "FRA", "USA") == before:
        assert time.monotonic() < deadline and enrolling.poll() is None, enrolling.stderr
        time.sleep(0.02)
    assert enrolling.poll() is None, "the enrollment ended before the custodian was killed"
    fed.stop("FRA", signal.SIGKILL)
    stdout, stderr = enrolling.communicate(timeout=180)
    assert enrolling.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["accepted"] == 2500 and summary["version"] == 1
    failovers = [
        json.loads(line)
        for line in fed.log_path("USA").read_text().splitlines()
        if '"custodian failed"' in line
    ]
    assert any(f["custodian"] == "FRA" for f in failovers)

    # Fewer than t = 2 custodians alive: a clear error, nothing changes.
    fed.stop("DEU", signal.SIGKILL)
    replacement = write_passports(data / "v2.csv", [*range(10_000, 11_000), *range(20_000, 20_300)])
    failed = fed.cli(
        "USA",
        "enroll",
        str(replacement),
        "--dataset",
        "big",
        "--schema",
        schema,
        "--replace",
        check=False,
    )
    assert failed.returncode == 1
    assert failed.stderr.startswith("UNAVAILABLE"), failed.stderr
    assert "only 1 of the 2 custodians" in failed.stderr
    assert "FRA" in failed.stderr and "DEU" in failed.stderr

    for code in ("FRA", "DEU"):
        fed.start_agent(code)
    for code in ("FRA", "DEU"):
        fed.wait_agent(code)
    datasets = json.loads(fed.cli("USA", "datasets", "--json").stdout)["datasets"]
    assert [(d["name"], d["version"], d["tags"]) for d in datasets] == [("big", 1, 2500)]
    both = write_passports(data / "both.csv", [*range(10_000, 12_500), *range(20_000, 20_300)])
    bulk = json.loads(
        fed.cli("DEU", "match", str(both), "--schema", schema, "--json", timeout=300).stdout
    )
    hit_ids = {h["record_id"] for h in bulk["matches"]}
    assert hit_ids == {f"R{n:06d}" for n in range(10_000, 12_500)}


# -- a full disk and a read-only database -------------------------------------------------


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `path` (needs root: skips otherwise)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Write `path` until the file system is full."""
    chunk = b"\0" * 65536
    with path.open("wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return path


def digest_folder(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def test_full_disk_and_read_only_database(federation: Path, tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "small", "16m") as small:
        hub = HubProcess(federation, small / "db", tmp_path / "work")
        hub.start()
        rng = random.Random(5)
        before = Version("before", "before", [rng.randbytes(16) for _ in range(1000)])
        during = Version("during", "during", [rng.randbytes(16) for _ in range(8000)])
        assert enroll(hub, before) == 1

        filler = fill(small / "filler")
        with pytest.raises(grpc.RpcError) as refused:
            enroll(hub, during)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE, refused.value
        assert "full" in (refused.value.details() or ""), refused.value.details()
        print(f"\nfull disk: {refused.value.code().name}: {refused.value.details()}")
        # Reads go on (a query is a write too: it is audited; if the WAL has
        # room it succeeds, else it is refused the same way, never INTERNAL).
        assert set(live_datasets(hub)) == {"before"}
        with hub.channel("DEU") as channel:
            status = hub_pb2_grpc.HubStub(channel).GetStatus(hub_pb2.GetStatusRequest(), timeout=10)
            assert status.tags == 1000
            head = audit_pb2_grpc.AuditLogStub(channel).GetTreeHead(
                audit_pb2.GetTreeHeadRequest(), timeout=10
            )
            assert head.size >= 1
        try:
            seen = categories_seen(hub, before.tags)
            assert all(s == ["before"] for s in seen)
        except grpc.RpcError as exc:
            assert exc.code() is grpc.StatusCode.UNAVAILABLE, exc
        assert hub.process is not None and hub.process.poll() is None

        # Space is back: the same enrollment now commits, and nothing was lost.
        filler.unlink()
        assert enroll(hub, during) == 1
        seen = categories_seen(hub, before.tags + during.tags)
        assert seen == [["before"]] * 1000 + [["during"]] * 8000
        assert hub.stop() == 0, hub.tail()
        with contextlib.closing(sqlite3.connect(hub.database)) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)

        # A read-only database: refused at start-up, with a clear message, untouched.
        remount = ["mount", "-o", "remount,ro", str(small)]
        subprocess.run(remount, check=True, capture_output=True)
        files = digest_folder(hub.data)
        process = hub.spawn()
        assert process.wait(30) == 2
        message = hub.tail().splitlines()[-1]
        # hub.store passes SQLite's words on ("attempt to write a readonly
        # database", or "unable to open database file" when the WAL index
        # cannot be made); naming the read-only file system would be clearer.
        assert message.startswith("StorageError:"), message
        assert re.search(r"read-?only|unable to open database file", message), message
        assert digest_folder(hub.data) == files

        subprocess.run(["mount", "-o", "remount,rw", str(small)], check=True, capture_output=True)
        hub.start()
        seen = categories_seen(hub, before.tags + during.tags)
        assert seen == [["before"]] * 1000 + [["during"]] * 8000
        assert hub.stop() == 0
