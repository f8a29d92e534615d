"""End to end: a key-epoch transition with real processes (hub, four agents,
three custodians of a 2-of-3 key), driven through the real CLI.

Dataset A is enrolled under epoch 1; the key ceremony deals epoch 2; the
custodians restart holding both epochs' shares; dataset B is enrolled under
epoch 2.  Queries and bulk matches find both.  Once A is re-enrolled (under
epoch 2) the custodians drop epoch 1, and everything is still found."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from blindmatch.v1 import custodian_pb2, custodian_pb2_grpc, hub_pb2, hub_pb2_grpc
from bureau_agent import pki
from bureau_agent.localfed import LocalFederation

pytestmark = pytest.mark.e2e

CUSTODIANS = ["FRA", "DEU", "BRA"]
SCHEMA = """format = "csv"
id = "case_id"

[fields]
passport = "passport"
passport_issuer = "issuer"
"""
SHARED = "USA:Z00000042"  # in both A and B


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    root = tmp_path_factory.mktemp("epochs")
    federation = LocalFederation(root, [*CUSTODIANS, "USA"], CUSTODIANS, threshold=2)
    federation.create()
    with federation.running():
        yield federation


def write(folder: Path, name: str, passports: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "schema.toml").write_text(SCHEMA)
    lines = ["case_id,passport,issuer"]
    lines += [f"{name}-{i},{p.split(':')[1]},{p.split(':')[0]}" for i, p in enumerate(passports)]
    path = folder / f"{name}.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def enroll(fed: LocalFederation, code: str, path: Path, dataset: str, *flags: str) -> Any:
    schema = str(path.parent / "schema.toml")
    return _json(
        fed.cli(
            code, "enroll", str(path), "--dataset", dataset, "--schema", schema,
            "--reveal-owner", "--json", *flags,
        )
    )  # fmt: skip


def epoch_of(fed: LocalFederation, code: str, dataset: str) -> int:
    rows = _json(fed.cli(code, "datasets", "--json"))["datasets"]
    return int(next(r["epoch"] for r in rows if r["name"] == dataset))


def owners(fed: LocalFederation, passport: str) -> list[str]:
    out = _json(fed.cli("USA", "query", "--passport", passport, "--json"))
    return sorted(m["owner"] for m in out["matches"])


def bulk_hits(fed: LocalFederation, path: Path) -> set[str]:
    out = _json(
        fed.cli("USA", "match", str(path), "--schema", str(path.parent / "schema.toml"), "--json")
    )
    return {h["record_id"] for h in out["matches"]}


def hub_epochs(fed: LocalFederation) -> list[int]:
    d = pki.load_directory(fed.federation / "directory.json", fed.federation / "ca" / "ca.crt")
    creds = pki.TlsFiles.in_folder(fed.federation / "bureaus" / "USA").channel_credentials()
    with grpc.secure_channel(d.hub_address, creds) as channel:
        status = hub_pb2_grpc.HubStub(channel).GetStatus(hub_pb2.GetStatusRequest(), timeout=5)
    return list(status.epochs)


def custodian_answer(fed: LocalFederation, code: str, epoch: int) -> tuple[str, str]:
    """GetKeyInfo of `code`'s custodian for `epoch`: ("OK", epoch) or (status, details)."""
    d = pki.load_directory(fed.federation / "directory.json", fed.federation / "ca" / "ca.crt")
    creds = pki.TlsFiles.in_folder(fed.federation / "bureaus" / "USA").channel_credentials()
    with grpc.secure_channel(d.bureau(code).address, creds) as channel:
        try:
            info = custodian_pb2_grpc.CustodianStub(channel).GetKeyInfo(
                custodian_pb2.GetKeyInfoRequest(epoch=epoch), timeout=5
            )
        except grpc.RpcError as exc:
            return exc.code().name, exc.details() or ""
    return "OK", str(info.epoch)


def test_a_key_epoch_transition(fed: LocalFederation) -> None:
    data = fed.root / "data"
    a_passports = [f"FRA:A{i:08d}" for i in range(20)] + [SHARED]
    b_passports = [f"DEU:B{i:08d}" for i in range(20)] + [SHARED]
    a = write(data, "a", a_passports)
    b = write(data, "b", b_passports)
    passengers = write(data, "pax", [a_passports[3], b_passports[5], "USA:N00000001"])

    # Epoch 1: FRA enrolls A.
    assert enroll(fed, "FRA", a, "A")["accepted"] == 21
    assert epoch_of(fed, "FRA", "A") == 1

    # The ceremony deals epoch 2; custodians restart holding both shares.
    fed.cli(
        None, "keys", "ceremony", str(fed.federation),
        "--threshold", "2", "--custodians", ",".join(CUSTODIANS), "--epoch", "2",
    )  # fmt: skip
    for code in CUSTODIANS:
        fed.hold_epochs(code, [1, 2])
        fed.restart(code)
    assert [custodian_answer(fed, "DEU", e) for e in (0, 1, 2)] == [
        ("OK", "2"),
        ("OK", "1"),
        ("OK", "2"),
    ]
    code, details = custodian_answer(fed, "DEU", 3)
    assert code == "FAILED_PRECONDITION" and "not of epoch 3" in details

    # Epoch 2: DEU enrolls B (under the newest epoch); A stays under epoch 1.
    assert enroll(fed, "DEU", b, "B")["accepted"] == 21
    assert epoch_of(fed, "DEU", "B") == 2 and epoch_of(fed, "FRA", "A") == 1
    assert hub_epochs(fed) == [1, 2]

    # A query is evaluated under both epochs; the hits are merged.
    assert owners(fed, a_passports[0]) == ["FRA"]
    assert owners(fed, b_passports[0]) == ["DEU"]
    assert owners(fed, SHARED) == ["DEU", "FRA"]
    assert owners(fed, "USA:N00000001") == []
    assert bulk_hits(fed, passengers) == {"pax-0", "pax-1"}

    # Two custodians drop epoch 1 before A is re-enrolled: A can no longer be
    # searched, and the query says so rather than answering "no hit".
    for code in ("FRA", "DEU"):
        fed.hold_epochs(code, [2])
        fed.restart(code)
    failed = fed.cli("USA", "query", "--passport", a_passports[0], check=False)
    assert failed.returncode == 1 and failed.stderr.startswith("UNAVAILABLE")
    assert "key epoch 1" in failed.stderr and "re-enroll" in failed.stderr

    # FRA re-enrolls A: it moves to epoch 2, and epoch 1 is no longer in use.
    assert enroll(fed, "FRA", a, "A", "--replace")["version"] == 2
    assert epoch_of(fed, "FRA", "A") == 2
    assert hub_epochs(fed) == [2]
    fed.hold_epochs("BRA", [2])
    fed.restart("BRA")
    assert custodian_answer(fed, "BRA", 1)[0] == "FAILED_PRECONDITION"

    assert owners(fed, a_passports[0]) == ["FRA"]
    assert owners(fed, b_passports[0]) == ["DEU"]
    assert owners(fed, SHARED) == ["DEU", "FRA"]
    assert bulk_hits(fed, passengers) == {"pax-0", "pax-1"}
