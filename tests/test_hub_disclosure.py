"""Consent-gated disclosure through the hub: the pure state machine and
views (`hub.disclosure`), the store (parametrized by implementation), and
the real Disclosure service on 127.0.0.1:0 with certificates and keys made
by `bureau_agent.pki`, over a real SQLite file or PostgreSQL database."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blindmatch.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    common_pb2,
    disclosure_pb2,
    disclosure_pb2_grpc,
    hub_pb2,
)
from bureau_agent import pki
from hub import disclosure
from hub.config import HubConfig
from hub.disclosure import Direction, Event, Status
from hub.errors import AlreadyExistsError, FailedPreconditionError, PermissionDeniedError
from hub.store import HubStore
from psi import merkle
from psi.audit import EntryKind, decode_entry
from psi.disclosure import (
    DisclosureDecision,
    DisclosureRequest,
    HpkePrivateKey,
    hpke_private_key,
    new_request_id,
    open_record,
    seal_record,
    sign_decision,
    sign_request,
    verify_decision,
)
from psi.errors import InvalidInputError
from psi.identifiers import KeyType
from tests.pg import PostgresServer
from tests.stores import StoreBackend
from tests.test_hub_service import (
    BUREAUS,
    Federation,
    Hub,
    enroll,
    fails,
    keys,
    query,
    run_with_hub,
    shared,
)
from tests.test_hub_store import enroll as store_enroll
from tests.test_hub_store import keys as store_keys
from tests.test_hub_store import queries, run

DAY_MS = 86_400_000
INCOMING = disclosure_pb2.ListDisclosuresRequest.DIRECTION_INCOMING
OUTGOING = disclosure_pb2.ListDisclosuresRequest.DIRECTION_OUTGOING
BOTH = disclosure_pb2.ListDisclosuresRequest.DIRECTION_BOTH
PENDING = disclosure_pb2.DISCLOSURE_STATUS_PENDING
APPROVED = disclosure_pb2.DISCLOSURE_STATUS_APPROVED
DENIED = disclosure_pb2.DISCLOSURE_STATUS_DENIED
EXPIRED = disclosure_pb2.DISCLOSURE_STATUS_EXPIRED
RECORD = {
    "name": "Zorglub, Jean-Baptiste Aurélien",
    "born": "1970-04-01",
    "passport": "FRA 9QX81234TT",
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- keys and signed messages ----------------------------------------------------------


@dataclass(frozen=True)
class BureauKeys:
    code: str
    signing: Ed25519PrivateKey
    hpke: HpkePrivateKey


def bureau_keys(code: str, folder: Path) -> BureauKeys:
    return BureauKeys(
        code,
        pki.load_ed25519_key(folder / "signing.key"),
        hpke_private_key(
            (folder / "hpke-mlkem768.key").read_bytes(), (folder / "hpke-x25519.key").read_bytes()
        ),
    )


def make_request(
    requester: str,
    match_id: bytes,
    *,
    lifetime_ms: int = 30 * DAY_MS,
    created_ms: int | None = None,
) -> DisclosureRequest:
    created = now_ms() if created_ms is None else created_ms
    return DisclosureRequest(
        request_id=new_request_id(),
        match_id=match_id,
        requester=requester,
        purpose="investigation 2024/117: identify the holder",
        legal_basis="art. 6 of the federation treaty",
        created_ms=created,
        expires_ms=created + lifetime_ms,
    )


def signed(keys: BureauKeys, request: DisclosureRequest) -> disclosure_pb2.SignedDisclosureRequest:
    return disclosure_pb2.SignedDisclosureRequest(
        request=request.encode(), signature=sign_request(keys.signing, request)
    )


def approval(
    owner: BureauKeys,
    requester: BureauKeys,
    request: DisclosureRequest,
    record: Mapping[str, str] = RECORD,
) -> disclosure_pb2.SignedDecision:
    sealed = seal_record(
        record,
        requester.hpke.public_key(),
        request_id=request.request_id,
        requester=requester.code,
        owner=owner.code,
    )
    decision = DisclosureDecision.approve(
        request, owner=owner.code, fields=record, sealed=sealed, decided_ms=now_ms()
    )
    return disclosure_pb2.SignedDecision(
        decision=decision.encode(), signature=sign_decision(owner.signing, decision), sealed=sealed
    )


def denial(
    owner: BureauKeys, request: DisclosureRequest, reason: str = "ongoing operation"
) -> disclosure_pb2.SignedDecision:
    decision = DisclosureDecision.deny(
        request, owner=owner.code, reason=reason, decided_ms=now_ms()
    )
    return disclosure_pb2.SignedDecision(
        decision=decision.encode(), signature=sign_decision(owner.signing, decision)
    )


# -- the pure state machine and views -----------------------------------------------------


def test_transitions_only_from_pending() -> None:
    rid = bytes(16)
    assert disclosure.next_status(Status.PENDING, Event.APPROVE, rid) is Status.APPROVED
    assert disclosure.next_status(Status.PENDING, Event.DENY, rid) is Status.DENIED
    assert disclosure.next_status(Status.PENDING, Event.EXPIRE, rid) is Status.EXPIRED
    for done in (Status.APPROVED, Status.DENIED):
        for event in Event:
            with pytest.raises(FailedPreconditionError, match="already decided"):
                disclosure.next_status(done, event, rid)
    for event in Event:
        with pytest.raises(FailedPreconditionError, match="expired"):
            disclosure.next_status(Status.EXPIRED, event, rid)
    assert [s.value for s in Status] == [PENDING, APPROVED, DENIED, EXPIRED]


def sample_case(status: Status, *, reveal_owner: bool = False) -> disclosure.Case:
    request = make_request("DEU", bytes(range(16)))
    owner = Ed25519PrivateKey.generate()
    decision = b""
    if status is Status.APPROVED:
        decision = DisclosureDecision.approve(
            request, owner="FRA", fields=["name"], sealed=b"ct", decided_ms=1
        ).encode()
    elif status is Status.DENIED:
        decision = DisclosureDecision.deny(request, owner="FRA", reason="no", decided_ms=1).encode()
    return disclosure.Case(
        request_id=request.request_id,
        match_id=request.match_id,
        requester="DEU",
        owner="FRA",
        dataset="wanted",
        handle=b"h" * 16,
        key_type=KeyType.PASSPORT,
        reveal_owner=reveal_owner,
        request=request.encode(),
        request_signature=sign_request(owner, request),
        status=status,
        record_removed=False,
        decision=decision,
        decision_signature=b"s" * 64 if decision else b"",
        sealed=b"ct" if status is Status.APPROVED else b"",
        created_ms=1,
        expires_ms=request.expires_ms,
        request_audit_index=4,
        decision_audit_index=9 if decision else None,
        requester_sequence=3,
        owner_sequence=7,
    )


@pytest.mark.parametrize(
    ("status", "reveal_owner", "owner", "decision", "sealed", "reason", "audit_index"),
    [
        (Status.PENDING, False, None, False, False, "", 4),
        (Status.PENDING, True, "FRA", False, False, "", 4),
        (Status.APPROVED, False, "FRA", True, True, "", 9),
        (Status.DENIED, False, None, False, False, "no", 4),
        (Status.DENIED, True, "FRA", True, False, "no", 9),
        (Status.EXPIRED, False, None, False, False, "", 4),
    ],
    ids=["pending", "pending-revealed", "approved", "denied-hidden", "denied-revealed", "expired"],
)
def test_what_the_requester_sees(
    status: Status,
    reveal_owner: bool,
    owner: str | None,
    decision: bool,
    sealed: bool,
    reason: str,
    audit_index: int,
) -> None:
    case = sample_case(status, reveal_owner=reveal_owner)
    shown = disclosure.view(case, "DEU")
    assert shown.sequence == 3
    assert shown.owner == owner
    assert (shown.dataset, shown.handle, shown.key_type) == ("", b"", None)
    assert bool(shown.decision) is decision and bool(shown.decision_signature) is decision
    assert bool(shown.sealed) is sealed
    assert (shown.denial_reason, shown.audit_index) == (reason, audit_index)
    assert shown.request == case.request and shown.status is status


@pytest.mark.parametrize("status", list(Status))
def test_what_the_owner_sees(status: Status) -> None:
    case = sample_case(status)
    shown = disclosure.view(case, "FRA")
    assert (shown.sequence, shown.owner, shown.dataset, shown.handle) == (
        7,
        "FRA",
        "wanted",
        b"h" * 16,
    )
    assert shown.key_type is KeyType.PASSPORT
    assert shown.sealed == b""  # the owner sealed it; only the requester gets it
    assert shown.decision == case.decision
    with pytest.raises(
        PermissionDeniedError, match=f"no disclosure case {case.request_id.hex()} for ITA"
    ):
        disclosure.view(case, "ITA")


def test_request_checks() -> None:
    now = now_ms()
    good = make_request("DEU", bytes(16), created_ms=now)
    disclosure.check_request(good, "DEU", now_ms=now, max_lifetime_ms=90 * DAY_MS)
    with pytest.raises(PermissionDeniedError, match="names requester DEU, but you are ITA"):
        disclosure.check_request(good, "ITA", now_ms=now, max_lifetime_ms=90 * DAY_MS)
    with pytest.raises(InvalidInputError, match="expires_ms: is in the past"):
        disclosure.check_request(good, "DEU", now_ms=good.expires_ms, max_lifetime_ms=90 * DAY_MS)
    with pytest.raises(InvalidInputError, match="expires_ms: is more than 10 days ahead"):
        disclosure.check_request(good, "DEU", now_ms=now, max_lifetime_ms=10 * DAY_MS)
    with pytest.raises(InvalidInputError, match="created_ms"):
        disclosure.check_request(good, "DEU", now_ms=now - 3_600_000, max_lifetime_ms=90 * DAY_MS)


# -- the store --------------------------------------------------------------------------

OpenStore = Callable[[], Awaitable[HubStore]]


def with_store(open_store: OpenStore, scenario: Callable[[HubStore], Awaitable[None]]) -> None:
    async def main() -> None:
        store = await open_store()
        try:
            await scenario(store)
        finally:
            await store.close()

    run(main())


async def a_match(store: HubStore, owner: str = "FRA", requester: str = "DEU") -> bytes:
    ks = store_keys(1)
    await store_enroll(store, owner, f"w{os.urandom(4).hex()}", ks)
    (hit,) = (await store.query(requester, 1, queries(ks), include_own=False)).hits
    return bytes.fromhex(hit.match_id)


def store_decision(
    request: DisclosureRequest, *, approve: bool
) -> tuple[DisclosureDecision, bytes]:
    if approve:
        sealed = b"\x01\x01 ciphertext"
        return (
            DisclosureDecision.approve(
                request, owner="FRA", fields=["name"], sealed=sealed, decided_ms=1
            ),
            sealed,
        )
    return DisclosureDecision.deny(request, owner="FRA", reason="no", decided_ms=1), b""


def test_store_routes_a_case_through_its_states(open_store: OpenStore) -> None:
    async def scenario(store: HubStore) -> None:
        match_id = await a_match(store)
        request = make_request("DEU", match_id)
        ticket = await store.request_disclosure("DEU", request, b"sig")
        assert (ticket.request_id, ticket.record_removed) == (request.request_id, False)
        with pytest.raises(AlreadyExistsError):
            await store.request_disclosure("DEU", request, b"sig")
        with pytest.raises(PermissionDeniedError, match="was not reported to ITA"):
            await store.request_disclosure("ITA", replace(request, requester="ITA"), b"sig")
        case = await store.disclosure_case("FRA", request.request_id)
        assert (case.status, case.owner, case.requester_sequence, case.owner_sequence) == (
            Status.PENDING, "FRA", 1, 1,
        )  # fmt: skip
        with pytest.raises(PermissionDeniedError):
            await store.disclosure_case("ITA", request.request_id)
        decision, sealed = store_decision(request, approve=True)
        receipt = await store.decide_disclosure("FRA", decision, b"sig", sealed)
        assert receipt.status is Status.APPROVED
        assert receipt.audit_index == ticket.audit_index + 1
        with pytest.raises(FailedPreconditionError, match="already decided"):
            await store.decide_disclosure("FRA", decision, b"sig", sealed)
        page = await store.list_disclosures("DEU", Direction.BOTH, 0, 10)
        assert [(c.status, c.requester_sequence) for c in page.cases] == [(Status.APPROVED, 2)]
        assert page.resume_after == 2
        assert (await store.list_disclosures("DEU", Direction.INCOMING, 0, 10)).cases == ()
        assert (await store.list_disclosures("FRA", Direction.INCOMING, 2, 10)).cases == ()

    with_store(open_store, scenario)


def test_store_expires_pending_cases(open_store: OpenStore) -> None:
    async def scenario(store: HubStore) -> None:
        request = make_request("DEU", await a_match(store), lifetime_ms=150)
        await store.request_disclosure("DEU", request, b"sig")
        waiting = asyncio.create_task(store.wait_for_disclosures("FRA", 1))
        # The expiry task marks it and wakes the owner, without any read.
        assert await asyncio.wait_for(waiting, 5) is True
        case = await store.disclosure_case("DEU", request.request_id)
        assert (case.status, case.requester_sequence, case.owner_sequence) == (Status.EXPIRED, 2, 2)
        decision, sealed = store_decision(request, approve=False)
        with pytest.raises(FailedPreconditionError, match="expired"):
            await store.decide_disclosure("FRA", decision, b"sig", sealed)
        assert await store.expire_disclosures() == 0

    with_store(open_store, scenario)


def test_store_cases_survive_a_restart(open_store: OpenStore) -> None:
    async def first() -> tuple[DisclosureRequest, int]:
        store = await open_store()
        try:
            request = make_request("DEU", await a_match(store), lifetime_ms=DAY_MS)
            ticket = await store.request_disclosure("DEU", request, b"sig")
            return request, ticket.audit_index
        finally:
            await store.close()

    request, index = run(first())

    async def second(store: HubStore) -> None:
        case = await store.disclosure_case("FRA", request.request_id)
        assert (case.status, case.request_audit_index) == (Status.PENDING, index)
        entry = decode_entry((await store.audit_entries(index, index + 1))[0])
        assert entry.kind is EntryKind.DISCLOSURE_REQUEST
        assert entry["request_digest"] == request.digest()
        # Sequences go on from where they were.
        other = make_request("DEU", case.match_id)
        await store.request_disclosure("DEU", other, b"sig")
        assert (await store.disclosure_case("DEU", other.request_id)).requester_sequence == 2

    with_store(open_store, second)


def test_sqlite_schema_1_database_is_upgraded(tmp_path: Path) -> None:
    ks = store_keys(2)
    open_store = StoreBackend("sqlite", str(tmp_path / "hub.sqlite"))

    async def before() -> list[bytes]:
        store = await open_store()
        try:
            await store_enroll(store, "FRA", "w", ks)
            result = await store.query("DEU", 1, queries(ks), include_own=False)
            await store.update_dataset("FRA", "w", 1, [], [ks[0].handle])
            return [
                bytes.fromhex(h.match_id) for h in sorted(result.hits, key=lambda h: h.query_index)
            ]
        finally:
            await store.close()

    matches = run(before())
    # Turn the file into what schema 1 left: no audit log, no disclosures, no match tags.
    with sqlite3.connect(tmp_path / "hub.sqlite") as conn:
        conn.executescript(
            "DROP TABLE audit_leaves; DROP TABLE disclosures; DROP TABLE disclosure_sequences; "
            "ALTER TABLE matches DROP COLUMN tag; PRAGMA user_version = 1;"
        )
    conn.close()

    async def after(store: HubStore) -> None:
        assert await store.audit_head() == (0, merkle.EMPTY_ROOT)  # the log starts now
        removed = []
        for match_id in matches:  # made before schema 2: a tombstone still tells
            ticket = await store.request_disclosure("DEU", make_request("DEU", match_id), b"sig")
            removed.append(ticket.record_removed)
        assert removed == [True, False]
        assert (await store.audit_head())[0] == 2

    with_store(open_store, after)
    with sqlite3.connect(tmp_path / "hub.sqlite") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 4
        assert "tag" in {row[1] for row in conn.execute("PRAGMA table_info(matches)")}
    conn.close()


def test_match_ids_made_before_they_were_numbered_still_name_their_matches(
    open_store: StoreBackend,
) -> None:
    """A database from before match ids were encrypted sequence numbers
    (SQLite schema 3, PostgreSQL schema 1) is upgraded on open: the random
    ids it handed out still name their matches, and new matches are
    numbered after the old ones."""
    ks = store_keys(3)

    async def before() -> list[bytes]:
        store = await open_store()
        try:
            await store_enroll(store, "FRA", "w", ks)
            result = await store.query("DEU", 1, queries(ks), include_own=False)
            return [bytes.fromhex(h.match_id) for h in result.hits]
        finally:
            await store.close()

    made = run(before())
    legacy = {old: os.urandom(16) for old in made}
    open_store.forget_match_numbering(legacy)

    async def after(store: HubStore) -> None:
        for match_id in legacy.values():
            ticket = await store.request_disclosure("DEU", make_request("DEU", match_id), b"sig")
            assert ticket.record_removed is False
        # The replaced ids name nothing (and a new key was made).
        with pytest.raises(PermissionDeniedError, match="was not reported to DEU"):
            await store.request_disclosure("DEU", make_request("DEU", made[0]), b"sig")
        fresh = await a_match(store)
        assert fresh not in legacy.values()
        await store.request_disclosure("DEU", make_request("DEU", fresh), b"sig")

    with_store(open_store, after)
    assert open_store.scalar("SELECT max(seq) FROM matches") == 4
    assert sorted(
        bytes(m) for (m,) in open_store.rows("SELECT match_id FROM legacy_match_ids")
    ) == (sorted(legacy.values()))


# -- the service over gRPC ------------------------------------------------------------------


@dataclass(frozen=True)
class Fed:
    federation: Federation
    keys: dict[str, BureauKeys]


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Fed:
    root = tmp_path_factory.mktemp("federation")
    pki.init_federation(root, "disclosure")
    hub_dir = pki.issue_hub(root)
    folders = {code: pki.issue_bureau(root, code) for code in BUREAUS}
    return Fed(
        Federation(root, hub_dir, folders, rogue=hub_dir),
        {code: bureau_keys(code, folder) for code, folder in folders.items()},
    )


@pytest.fixture
def config(fed: Fed, tmp_path: Path, store_backend: StoreBackend) -> HubConfig:
    """A hub that checks signatures against the federation directory."""
    return store_backend.configure(
        HubConfig(
            tls=pki.TlsFiles.in_folder(fed.federation.hub),
            database=tmp_path / "hub.sqlite",
            listen="127.0.0.1:0",
            federation=fed.federation.root,
            grace_period=2.0,
        )
    )


Stubs = dict[str, "disclosure_pb2_grpc.DisclosureAsyncStub"]


def run_disclosure(
    fed: Fed, config: HubConfig, scenario: Callable[[Hub, Stubs], Awaitable[None]]
) -> None:
    async def wrapped(hub: Hub) -> None:
        stubs = {code: disclosure_pb2_grpc.DisclosureStub(ch) for code, ch in hub.channels.items()}
        await scenario(hub, stubs)

    run_with_hub(fed.federation, config, wrapped)


async def hit(hub: Hub, owner_dataset: list[common_pb2.TaggedKey], asker: str = "DEU") -> bytes:
    answer = await query(hub.stubs[asker], owner_dataset)
    (match,) = answer.matches
    return bytes.fromhex(match.match_id)


async def get(stub: disclosure_pb2_grpc.DisclosureAsyncStub, request_id: bytes) -> Any:
    return await stub.Get(disclosure_pb2.GetDisclosureRequest(request_id=request_id), timeout=5)


async def listed(
    stub: disclosure_pb2_grpc.DisclosureAsyncStub, direction: Any = BOTH, after: int = 0
) -> list[disclosure_pb2.DisclosureCase]:
    request = disclosure_pb2.ListDisclosuresRequest(direction=direction, after_sequence=after)
    return [c async for c in stub.List(request, timeout=5)]


def test_approval_reaches_the_requester_sealed(
    fed: Fed, config: HubConfig, store_backend: StoreBackend, request: pytest.FixtureRequest
) -> None:
    fra, deu = fed.keys["FRA"], fed.keys["DEU"]
    ks = keys(5)
    stored: dict[str, bytes] = {}

    async def scenario(hub: Hub, d: Stubs) -> None:
        await enroll(hub.FRA, "wanted", ks, category="fugitives")
        match_id = await hit(hub, ks[2:3])
        incoming = d["FRA"].List(
            disclosure_pb2.ListDisclosuresRequest(direction=INCOMING, follow=True), timeout=20
        )
        outgoing = d["DEU"].List(
            disclosure_pb2.ListDisclosuresRequest(direction=OUTGOING, follow=True), timeout=20
        )
        await asyncio.sleep(0.1)  # both followers are now waiting
        request = make_request("DEU", match_id)
        ticket = await d["DEU"].Request(signed(deu, request), timeout=5)
        assert (ticket.request_id, ticket.expires_unix_ms) == (
            request.request_id,
            request.expires_ms,
        )
        assert not ticket.record_removed

        # The owner's follower gets the case, with its own dataset and record.
        case = await asyncio.wait_for(incoming.read(), 5)
        assert isinstance(case, disclosure_pb2.DisclosureCase)
        assert (case.requester, case.owner, case.dataset, case.handle, case.key_type) == (
            "DEU", "FRA", "wanted", ks[2].handle, common_pb2.KEY_TYPE_PASSPORT,
        )  # fmt: skip
        assert (case.status, case.request, case.audit_index) == (
            PENDING, request.encode(), ticket.audit_index,
        )  # fmt: skip
        assert DisclosureRequest.decode(case.request) == request
        # The requester's view: no owner (hidden by policy), no record handle.
        mine = await asyncio.wait_for(outgoing.read(), 5)
        assert isinstance(mine, disclosure_pb2.DisclosureCase)
        assert not mine.HasField("owner") and (mine.dataset, mine.handle, mine.key_type) == (
            "",
            b"",
            0,
        )

        # The owner approves with a record sealed to the requester.
        decision = approval(fra, deu, request)
        receipt = await d["FRA"].Decide(decision, timeout=5)
        assert (receipt.request_id, receipt.status) == (request.request_id, APPROVED)
        pushed = await asyncio.wait_for(outgoing.read(), 5)
        assert isinstance(pushed, disclosure_pb2.DisclosureCase)
        assert (pushed.status, pushed.owner) == (APPROVED, "FRA")
        assert pushed.sequence > mine.sequence
        incoming.cancel()
        outgoing.cancel()

        got = await get(d["DEU"], request.request_id)
        assert (got.status, got.owner, got.sealed, got.audit_index) == (
            APPROVED, "FRA", decision.sealed, receipt.audit_index,
        )  # fmt: skip
        verify_decision(
            fra.signing.public_key(),
            DisclosureDecision.decode(got.decision),
            got.decision_signature,
            request=request,
            sealed=got.sealed,
        )
        opened = open_record(
            got.sealed, deu.hpke, request_id=request.request_id, requester="DEU", owner="FRA"
        )
        assert opened == RECORD
        assert (await get(d["FRA"], request.request_id)).sealed == b""  # requester only

        # Both steps are in the audit log, without the handle, the record or the purpose.
        span = audit_pb2.GetEntriesRequest(start=ticket.audit_index, end=receipt.audit_index + 1)
        views = {
            code: (await audit_pb2_grpc.AuditLogStub(hub.channels[code]).GetEntries(span)).entries
            for code in ("DEU", "FRA", "ITA")
        }
        # Each party reads only its own step; a bystander reads neither.
        assert views["DEU"][-1] == b"" and views["FRA"][0] == b""
        assert set(views["ITA"]) == {b""}
        entries = [views["DEU"][0], views["FRA"][-1]]
        first, last = decode_entry(entries[0]), decode_entry(entries[-1])
        assert (first.kind, first["requester"], first["match_id"]) == (
            EntryKind.DISCLOSURE_REQUEST, "DEU", match_id,
        )  # fmt: skip
        assert (last.kind, last["outcome"], last["fields"], last["owner"]) == (
            EntryKind.DISCLOSURE_DECISION, "approved", 3, "FRA",
        )  # fmt: skip
        for entry in entries:
            for secret in (ks[2].handle, ks[2].tag):
                assert secret not in entry and secret.hex().encode() not in entry
            assert b"investigation" not in entry
        stored["sealed"] = decision.sealed

    run_disclosure(fed, config, scenario)
    # The hub's files hold the ciphertext, never the plaintext.
    if store_backend.kind == "sqlite":
        paths = list(Path(store_backend.where).parent.glob("hub.sqlite*"))
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        paths = server.database_files(store_backend.where)
    files = b"".join(p.read_bytes() for p in paths)
    assert stored["sealed"] in files
    for value in RECORD.values():
        assert value.encode() not in files
        assert value.encode("utf-16-le") not in files


def test_denial_with_a_hidden_owner_gives_only_the_reason(fed: Fed, config: HubConfig) -> None:
    fra, ita, deu = fed.keys["FRA"], fed.keys["ITA"], fed.keys["DEU"]
    hidden, shown = keys(1), keys(1)

    async def scenario(hub: Hub, d: Stubs) -> None:
        await enroll(hub.FRA, "hidden", hidden)
        await enroll(hub.ITA, "shown", shown, policy_=common_pb2.DatasetPolicy(reveal_owner=True))
        to_fra = make_request("DEU", await hit(hub, hidden))
        to_ita = make_request("DEU", await hit(hub, shown))
        await d["DEU"].Request(signed(deu, to_fra), timeout=5)
        ticket = await d["DEU"].Request(signed(deu, to_ita), timeout=5)
        assert (await get(d["DEU"], to_ita.request_id)).owner == "ITA"  # policy reveals it
        await d["FRA"].Decide(denial(fra, to_fra, "ongoing operation"), timeout=5)
        receipt = await d["ITA"].Decide(denial(ita, to_ita, "not our case"), timeout=5)

        got = await get(d["DEU"], to_fra.request_id)
        assert got.status == DENIED and got.denial_reason == "ongoing operation"
        assert not got.HasField("owner")
        assert (got.decision, got.decision_signature, got.sealed) == (b"", b"", b"")
        owners = await get(d["FRA"], to_fra.request_id)
        assert owners.decision and owners.decision_signature  # its own decision

        revealed = await get(d["DEU"], to_ita.request_id)
        assert (revealed.status, revealed.owner, revealed.denial_reason) == (
            DENIED,
            "ITA",
            "not our case",
        )
        assert revealed.audit_index == receipt.audit_index != ticket.audit_index
        verify_decision(
            ita.signing.public_key(),
            DisclosureDecision.decode(revealed.decision),
            revealed.decision_signature,
            request=to_ita,
        )

    run_disclosure(fed, config, scenario)


def test_only_the_parties_may_request_decide_or_read(fed: Fed, config: HubConfig) -> None:
    fra, deu, ita = fed.keys["FRA"], fed.keys["DEU"], fed.keys["ITA"]
    ks = keys(2)

    async def scenario(hub: Hub, d: Stubs) -> None:
        await enroll(hub.FRA, "w", ks)
        match_id = await hit(hub, ks[:1])
        # A match that DEU received, requested by ITA; and a match that does not exist.
        stolen = await fails(
            d["ITA"].Request(signed(ita, make_request("ITA", match_id)), timeout=5),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        unknown_id = os.urandom(16)
        unknown = await fails(
            d["ITA"].Request(signed(ita, make_request("ITA", unknown_id)), timeout=5),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        assert stolen.replace(match_id.hex(), "<id>") == unknown.replace(unknown_id.hex(), "<id>")
        # In another bureau's name.
        await fails(
            d["ITA"].Request(signed(deu, make_request("DEU", match_id)), timeout=5),
            grpc.StatusCode.PERMISSION_DENIED,
            "names requester DEU, but you are ITA",
        )
        request = make_request("DEU", match_id)
        await d["DEU"].Request(signed(deu, request), timeout=5)
        # Deciding another bureau's case (in its own name or the owner's), or one's own request.
        await fails(
            d["ITA"].Decide(denial(ita, request), timeout=5),
            grpc.StatusCode.PERMISSION_DENIED,
            f"no disclosure case {request.request_id.hex()} for ITA",
        )
        await fails(
            d["ITA"].Decide(denial(fra, request), timeout=5), grpc.StatusCode.PERMISSION_DENIED
        )
        await fails(
            d["DEU"].Decide(denial(deu, request), timeout=5),
            grpc.StatusCode.PERMISSION_DENIED,
            "cannot decide it",
        )
        await fails(
            d["FRA"].Decide(denial(ita, request), timeout=5),
            grpc.StatusCode.PERMISSION_DENIED,
            "names owner ITA, but you are FRA",
        )
        # Reading another bureau's case: the same answer as for no case at all.
        for rid in (request.request_id, os.urandom(16)):
            await fails(
                get(d["ITA"], rid),
                grpc.StatusCode.PERMISSION_DENIED,
                f"no disclosure case {rid.hex()} for ITA",
            )
        await fails(get(d["ITA"], b"short"), grpc.StatusCode.INVALID_ARGUMENT, "request_id")
        assert await listed(d["ITA"]) == []
        assert (await get(d["FRA"], request.request_id)).status == PENDING

    run_disclosure(fed, config, scenario)


def test_refusals_of_malformed_requests_and_decisions(fed: Fed, config: HubConfig) -> None:
    fra, deu = fed.keys["FRA"], fed.keys["DEU"]
    ks = keys(3)

    async def scenario(hub: Hub, d: Stubs) -> None:
        await enroll(hub.FRA, "w", ks)
        match_id = await hit(hub, ks[:1])
        now = now_ms()
        cases = [
            (make_request("DEU", match_id, created_ms=now - 2000, lifetime_ms=1000), "expires_ms"),
            (make_request("DEU", match_id, lifetime_ms=91 * DAY_MS), "at most that long"),
            (make_request("DEU", match_id, created_ms=now + 3_600_000), "created_ms"),
        ]
        for bad, fragment in cases:
            await fails(
                d["DEU"].Request(signed(deu, bad), timeout=5),
                grpc.StatusCode.INVALID_ARGUMENT,
                fragment,
            )
        garbage = disclosure_pb2.SignedDisclosureRequest(request=b"\x00\x00\x00\x05hello")
        await fails(
            d["DEU"].Request(garbage, timeout=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "malformed disclosure request",
        )
        request = make_request("DEU", match_id)
        await d["DEU"].Request(signed(deu, request), timeout=5)
        await fails(
            d["DEU"].Request(signed(deu, request), timeout=5),
            grpc.StatusCode.ALREADY_EXISTS,
            request.request_id.hex(),
        )
        # Asking about one's own record (a hit with include_own).
        own = (await query(hub.FRA, ks[1:2], include_own=True)).matches[0].match_id
        await fails(
            d["FRA"].Request(signed(fra, make_request("FRA", bytes.fromhex(own))), timeout=5),
            grpc.StatusCode.FAILED_PRECONDITION,
            "own",
        )
        good = approval(fra, deu, request)
        other_ct = approval(fra, deu, request).sealed  # another sealing of the same record
        deny = denial(fra, request)
        changed = replace(request, purpose="something else")
        bad_decisions = [
            (
                disclosure_pb2.SignedDecision(decision=good.decision, signature=good.signature),
                "sealed",
            ),
            (
                disclosure_pb2.SignedDecision(
                    decision=good.decision, signature=good.signature, sealed=other_ct
                ),
                "sealed: is not the record the decision approves",
            ),
            (
                disclosure_pb2.SignedDecision(
                    decision=deny.decision, signature=deny.signature, sealed=other_ct
                ),
                "a denial carries no sealed record",
            ),
            (denial(fra, changed), "answers a different version"),
            (disclosure_pb2.SignedDecision(decision=b"junk"), "malformed disclosure decision"),
        ]
        for bad_decision, fragment in bad_decisions:
            await fails(
                d["FRA"].Decide(bad_decision, timeout=5), grpc.StatusCode.INVALID_ARGUMENT, fragment
            )
        assert (await get(d["DEU"], request.request_id)).status == PENDING
        # Deciding twice.
        await d["FRA"].Decide(good, timeout=5)
        await fails(
            d["FRA"].Decide(deny, timeout=5), grpc.StatusCode.FAILED_PRECONDITION, "already decided"
        )
        assert (await get(d["DEU"], request.request_id)).status == APPROVED

    run_disclosure(fed, config, scenario)


def test_expired_requests_cannot_be_decided(fed: Fed, config: HubConfig) -> None:
    fra, deu = fed.keys["FRA"], fed.keys["DEU"]
    ks = keys(1)

    async def scenario(hub: Hub, d: Stubs) -> None:
        await enroll(hub.FRA, "w", ks)
        request = make_request("DEU", await hit(hub, ks), lifetime_ms=400)
        follow = d["FRA"].List(
            disclosure_pb2.ListDisclosuresRequest(direction=INCOMING, follow=True), timeout=20
        )
        await d["DEU"].Request(signed(deu, request), timeout=5)
        pending = await asyncio.wait_for(follow.read(), 5)
        assert isinstance(pending, disclosure_pb2.DisclosureCase) and pending.status == PENDING
        # Nobody reads or decides: the hub expires it and tells the follower.
        expired = await asyncio.wait_for(follow.read(), 5)
        assert isinstance(expired, disclosure_pb2.DisclosureCase)
        assert (expired.request_id, expired.status) == (request.request_id, EXPIRED)
        assert expired.sequence > pending.sequence
        follow.cancel()
        await fails(
            d["FRA"].Decide(approval(fra, deu, request), timeout=5),
            grpc.StatusCode.FAILED_PRECONDITION,
            "expired",
        )
        (outgoing,) = await listed(d["DEU"], OUTGOING)
        assert outgoing.status == EXPIRED

    run_disclosure(fed, config, scenario)


def test_record_removed_since_the_match(fed: Fed, config: HubConfig) -> None:
    deu = fed.keys["DEU"]
    ks = keys(4)

    async def scenario(hub: Hub, d: Stubs) -> None:
        await enroll(hub.FRA, "w", ks)
        matches = [await hit(hub, [k]) for k in ks[:3]]
        await hub.FRA.UpdateDataset(
            hub_pb2.UpdateDatasetRequest(dataset="w", epoch=1, remove_handles=[ks[0].handle]),
            timeout=5,
        )
        await enroll(hub.FRA, "w", ks[2:], replace=True)  # without ks[1]
        removed = []
        for match_id in matches:
            request = make_request("DEU", match_id)
            ticket = await d["DEU"].Request(signed(deu, request), timeout=5)
            owners = await get(d["FRA"], request.request_id)
            assert owners.record_removed is ticket.record_removed
            removed.append(ticket.record_removed)
        assert removed == [True, True, False]

    run_disclosure(fed, config, scenario)


def test_standing_matches_can_be_asked_about_from_both_sides(fed: Fed, config: HubConfig) -> None:
    fra, deu, ita = fed.keys["FRA"], fed.keys["DEU"], fed.keys["ITA"]
    ks = keys(3)
    theirs = shared(ks[:1])
    linkable = common_pb2.DatasetPolicy(linkable=True)

    async def scenario(hub: Hub, d: Stubs) -> None:
        await enroll(hub.FRA, "wanted", ks, policy_=linkable)
        await enroll(hub.DEU, "alerts", theirs, policy_=linkable)
        notices = [n async for n in hub.FRA.WatchNotices(hub_pb2.WatchNoticesRequest(), timeout=5)]
        match_id = bytes.fromhex(notices[0].match_id)
        from_fra = make_request("FRA", match_id)
        from_deu = make_request("DEU", match_id)
        await d["FRA"].Request(signed(fra, from_fra), timeout=5)
        await d["DEU"].Request(signed(deu, from_deu), timeout=5)
        deu_owns = await get(d["DEU"], from_fra.request_id)
        assert (deu_owns.owner, deu_owns.dataset, deu_owns.handle) == (
            "DEU",
            "alerts",
            theirs[0].handle,
        )
        fra_owns = await get(d["FRA"], from_deu.request_id)
        assert (fra_owns.owner, fra_owns.dataset, fra_owns.handle) == (
            "FRA",
            "wanted",
            ks[0].handle,
        )
        await fails(
            d["ITA"].Request(signed(ita, make_request("ITA", match_id)), timeout=5),
            grpc.StatusCode.PERMISSION_DENIED,
        )

    run_disclosure(fed, config, scenario)


def test_listing_resumes_without_loss_or_duplicates(fed: Fed, config: HubConfig) -> None:
    fra, deu, ita = fed.keys["FRA"], fed.keys["DEU"], fed.keys["ITA"]
    ks, its = keys(3), keys(1)

    async def scenario(hub: Hub, d: Stubs) -> None:
        await enroll(hub.FRA, "w", ks)
        await enroll(hub.ITA, "w", its)
        requests = [make_request("DEU", await hit(hub, [k])) for k in ks]
        for request in requests:
            await d["DEU"].Request(signed(deu, request), timeout=5)
        first = await listed(d["FRA"], INCOMING)
        assert [c.request_id for c in first] == [r.request_id for r in requests]
        assert [c.sequence for c in first] == [1, 2, 3]
        # A decision moves its case after the last sequence seen; nothing else comes again.
        await d["FRA"].Decide(denial(fra, requests[1]), timeout=5)
        after = await listed(d["FRA"], INCOMING, after=first[-1].sequence)
        assert [(c.request_id, c.status, c.sequence) for c in after] == [
            (requests[1].request_id, DENIED, 4)
        ]
        assert [c.request_id for c in await listed(d["FRA"])] == [
            requests[0].request_id, requests[2].request_id, requests[1].request_id,
        ]  # fmt: skip
        assert await listed(d["FRA"], OUTGOING) == []
        assert [c.sequence for c in await listed(d["DEU"], OUTGOING)] == [1, 3, 4]
        # A follower of one direction is not woken for nothing by the other.
        follow = d["FRA"].List(
            disclosure_pb2.ListDisclosuresRequest(
                direction=OUTGOING, follow=True, after_sequence=4
            ),
            timeout=20,
        )
        await asyncio.sleep(0.1)
        late = make_request("DEU", await hit(hub, ks[:1]))
        await d["DEU"].Request(signed(deu, late), timeout=5)  # incoming for FRA
        mine = make_request("FRA", await hit(hub, its, asker="FRA"))
        await d["FRA"].Request(signed(fra, mine), timeout=5)
        pushed = await asyncio.wait_for(follow.read(), 5)
        assert isinstance(pushed, disclosure_pb2.DisclosureCase)
        assert (pushed.request_id, pushed.sequence) == (mine.request_id, 6)
        follow.cancel()
        assert [c.sequence for c in await listed(d["ITA"], INCOMING)] == [1]
        await d["ITA"].Decide(approval(ita, fra, mine), timeout=5)

    run_disclosure(fed, config, scenario)


def test_signatures_are_checked_against_the_directory(fed: Fed, config: HubConfig) -> None:
    fra, deu = fed.keys["FRA"], fed.keys["DEU"]
    ks = keys(1)

    def tampered(message: Any) -> Any:
        copy = type(message)()
        copy.CopyFrom(message)
        copy.signature = bytes([message.signature[0] ^ 1]) + message.signature[1:]
        return copy

    async def checked(hub: Hub, d: Stubs) -> None:
        await enroll(hub.FRA, "w", ks)
        request = make_request("DEU", await hit(hub, ks[:1]))
        await fails(
            d["DEU"].Request(tampered(signed(deu, request)), timeout=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not signed by DEU",
        )
        await fails(  # signed by another bureau's key
            d["DEU"].Request(
                disclosure_pb2.SignedDisclosureRequest(
                    request=request.encode(), signature=sign_request(fra.signing, request)
                ),
                timeout=5,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not signed by DEU",
        )
        await d["DEU"].Request(signed(deu, request), timeout=5)
        await fails(
            d["FRA"].Decide(tampered(approval(fra, deu, request)), timeout=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not signed by FRA",
        )
        assert (await get(d["DEU"], request.request_id)).status == PENDING

    run_disclosure(fed, config, checked)

    async def unchecked(hub: Hub, d: Stubs) -> None:
        # Without a federation directory the hub cannot check signatures:
        # it stores them for the other party's agent to verify.
        fresh = keys(1)
        await enroll(hub.FRA, "v", fresh)
        request = make_request("DEU", await hit(hub, fresh))
        bad = tampered(signed(deu, request))
        await d["DEU"].Request(bad, timeout=5)
        assert (await get(d["FRA"], request.request_id)).request_signature == bad.signature

    run_disclosure(fed, replace(config, federation=None), unchecked)


def test_hub_enforces_its_maximum_lifetime(fed: Fed, config: HubConfig) -> None:
    deu = fed.keys["DEU"]
    ks = keys(1)

    async def scenario(hub: Hub, d: Stubs) -> None:
        await enroll(hub.FRA, "w", ks)
        match_id = await hit(hub, ks)
        await fails(
            d["DEU"].Request(
                signed(deu, make_request("DEU", match_id, lifetime_ms=8 * DAY_MS)), timeout=5
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "more than 7 days ahead",
        )
        await d["DEU"].Request(
            signed(deu, make_request("DEU", match_id, lifetime_ms=6 * DAY_MS)), timeout=5
        )

    run_disclosure(fed, replace(config, max_disclosure_days=7), scenario)
