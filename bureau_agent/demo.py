"""`blindmatch demo`: a federation of four bureaus on loopback, end to end.

Hub + FRA, DEU, BRA (custodians of a 2-of-3 key) + USA, each a real process
with mutual TLS and its own SQLite files.  Synthetic datasets (watch lists,
stolen passports, a passenger list) are enrolled; the transcript shows exact
and candidate queries, a bulk match, a standing-match notice, custodian
failover, and that the hub's database holds no identifier.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bureau_agent.localfed import LocalFederation

__all__ = ["run_demo", "write_demo_data"]

Say = Callable[..., None]

FIRST = [
    "Anna",
    "Luca",
    "Marie",
    "Jonas",
    "Sofia",
    "Mateo",
    "Elena",
    "Noah",
    "Lea",
    "Omar",
    "Ines",
    "Karl",
    "Yara",
    "Pedro",
    "Mila",
    "Ivan",
    "Nora",
    "Tariq",
    "Clara",
    "Hugo",
]
LAST = [
    "Schmidt",
    "Dubois",
    "Silva",
    "Rossi",
    "Novak",
    "Kowalski",
    "Haddad",
    "Jensen",
    "Moreau",
    "Costa",
    "Weber",
    "Petrov",
    "Nakamura",
    "Garcia",
    "Lindqvist",
    "Horvat",
    "Okafor",
    "Yilmaz",
]
HEADER = ["case_id", "name", "dob", "passport", "passport_issuer", "phone", "email"]

SCHEMA = """format = "csv"
id = "case_id"
date_order = "DMY"

[fields]
name = "name"
dob = "dob"
passport = "passport"
passport_issuer = "passport_issuer"
phone = "phone"
email = "email"
"""

# The planted people that make the story.
HANS = {
    "name": "Müller, Hans-Peter",
    "dob": "1980-02-03",
    "passport": "12AB34567",
    "passport_issuer": "FRA",
    "phone": "+33 6 12 34 56 78",
    "email": "",
}
MOHAMMED = {
    "name": "Mohammed Al-Rashid",
    "dob": "1975-05-06",
    "passport": "",
    "passport_issuer": "",
    "phone": "",
    "email": "m.alrashid@example.org",
}


def _random_people(rng: random.Random, n: int, issuer: str, prefix: str) -> list[dict[str, str]]:
    people = []
    for i in range(n):
        people.append(
            {
                "case_id": f"{prefix}-{i:05d}",
                "name": f"{rng.choice(FIRST)} {rng.choice(LAST)}",
                "dob": f"{rng.randint(1940, 2005)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                "passport": f"{rng.randint(10, 99)}{rng.choice('ABCDEFGH')}{rng.randint(100000, 999999)}",
                "passport_issuer": issuer,
                "phone": "",
                "email": "",
            }
        )
    return people


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=HEADER)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_demo_data(folder: Path, *, size: int = 400, seed: int = 7) -> dict[str, Path]:
    """Synthetic bureau files with planted overlaps; returns their paths and the schema."""
    rng = random.Random(seed)  # noqa: S311 - synthetic demo data, not a secret
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "schema.toml").write_text(SCHEMA)
    fra = _random_people(rng, size, "FRA", "FRA")
    fra[10] = {"case_id": "FRA-HPM", **HANS}
    fra[11] = {"case_id": "FRA-MAR", **MOHAMMED}
    deu = _random_people(rng, size, "DEU", "DEU")
    deu[5] = {
        "case_id": "DEU-STOLEN-1",
        "name": "",
        "dob": "",
        "passport": "12 AB-34567",
        "passport_issuer": "fr",
        "phone": "",
        "email": "",
    }
    bra = _random_people(rng, size, "BRA", "BRA")
    bra[3] = {
        "case_id": "BRA-HPM",
        **HANS,
        "name": "HANS PETER MUELLER",
        "dob": "03.02.1980",
        "passport": "",
        "passport_issuer": "",
        "phone": "",
    }
    usa = _random_people(rng, size // 2, "USA", "PAX")
    usa[7] = {"case_id": "PAX-0007", **HANS, "name": "Hans Peter Muller", "passport": "12AB34567"}
    usa[8] = {
        "case_id": "PAX-0008",
        "name": "محمد الراشد",
        "dob": "06/05/1975",
        "passport": "",
        "passport_issuer": "",
        "phone": "",
        "email": "",
    }
    return {
        "schema": folder / "schema.toml",
        "FRA": _write(folder / "fra-watchlist.csv", fra),
        "DEU": _write(folder / "deu-stolen-passports.csv", deu),
        "BRA": _write(folder / "bra-watchlist.csv", bra),
        "USA": _write(folder / "usa-passengers.csv", usa),
    }


def run_demo(say: Say, *, keep: Path | None = None, size: int = 400) -> bool:
    """Run the whole story; returns True when every check held."""
    started = time.monotonic()
    root = keep or Path(tempfile.mkdtemp(prefix="blindmatch-demo-"))
    checks: list[tuple[str, bool]] = []

    def check(label: str, ok: bool) -> None:
        checks.append((label, ok))
        say(f"  {'✔' if ok else '✘'} {label}", "green" if ok else "bold red")

    fed = LocalFederation(root, ["FRA", "DEU", "BRA", "USA"], ["FRA", "DEU", "BRA"], threshold=2)
    say("== Federation", "bold")
    fed.create()
    say(f"  CA, certificates and signed directory in {fed.federation}")
    say("  key ceremony: epoch 1, 2-of-3 among FRA, DEU, BRA (Feldman commitments published)")
    data = write_demo_data(root / "data", size=size)
    try:
        with fed.running():
            say(f"  hub and 4 bureau agents running ({time.monotonic() - started:.1f} s)")
            schema = str(data["schema"])

            say("== Enrollment (file -> normalize -> blind -> 2 custodians -> hub)", "bold")
            plans = [
                (
                    "FRA",
                    "watchlist",
                    "watch-list",
                    ["--reveal-owner", "--reveal-category", "--linkable"],
                ),
                ("DEU", "stolen-passports", "stolen-passports", ["--reveal-category"]),
                ("BRA", "watchlist", "watch-list", ["--reveal-owner", "--linkable"]),
            ]
            for code, dataset, category, flags in plans:
                out = json.loads(
                    fed.cli(
                        code,
                        "enroll",
                        str(data[code]),
                        "--dataset",
                        dataset,
                        "--schema",
                        schema,
                        "--category",
                        category,
                        *flags,
                        "--json",
                    ).stdout
                )
                say(
                    f"  {code} {dataset}: {out['accepted']} records, {out['keys']} keys, "
                    f"{out['rejected']} rejected, {out['seconds']} s"
                    + (
                        f", {out['new_standing_matches']} new standing match(es)"
                        if out["new_standing_matches"]
                        else ""
                    )
                )

            say("== Standing matches (both datasets linkable)", "bold")
            for code in ("FRA", "BRA"):
                lines = fed.cli(code, "hits", "--json").stdout.splitlines()
                notices = [json.loads(line) for line in lines]
                for n in notices:
                    say(
                        f"  {code} notified: {n['strength']} match on {n['matched_on']} with {n['other_owner'] or 'a bureau'}"
                    )
                check(f"{code} received a standing-match notice", len(notices) >= 1)

            say("== Queries by a USA analyst", "bold")
            exact = json.loads(
                fed.cli("USA", "query", "--passport", "FRA:12AB-34567", "--json").stdout
            )
            for m in exact["matches"]:
                say(
                    f"  passport FRA:12AB-34567 -> {m['strength']} hit on {m['matched_on']}, category {m['category']}, owner {m['owner']}"
                )
            check(
                "passport query hits FRA's watch list and DEU's stolen passports",
                len(exact["matches"]) == 2,
            )
            person = json.loads(
                fed.cli(
                    "USA", "query", "--person", "HANS PETER MÜLLER", "--dob", "1980-02-03", "--json"
                ).stdout
            )
            strengths = sorted({m["strength"] for m in person["matches"]})
            say(
                f"  person 'HANS PETER MÜLLER' 1980-02-03 -> {len(person['matches'])} hit(s): {strengths}"
            )
            check("a name in another format is an exact hit", "exact" in strengths)
            arabic = json.loads(
                fed.cli(
                    "USA", "query", "--person", "محمد الراشد", "--dob", "1975-05-06", "--json"
                ).stdout
            )
            say(
                f"  person 'محمد الراشد' 1975-05-06 -> {[m['strength'] for m in arabic['matches']]}"
            )
            check(
                "the Arabic-script name is a candidate (not exact) hit",
                bool(arabic["matches"])
                and all(m["strength"] == "candidate" for m in arabic["matches"]),
            )
            none = json.loads(
                fed.cli("USA", "query", "--passport", "USA:999999999", "--json").stdout
            )
            check("an unknown passport is no hit", none["matches"] == [])

            say("== Bulk match of USA's passenger list", "bold")
            bulk = json.loads(
                fed.cli("USA", "match", str(data["USA"]), "--schema", schema, "--json").stdout
            )
            flagged = sorted({h["record_id"] for h in bulk["matches"]})
            say(
                f"  {bulk['rows']} passengers, {len(bulk['matches'])} hit(s) on {flagged} in {bulk['seconds']} s"
            )
            check("the planted passengers are flagged", {"PAX-0007", "PAX-0008"} <= set(flagged))

            say("== Disclosure: USA asks FRA for the record behind its hit", "bold")
            fra_hit = next(m for m in exact["matches"] if m["owner"] == "FRA")
            asked = json.loads(
                fed.cli(
                    "USA",
                    "disclosure",
                    "request",
                    fra_hit["match_id"],
                    "--purpose",
                    "case 2026/118: traveller on a watch list",
                    "--legal-basis",
                    "bilateral police cooperation agreement, art. 7",
                    "--json",
                ).stdout
            )
            say(f"  USA signed request {asked['request_id']} ({asked['status']})")
            incoming = [
                json.loads(line)
                for line in fed.cli(
                    "FRA", "disclosure", "list", "--incoming", "--json"
                ).stdout.splitlines()
            ]
            case = next(c for c in incoming if c["request_id"] == asked["request_id"])
            say(
                f"  FRA officer sees: from {case['requester']}, purpose {case['purpose']!r}, record {case['dataset']}/{case['record_id']} (matched on {case['matched_on']})"
            )
            fed.cli(
                "FRA",
                "disclosure",
                "approve",
                asked["request_id"],
                "--fields",
                "name,dob",
                "--json",
            )
            opened = json.loads(
                fed.cli("USA", "disclosure", "show", asked["request_id"], "--json").stdout
            )
            say(
                f"  USA opens (ML-KEM-768 + X25519 HPKE, FRA's signature verified): {opened['record']}"
            )
            check(
                "the approved fields reach USA end to end, signed by FRA",
                opened["status"] == "approved"
                and opened["verified"]
                and opened["record"].get("dob") == "1980-02-03",
            )

            say("== Audit: every bureau checks the hub's signed log", "bold")
            for code in ("USA", "FRA"):
                report = json.loads(fed.cli(code, "audit", "verify", "--json", check=False).stdout)
                say(
                    f"  {code}: log of {report['tree_size']} entries, {report['own_events_verified']}/{report['own_events']} own events included unaltered, witnesses {report['witnesses']}"
                )
                check(f"{code}'s audit verification passes", report["ok"])

            say("== Custodian failover", "bold")
            fed.stop("BRA")
            after = json.loads(
                fed.cli("USA", "query", "--passport", "FRA:12AB34567", "--json").stdout
            )
            check("with BRA's custodian down, FRA + DEU still answer", len(after["matches"]) == 2)
            fed.stop("DEU")
            failed = fed.cli("USA", "query", "--passport", "FRA:12AB34567", check=False)
            say(f"  with two custodians down: {failed.stderr.strip()[:160]}")
            check(
                "with fewer than t custodians the query fails with UNAVAILABLE",
                failed.returncode != 0 and "UNAVAILABLE" in failed.stderr,
            )

        say("== What the hub stored", "bold")
        blob = fed.hub_database.read_bytes()
        for wal in fed.hub_database.parent.glob("hub.sqlite*"):
            blob += wal.read_bytes()
        leaked = [
            s for s in ("Hans", "MUELLER", "12AB34567", "Rashid", "alrashid") if s.encode() in blob
        ]
        check(
            f"the hub's database holds no identifier and no disclosed value ({len(blob):,} bytes searched)",
            not leaked,
        )
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
    passed = sum(ok for _, ok in checks)
    say(f"== {passed}/{len(checks)} checks passed in {time.monotonic() - started:.1f} s", "bold")
    return passed == len(checks)
