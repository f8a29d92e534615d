"""End to end: consent-gated disclosure and the audit log, with real processes.

FRA owns a watch list (owner hidden by policy); USA gets hits and asks for
disclosure; FRA's officer approves one request and denies another; DEU
tries what it must not.  Then the hub's store is tampered with and forked
between runs, and `audit verify` must catch it.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from bureau_agent.demo import write_demo_data
from bureau_agent.localfed import LocalFederation

pytestmark = pytest.mark.e2e


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    root = tmp_path_factory.mktemp("disclosure")
    federation = LocalFederation(
        root, ["FRA", "DEU", "BRA", "USA"], ["FRA", "DEU", "BRA"], threshold=2
    )
    federation.create()
    with federation.running():
        data = write_demo_data(root / "data", size=30)
        federation.cli(
            "FRA",
            "enroll",
            str(data["FRA"]),
            "--dataset",
            "watchlist",
            "--schema",
            str(data["schema"]),
            "--category",
            "watch-list",
            "--json",
        )
        yield federation


def hans_match(fed: LocalFederation) -> str:
    matches = _json(fed.cli("USA", "query", "--passport", "FRA:12AB34567", "--json"))["matches"]
    assert len(matches) == 1 and matches[0]["owner"] is None  # FRA's policy hides the owner
    match_id: str = matches[0]["match_id"]
    return match_id


def request(fed: LocalFederation, code: str, match_id: str, *, check: bool = True) -> Any:
    result = fed.cli(
        code,
        "disclosure",
        "request",
        match_id,
        "--purpose",
        "case 2026/118 border check",
        "--legal-basis",
        "Art. 7 Prüm decision",
        "--json",
        check=check,
    )
    return _json(result) if check else result


@pytest.fixture(scope="module")
def approved(fed: LocalFederation) -> dict[str, Any]:
    case = request(fed, "USA", hans_match(fed))
    assert case["status"] == "pending" and case["direction"] == "outgoing"
    incoming = [
        json.loads(line)
        for line in fed.cli("FRA", "disclosure", "list", "--incoming", "--json").stdout.splitlines()
    ]
    mine = next(c for c in incoming if c["request_id"] == case["request_id"])
    assert mine["requester"] == "USA" and mine["verified"]
    assert mine["purpose"] == "case 2026/118 border check"
    assert mine["legal_basis"] == "Art. 7 Prüm decision"
    assert mine["record_id"] == "FRA-HPM" and mine["matched_on"] == "passport"
    assert mine["record"]["name"] == "Müller, Hans-Peter"  # the owner sees its own record
    decided = _json(
        fed.cli(
            "FRA", "disclosure", "approve", case["request_id"], "--fields", "name,dob", "--json"
        )
    )
    assert decided["status"] == "approved"
    shown: dict[str, Any] = _json(
        fed.cli("USA", "disclosure", "show", case["request_id"], "--json")
    )
    return shown


def test_requester_opens_the_approved_record(approved: dict[str, Any]) -> None:
    assert approved["status"] == "approved" and approved["verified"]
    assert approved["owner"] == "FRA"  # consent reveals the owner
    assert approved["record"] == {"dob": "1980-02-03", "name": "Müller, Hans-Peter"}


def test_denial_with_hidden_owner(fed: LocalFederation) -> None:
    case = request(fed, "USA", hans_match(fed))
    fed.cli("FRA", "disclosure", "deny", case["request_id"], "--reason", "ongoing covert operation")
    shown = _json(fed.cli("USA", "disclosure", "show", case["request_id"], "--json"))
    assert shown["status"] == "denied"
    assert shown["reason"] == "ongoing covert operation"
    assert shown["owner"] is None and shown["record"] == {}


def test_deciding_twice_is_refused(fed: LocalFederation, approved: dict[str, Any]) -> None:
    result = fed.cli(
        "FRA",
        "disclosure",
        "deny",
        approved["request_id"],
        "--reason",
        "changed my mind",
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("FAILED_PRECONDITION") and "approved" in result.stderr


def test_other_bureaus_are_refused(fed: LocalFederation, approved: dict[str, Any]) -> None:
    # DEU did not receive USA's match.
    denied = request(fed, "DEU", approved["match_id"], check=False)
    assert denied.returncode == 1 and denied.stderr.startswith("PERMISSION_DENIED")
    # DEU cannot read USA's case nor decide FRA's incoming one.
    for args in (
        ("show", approved["request_id"]),
        ("deny", approved["request_id"], "--reason", "x"),
    ):
        result = fed.cli("DEU", "disclosure", *args, check=False)
        assert result.returncode == 1 and result.stderr.startswith("PERMISSION_DENIED"), args


def test_hub_never_stores_a_disclosed_value(fed: LocalFederation, approved: dict[str, Any]) -> None:
    blob = b"".join(p.read_bytes() for p in fed.hub_database.parent.glob("hub.sqlite*"))
    blob += fed.log_path("hub").read_bytes()
    for value in approved["record"].values():
        assert value.encode() not in blob
    assert "Müller".encode() not in blob and b"1980-02-03" not in blob


def test_audit_verify_passes_for_honest_hub(fed: LocalFederation, approved: dict[str, Any]) -> None:
    for code in ("USA", "FRA"):
        report = _json(fed.cli(code, "audit", "verify", "--json"))
        assert report["ok"], report["problems"]
        assert report["own_events"] >= 2 and report["own_events_verified"] == report["own_events"]
        assert report["tree_size"] > 5


def test_a_forked_log_is_caught_by_a_witness(
    fed: LocalFederation, approved: dict[str, Any]
) -> None:
    """The hub is restored from a copy and shows USA a log that differs from
    the one FRA (a custodian, hence a witness) saw."""
    fed.stop("hub")
    snapshot = fed.root / "hub-snapshot"
    shutil.rmtree(snapshot, ignore_errors=True)
    snapshot.mkdir()
    for p in fed.hub_database.parent.glob("hub.sqlite*"):
        shutil.copy2(p, snapshot / p.name)
    fed.start_hub()
    fed.cli("FRA", "query", "--passport", "USA:000000007", "--json")  # FRA sees a longer log
    fed.cli("FRA", "audit", "verify", "--json", check=False)  # FRA stores the head it saw
    fed.stop("hub")
    for p in fed.hub_database.parent.glob("hub.sqlite*"):
        p.unlink()
    for p in snapshot.iterdir():
        shutil.copy2(p, fed.hub_database.parent / p.name)
    fed.start_hub()
    fed.cli("USA", "query", "--passport", "USA:000000009", "--json")  # same size, other entry
    result = fed.cli("USA", "audit", "verify", "--json", check=False)
    report = json.loads(result.stdout)
    assert result.returncode == 1
    assert any("forked" in p and "FRA" in p for p in report["problems"]), report


def test_a_rewritten_entry_is_caught(fed: LocalFederation, approved: dict[str, Any]) -> None:
    """Runs last: it rewrites one of USA's query entries in the hub's store."""
    fed.stop("hub")
    with sqlite3.connect(fed.hub_database) as db:
        (idx, entry) = db.execute(
            "SELECT idx, entry FROM audit_leaves WHERE CAST(entry AS TEXT) LIKE ? "
            "AND CAST(entry AS TEXT) LIKE ? ORDER BY idx LIMIT 1",
            ('%"kind":"query"%', '%"requester":"USA"%'),
        ).fetchone()
        forged = bytes(entry).replace(b'"hits":1', b'"hits":0')
        assert forged != bytes(entry)
        db.execute("UPDATE audit_leaves SET entry = ? WHERE idx = ?", (forged, idx))
    fed.start_hub()
    result = fed.cli("USA", "audit", "verify", "--json", check=False)
    report = json.loads(result.stdout)
    assert result.returncode == 1 and not report["ok"]
    assert any("does not extend" in p or f"entry {idx}" in p for p in report["problems"]), report
