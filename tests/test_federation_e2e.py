"""End to end: a hub and four bureau agents as real processes on loopback,
real TLS, real SQLite files, driven through the real CLI."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from blindmatch.v1 import hub_pb2, hub_pb2_grpc
from bureau_agent import pki
from bureau_agent.demo import write_demo_data
from bureau_agent.localfed import LocalFederation

pytestmark = pytest.mark.e2e


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    root = tmp_path_factory.mktemp("fed")
    federation = LocalFederation(
        root, ["FRA", "DEU", "BRA", "USA"], ["FRA", "DEU", "BRA"], threshold=2
    )
    federation.create()
    with federation.running():
        yield federation


@pytest.fixture(scope="module")
def data(fed: LocalFederation) -> dict[str, Path]:
    return write_demo_data(fed.root / "data", size=40)


@pytest.fixture(scope="module")
def enrolled(fed: LocalFederation, data: dict[str, Path]) -> dict[str, Any]:
    schema = str(data["schema"])
    out = {}
    out["FRA"] = _json(
        fed.cli(
            "FRA",
            "enroll",
            str(data["FRA"]),
            "--dataset",
            "watchlist",
            "--schema",
            schema,
            "--category",
            "watch-list",
            "--reveal-owner",
            "--reveal-category",
            "--linkable",
            "--json",
        )
    )
    out["DEU"] = _json(
        fed.cli(
            "DEU",
            "enroll",
            str(data["DEU"]),
            "--dataset",
            "stolen",
            "--schema",
            schema,
            "--category",
            "stolen-passports",
            "--reveal-category",
            "--json",
        )
    )
    out["BRA"] = _json(
        fed.cli(
            "BRA",
            "enroll",
            str(data["BRA"]),
            "--dataset",
            "watchlist",
            "--schema",
            schema,
            "--linkable",
            "--reveal-owner",
            "--json",
        )
    )
    return out


def query(fed: LocalFederation, code: str, *args: str) -> list[dict[str, Any]]:
    matches: list[dict[str, Any]] = _json(fed.cli(code, "query", *args, "--json"))["matches"]
    return matches


def test_enrollment_summaries(enrolled: dict[str, Any]) -> None:
    assert enrolled["FRA"]["accepted"] == 40 and enrolled["FRA"]["rejected"] == 0
    assert enrolled["FRA"]["version"] == 1
    assert enrolled["DEU"]["keys_by_type"]["passport"] == 40
    # BRA enrolled after FRA; both linkable, with Hans in both: a standing match.
    assert enrolled["BRA"]["new_standing_matches"] >= 1


def test_hits_across_bureaus_with_policy_masking(
    fed: LocalFederation, enrolled: dict[str, Any]
) -> None:
    matches = query(fed, "USA", "--passport", "FRA:12 AB-34567")
    by_category = {m["category"]: m for m in matches}
    assert set(by_category) == {"watch-list", "stolen-passports"}
    assert by_category["watch-list"]["owner"] == "FRA"  # FRA reveals its owner
    assert by_category["stolen-passports"]["owner"] is None  # DEU does not
    assert all(m["strength"] == "exact" and m["matched_on"] == "passport" for m in matches)
    assert len({m["match_id"] for m in matches}) == 2


def test_no_hit_is_an_empty_list(fed: LocalFederation, enrolled: dict[str, Any]) -> None:
    result = fed.cli("USA", "query", "--passport", "USA:000000001", "--json")
    assert result.returncode == 0
    assert _json(result) == {"matches": []}


def test_own_datasets_are_not_reported(fed: LocalFederation, enrolled: dict[str, Any]) -> None:
    matches = query(fed, "DEU", "--passport", "FRA:12AB34567")
    assert [m["category"] for m in matches] == ["watch-list"]  # not DEU's own stolen list


def test_exact_and_candidate(fed: LocalFederation, enrolled: dict[str, Any]) -> None:
    exact = query(fed, "USA", "--person", "HANS PETER MUELLER", "--dob", "03.02.1980")
    assert {m["strength"] for m in exact} == {"exact", "candidate"}  # person + phonetic keys
    arabic = query(fed, "USA", "--person", "محمد الراشد", "--dob", "1975-05-06")
    assert arabic and {m["strength"] for m in arabic} == {"candidate"}
    assert {m["matched_on"] for m in arabic} == {"person_phonetic"}


def test_standing_match_notices_reach_both_owners(
    fed: LocalFederation, enrolled: dict[str, Any]
) -> None:
    for code, other in (("FRA", "BRA"), ("BRA", "FRA")):
        lines = fed.cli(code, "hits", "--all", "--json").stdout.splitlines()
        notices = [json.loads(line) for line in lines]
        assert notices, code
        assert {n["dataset"] for n in notices} == {"watchlist"}
        # FRA reveals its owner to BRA; BRA does too.
        assert {n["other_owner"] for n in notices} == {other}
    # Reading again without --all shows nothing new.
    assert fed.cli("FRA", "hits", "--json").stdout.strip() == ""


def test_bulk_match_flags_planted_passengers(
    fed: LocalFederation, data: dict[str, Path], enrolled: dict[str, Any]
) -> None:
    out = _json(
        fed.cli("USA", "match", str(data["USA"]), "--schema", str(data["schema"]), "--json")
    )
    assert out["rows"] == 20
    assert {h["record_id"] for h in out["matches"]} == {"PAX-0007", "PAX-0008"}


def test_hub_database_holds_no_identifier(
    fed: LocalFederation, data: dict[str, Path], enrolled: dict[str, Any]
) -> None:
    blob = b"".join(p.read_bytes() for p in fed.hub_database.parent.glob("hub.sqlite*"))
    assert len(blob) > 10_000
    identifiers: set[str] = set()
    for code in ("FRA", "DEU", "BRA"):
        for line in data[code].read_text(encoding="utf-8").splitlines()[1:]:
            for value in line.split(",")[1:]:
                if len(value) >= 6:
                    identifiers.add(value)
    assert len(identifiers) > 100
    leaked = [v for v in identifiers if v.encode() in blob or v.upper().encode() in blob]
    assert leaked == []


def test_enrolling_an_existing_dataset_needs_replace(
    fed: LocalFederation, data: dict[str, Path], enrolled: dict[str, Any]
) -> None:
    result = fed.cli(
        "DEU",
        "enroll",
        str(data["DEU"]),
        "--dataset",
        "stolen",
        "--schema",
        str(data["schema"]),
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("ALREADY_EXISTS")
    assert "--replace" in result.stderr or "replace" in result.stderr


def test_atomic_replace_and_removal(
    fed: LocalFederation, data: dict[str, Path], enrolled: dict[str, Any]
) -> None:
    schema = str(data["schema"])
    smaller = fed.root / "data" / "deu-v2.csv"
    lines = data["DEU"].read_text(encoding="utf-8").splitlines()
    smaller.write_text(
        "\n".join(lines[:5]) + "\n", encoding="utf-8"
    )  # header + 4 rows, no stolen FRA
    out = _json(
        fed.cli(
            "DEU",
            "enroll",
            str(smaller),
            "--dataset",
            "stolen",
            "--schema",
            schema,
            "--category",
            "stolen-passports",
            "--reveal-category",
            "--replace",
            "--json",
        )
    )
    assert out["version"] == 2 and out["accepted"] == 4
    assert [m["category"] for m in query(fed, "USA", "--passport", "FRA:12AB34567")] == [
        "watch-list"
    ]
    # Remove Hans from FRA's watch list by record id: he stops matching at once.
    removed = _json(
        fed.cli("FRA", "remove", "--dataset", "watchlist", "--record-id", "FRA-HPM", "--json")
    )
    assert removed["removed_keys"] >= 3 and removed["unknown"] == []
    assert query(fed, "USA", "--passport", "FRA:12AB34567") == []


def test_failed_enrollment_leaves_previous_version(
    fed: LocalFederation, data: dict[str, Path], enrolled: dict[str, Any]
) -> None:
    before = query(fed, "USA", "--person", "Mohammed Al-Rashid", "--dob", "1975-05-06")
    assert before
    bad_schema = fed.root / "data" / "bad.toml"
    bad_schema.write_text('format = "csv"\nid = "no_such_column"\n[fields]\nname = "name"\n')
    result = fed.cli(
        "FRA",
        "enroll",
        str(data["FRA"]),
        "--dataset",
        "watchlist",
        "--schema",
        str(bad_schema),
        "--replace",
        check=False,
    )
    assert result.returncode == 1 and "no_such_column" in result.stderr
    after = query(fed, "USA", "--person", "Mohammed Al-Rashid", "--dob", "1975-05-06")
    assert _without_ids(after) == _without_ids(before)


def _without_ids(matches: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted((m["matched_on"], m["strength"], m["category"], m["owner"]) for m in matches)


def test_bad_query_input_names_the_field(fed: LocalFederation, enrolled: dict[str, Any]) -> None:
    result = fed.cli("USA", "query", "--passport", "ZZZ:123", check=False)
    assert result.returncode == 1
    assert "INVALID_ARGUMENT" in result.stderr and "passport" in result.stderr


def test_hub_refuses_missing_or_foreign_certificates(fed: LocalFederation, tmp_path: Path) -> None:
    address = pki.load_directory(
        fed.federation / "directory.json", fed.federation / "ca" / "ca.crt"
    ).hub_address
    ca = (fed.federation / "ca" / "ca.crt").read_bytes()
    # No client certificate at all.
    with grpc.secure_channel(
        address, grpc.ssl_channel_credentials(root_certificates=ca)
    ) as channel:
        with pytest.raises(grpc.RpcError) as info:
            hub_pb2_grpc.HubStub(channel).GetStatus(hub_pb2.GetStatusRequest(), timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    # A certificate from another CA that claims to be FRA.
    pki.init_federation(tmp_path, "rogue")
    rogue = pki.TlsFiles.in_folder(pki.issue_bureau(tmp_path, "FRA"))
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=rogue.key.read_bytes(),
        certificate_chain=rogue.cert.read_bytes(),
    )
    with grpc.secure_channel(address, creds) as channel:
        with pytest.raises(grpc.RpcError) as info:
            hub_pb2_grpc.HubStub(channel).GetStatus(hub_pb2.GetStatusRequest(), timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    # The genuine FRA certificate works, and the hub reads the identity from it.
    genuine = pki.TlsFiles.in_folder(fed.federation / "bureaus" / "FRA")
    with grpc.secure_channel(address, genuine.channel_credentials()) as channel:
        reply = hub_pb2_grpc.HubStub(channel).GetStatus(hub_pb2.GetStatusRequest(), timeout=5)
        assert reply.caller == "FRA"


def test_doctor_reports_a_healthy_installation(fed: LocalFederation) -> None:
    checks = {c["name"]: c for c in _json(fed.cli("FRA", "doctor", "--json"))}
    assert [n for n, c in checks.items() if c["status"] != "ok"] == []
    assert {
        "TLS certificate",
        "bureau keys",
        "custodian share",
        "hub",
        "clock skew",
        "threshold",
    } <= set(checks)
    assert checks["threshold"]["detail"].startswith("3 of 3 custodians answer")
    broken = fed.root / "broken.toml"
    broken.write_text(
        fed.config_path("FRA").read_text().replace('bureau = "FRA"', 'bureau = "DEU"')
    )
    result = fed.cli(None, "doctor", "--config", str(broken), "--json", check=False)
    assert result.returncode == 1
    bad = {c["name"]: c for c in json.loads(result.stdout)}
    assert bad["TLS certificate"]["status"] == "failed"
    assert "names FRA, not DEU" in bad["TLS certificate"]["detail"]


def test_custodian_failover(fed: LocalFederation, enrolled: dict[str, Any]) -> None:
    """Runs last in this module: it stops custodians."""
    fed.stop("BRA")
    matches = query(fed, "USA", "--person", "Mohammed Al-Rashid", "--dob", "1975-05-06")
    assert matches  # FRA + DEU still form a 2-of-3 quorum
    fed.stop("DEU")
    result = fed.cli(
        "USA", "query", "--person", "Mohammed Al-Rashid", "--dob", "1975-05-06", check=False
    )
    assert result.returncode == 1
    assert result.stderr.startswith("UNAVAILABLE")
    assert "DEU" in result.stderr and "BRA" in result.stderr


def test_curious_hub_dictionary_attack(
    fed: LocalFederation, data: dict[str, Path], enrolled: dict[str, Any]
) -> None:
    """With the hub's whole database, a dictionary of 100,000 candidate
    identifiers (every enrolled one included) finds nothing without the key,
    nothing with t - 1 custodian shares, and everything with t shares."""
    import sqlite3

    from bureau_agent import ceremony, ingest
    from psi import oprf, threshold
    from psi.oprf import Mode

    with sqlite3.connect(f"file:{fed.hub_database}?mode=ro", uri=True) as db:
        hub_tags = {bytes(row[0]) for row in db.execute("SELECT tag FROM tags")}
    assert len(hub_tags) > 200
    schema = ingest.Schema.load(data["schema"])
    enrolled_inputs = {
        key.oprf_input
        for code in ("FRA", "DEU", "BRA")
        for row in ingest.read_rows(data[code], schema)
        if isinstance(row, ingest.Accepted)
        for key in row.keys
    }
    filler = (
        f"blindmatch/v1|passport|USA|{i:09d}".encode()
        for i in range(100_000 - len(enrolled_inputs))
    )
    dictionary = [*enrolled_inputs, *filler]
    assert len(dictionary) == 100_000

    directory = pki.load_directory(
        fed.federation / "directory.json", fed.federation / "ca" / "ca.crt"
    )
    shares = [
        ceremony.load_share(ceremony.share_path(fed.federation, 1, c), directory, c).share
        for c in ("FRA", "DEU")
    ]

    def found(key: bytes) -> set[bytes]:
        guesses = (oprf.evaluate(key, x, Mode.VOPRF)[:16] for x in dictionary)
        return {tag for tag in guesses if tag in hub_tags}

    # The hub's own guesses: plain hashes of every candidate.
    import hashlib

    assert not any(hashlib.sha512(x).digest()[:16] in hub_tags for x in dictionary)
    assert found(threshold.recover_key(shares[:1])) == set()  # t - 1 = 1 share
    # t = 2 shares: the coalition recovers every tag the hub holds (showing
    # the attack itself works, so the two empty results above mean something).
    assert found(threshold.recover_key(shares)) == hub_tags
