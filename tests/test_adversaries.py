"""Adversaries against real servers (mutual TLS on loopback, real SQLite).

* Dishonest custodians: another key, a wrong element for one item, a
  replayed earlier answer, a malformed (non-canonical) element, the
  identity, a short answer, a garbage proof.  Each is detected, named and
  skipped while n > t, and what reaches the hub is exactly the honest tags;
  with n = t the enrollment fails naming the liar and nothing is enrolled.
* Impersonation at the hub and at a custodian: no certificate, another CA's
  certificate, an expired one, a revoked one, one the directory does not
  list, the hub's own; and a bureau claiming another's code in a message.
* Hostile input: non-canonical and identity encodings, wrong lengths,
  oversized batches and messages, malformed streams, truncated and garbage
  protobuf bytes sent raw.  Each gets INVALID_ARGUMENT (or RESOURCE_EXHAUSTED
  for a message over the size limit), never UNKNOWN or INTERNAL, and the
  server answers the next good request.
* A fishing bureau at the hub: RESOURCE_EXHAUSTED with a retry hint, logged,
  counted and audited.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import random
import sqlite3
from collections.abc import Awaitable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from blindmatch.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    common_pb2,
    custodian_pb2,
    custodian_pb2_grpc,
    disclosure_pb2,
    disclosure_pb2_grpc,
    hub_pb2,
    hub_pb2_grpc,
)
from bureau_agent import pki
from bureau_agent.custodian import CustodianService
from hub.quota_config import OpsConfig, QuotaSettings
from psi import audit, disclosure, group, oprf, threshold
from psi.oprf import Mode
from tests.inprocess import (
    Custodians,
    InProcessAgent,
    InProcessHub,
    expected_tags,
    make_federation,
)

pytestmark = pytest.mark.e2e

BUREAUS = ["FRA", "DEU", "BRA", "USA", "ITA", "GBR"]
CUSTODIANS = ["FRA", "DEU", "BRA"]
PASSPORT = common_pb2.KEY_TYPE_PASSPORT
SCHEMA = """format = "csv"
id = "case_id"

[fields]
passport = "passport"
passport_issuer = "issuer"
"""
ROWS = 12
CASES: dict[str, int] = {}  # adversarial cases checked, by group (printed at the end)


def count(group_name: str, n: int = 1) -> None:
    CASES[group_name] = CASES.get(group_name, 0) + n


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_federation(tmp_path_factory.mktemp("adv"), BUREAUS, CUSTODIANS, 2)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


@pytest.fixture(scope="module", autouse=True)
def report_cases() -> Iterator[None]:
    yield
    print(f"\nadversarial cases: {sum(CASES.values())} {dict(sorted(CASES.items()))}")


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def write_file(folder: Path, numbers: range) -> tuple[Path, Path, list[bytes]]:
    """A CSV of passports, its schema, and the OPRF inputs it yields."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "schema.toml").write_text(SCHEMA)
    lines = ["case_id,passport,issuer", *(f"R{n},P{n:08d},USA" for n in numbers)]
    (folder / "data.csv").write_text("\n".join(lines) + "\n")
    inputs = [f"blindmatch/v1|passport|USA|P{n:08d}".encode() for n in numbers]
    return folder / "data.csv", folder / "schema.toml", inputs


# -- dishonest custodians ------------------------------------------------------------------


class Dishonest(CustodianService):
    """A custodian that computes an honest answer, then lies about it."""

    def __init__(self, *args: Any, lie: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lie = lie
        self.first: custodian_pb2.EvaluateResponse | None = None
        self.lies = 0

    async def Evaluate(
        self, request: custodian_pb2.EvaluateRequest, context: Any
    ) -> custodian_pb2.EvaluateResponse:
        honest = await super().Evaluate(request, context)
        reply = custodian_pb2.EvaluateResponse()
        reply.CopyFrom(honest)
        elements = list(reply.evaluated_elements)
        if self.lie == "wrong_element_in_batch_only":
            if not request.unproven:  # honest about the check's combination
                return honest
            elements[-1] = group.scalar_mult_base(group.random_scalar())
        elif self.lie == "replay":
            if self.first is None:
                self.first = honest  # the first answer is honest and remembered
                return honest
            reply.CopyFrom(self.first)
        elif self.lie == "wrong_element":
            elements[len(elements) // 2] = group.scalar_mult_base(group.random_scalar())
        elif self.lie == "non_canonical":
            elements[0] = b"\xff" * 32
        elif self.lie == "identity":
            elements[-1] = bytes(32)
        elif self.lie == "short":
            elements = elements[:-1]
        elif self.lie == "garbage_proof":
            reply.proof = os.urandom(len(reply.proof))
        if self.lie not in ("replay", "garbage_proof"):
            del reply.evaluated_elements[:]
            reply.evaluated_elements.extend(elements)
        self.lies += 1
        return reply


LIES = [
    "other_key",
    "wrong_element",
    "replay",
    "non_canonical",
    "identity",
    "short",
    "garbage_proof",
    "wrong_element_in_batch_only",
]


async def _enroll_with_liar(
    root: Path,
    tmp: Path,
    executor: ThreadPoolExecutor,
    lie: str,
    honest: list[str],
    batch_size: int = 4,
) -> tuple[Any, Any, list[bytes], set[bytes], dict[str, str]]:
    hub = InProcessHub(root, tmp / "hub.sqlite")
    custodians = Custodians(root, executor)
    agent = InProcessAgent(root, "USA", tmp / "usa", executor, batch_size=batch_size)
    path, schema, inputs = write_file(tmp / "data", range(ROWS))
    try:
        await hub.start()
        if lie == "other_key":
            await custodians.start("FRA", share=threshold.KeyShare(1, group.random_scalar()))
        else:
            await custodians.start("FRA", Dishonest, lie=lie)
        for code in honest:
            await custodians.start(code)
        if "BRA" not in honest:
            pki_clear_address(root, "BRA")
        await agent.start()
        outcome: Any
        try:
            outcome = await agent.enroll(path, schema, f"with-{lie}".replace("_", "-"))
        except grpc.aio.AioRpcError as exc:
            outcome = exc
        async with hub.channel("USA") as channel:
            listed = await hub_pb2_grpc.HubStub(channel).ListDatasets(
                hub_pb2.ListDatasetsRequest(), timeout=10
            )
        assert agent.tagger is not None
        errors = dict(agent.tagger.stats.custodian_errors)
    finally:
        await agent.stop()
        await custodians.close()
        await hub.stop()
    with sqlite3.connect(hub.database) as db:
        stored = {bytes(r[0]) for r in db.execute("SELECT tag FROM tags")}
    return outcome, listed, inputs, stored, errors


def pki_clear_address(root: Path, code: str) -> None:
    from tests.inprocess import set_address

    set_address(root, code, "")


# Batches of 4 are checked by a proof in every answer, batches of 12 by the
# per-batch check (unproven answers, one proven random combination; the last
# lie is only told there).
@pytest.mark.parametrize(
    ("lie", "batch_size"),
    [(lie, size) for lie in LIES for size in (4, ROWS) if size == ROWS or "only" not in lie],
)
def test_dishonest_custodian_is_named_skipped_and_nothing_wrong_is_enrolled(
    federation: Path, tmp_path: Path, executor: ThreadPoolExecutor, lie: str, batch_size: int
) -> None:
    outcome, listed, inputs, stored, errors = run(
        _enroll_with_liar(federation, tmp_path, executor, lie, ["DEU", "BRA"], batch_size)
    )
    assert not isinstance(outcome, grpc.aio.AioRpcError), outcome
    assert outcome.accepted == ROWS and outcome.version == 1
    assert [d.name for d in listed.datasets] == [f"with-{lie}".replace("_", "-")]
    # Exactly the honest tags reached the hub, none other.
    assert stored == set(expected_tags(federation, inputs, ["DEU", "BRA"]))
    assert set(errors) == {"FRA"}, errors
    assert errors["FRA"].startswith("invalid answer"), errors
    count("dishonest custodian, n > t")


@pytest.mark.parametrize(
    ("lie", "batch_size"),
    [
        ("other_key", 4),
        ("replay", 4),
        ("non_canonical", 4),
        ("other_key", ROWS),
        ("wrong_element_in_batch_only", ROWS),
    ],
)
def test_dishonest_custodian_at_n_equals_t_fails_and_enrolls_nothing(
    federation: Path, tmp_path: Path, executor: ThreadPoolExecutor, lie: str, batch_size: int
) -> None:
    outcome, listed, _, stored, errors = run(
        _enroll_with_liar(federation, tmp_path, executor, lie, ["DEU"], batch_size)
    )
    assert isinstance(outcome, grpc.aio.AioRpcError)
    assert outcome.code() is grpc.StatusCode.UNAVAILABLE
    details = outcome.details() or ""
    assert "FRA: invalid answer" in details and "BRA" in details, details
    assert list(listed.datasets) == [] and stored == set()
    assert "FRA" in errors
    count("dishonest custodian, n = t")


# -- impersonation ----------------------------------------------------------------------------


def _credentials(root: Path, tmp: Path, who: str) -> grpc.ChannelCredentials:
    ca = (root / "ca" / "ca.crt").read_bytes()
    if who == "no certificate":
        return grpc.ssl_channel_credentials(root_certificates=ca)
    if who == "another CA":
        other = tmp / "rogue"
        pki.init_federation(other, "rogue")
        files = pki.TlsFiles.in_folder(pki.issue_bureau(other, "USA"))
    elif who == "expired":
        # Issued by the federation's own CA, valid for one day, 400 days ago.
        files = pki.TlsFiles.in_folder(
            issue_copy(
                root,
                tmp / "expired",
                "USA",
                not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=400),
            )
        )
    elif who == "hub certificate":
        files = pki.TlsFiles.in_folder(root / "hub")
    else:
        files = pki.TlsFiles.in_folder(root / "bureaus" / who)
    return grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=files.key.read_bytes(),
        certificate_chain=files.cert.read_bytes(),
    )


def issue_copy(root: Path, scratch: Path, code: str, **options: Any) -> Path:
    """A certificate for `code` signed by `root`'s CA, written under `scratch`
    (the directory entry is left as it was)."""
    import shutil

    shutil.copytree(root, scratch, ignore=shutil.ignore_patterns("bureaus", "hub"))
    return pki.issue_bureau(scratch, code, valid_days=1, **options)


IMPOSTORS = ["no certificate", "another CA", "expired", "revoked", "unlisted", "hub certificate"]


def test_impostors_are_refused_by_hub_and_custodian(
    federation: Path, tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    async def main() -> dict[tuple[str, str], tuple[grpc.StatusCode, str]]:
        hub = InProcessHub(federation, tmp_path / "hub.sqlite")
        custodians = Custodians(federation, executor)
        seen: dict[tuple[str, str], tuple[grpc.StatusCode, str]] = {}
        serial = pki.certificate_serial((federation / "bureaus" / "USA" / "tls.crt").read_bytes())
        try:
            hub_address = await hub.start()
            custodian_address = await custodians.start("FRA")
            credentials = {
                who: _credentials(federation, tmp_path, who)
                for who in IMPOSTORS
                if who not in ("revoked", "unlisted")
            }
            # "revoked": ITA's genuine certificate, revoked in the directory;
            # "unlisted": GBR's genuine certificate, GBR dropped from the directory.
            ita = pki.certificate_serial((federation / "bureaus" / "ITA" / "tls.crt").read_bytes())
            credentials["revoked"] = _credentials(federation, tmp_path, "ITA")
            credentials["unlisted"] = _credentials(federation, tmp_path, "GBR")
            pki.update_directory(federation, lambda d: d.replace(revoked_serials=frozenset({ita})))
            drop_bureau(federation, "GBR")
            for who, creds in credentials.items():
                for target, address in (("hub", hub_address), ("custodian", custodian_address)):
                    async with grpc.aio.secure_channel(address, creds) as channel:
                        try:
                            if target == "hub":
                                await hub_pb2_grpc.HubStub(channel).GetStatus(
                                    hub_pb2.GetStatusRequest(), timeout=5
                                )
                            else:
                                await custodian_pb2_grpc.CustodianStub(channel).GetKeyInfo(
                                    custodian_pb2.GetKeyInfoRequest(), timeout=5
                                )
                            seen[(who, target)] = (grpc.StatusCode.OK, "")
                        except grpc.aio.AioRpcError as exc:
                            seen[(who, target)] = (exc.code(), exc.details() or "")
            # The genuine, listed, unrevoked USA certificate still works on both.
            async with hub.channel("USA") as channel:
                status = await hub_pb2_grpc.HubStub(channel).GetStatus(
                    hub_pb2.GetStatusRequest(), timeout=5
                )
                assert status.caller == "USA"
            assert (
                serial
                not in pki.load_directory(
                    federation / "directory.json", federation / "ca" / "ca.crt"
                ).revoked_serials
            )
        finally:
            await custodians.close()
            await hub.stop()
            restore_bureau(federation, "GBR")
            pki.update_directory(federation, lambda d: d.replace(revoked_serials=frozenset()))
        return seen

    seen = run(main())
    for who in ("no certificate", "another CA", "expired"):
        for target in ("hub", "custodian"):
            # The TLS handshake fails: the server never sees a call.
            assert seen[(who, target)][0] is grpc.StatusCode.UNAVAILABLE, (who, target, seen)
            count("impersonation")
    for target in ("hub", "custodian"):
        code, details = seen[("revoked", target)]
        assert code is grpc.StatusCode.PERMISSION_DENIED and "revoked" in details, details
        code, details = seen[("unlisted", target)]
        assert code is grpc.StatusCode.PERMISSION_DENIED and "directory" in details, details
        code, details = seen[("hub certificate", target)]
        assert code is grpc.StatusCode.PERMISSION_DENIED and "not a bureau" in details, details
        count("impersonation", 3)


_SAVED: dict[str, Any] = {}


def drop_bureau(root: Path, code: str) -> None:
    def change(d: pki.Directory) -> pki.Directory:
        _SAVED[code] = d.bureaus[code]
        return d.replace(bureaus={c: e for c, e in d.bureaus.items() if c != code})

    pki.update_directory(root, change)


def restore_bureau(root: Path, code: str) -> None:
    if code in _SAVED:
        entry = _SAVED.pop(code)
        pki.update_directory(root, lambda d: d.replace(bureaus={**d.bureaus, code: entry}))


def test_a_bureau_cannot_act_in_anothers_name(federation: Path, tmp_path: Path) -> None:
    async def main() -> dict[str, tuple[grpc.StatusCode, str]]:
        hub = InProcessHub(federation, tmp_path / "hub.sqlite")
        seen: dict[str, tuple[grpc.StatusCode, str]] = {}
        usa_key = pki.load_ed25519_key(federation / "bureaus" / "USA" / "signing.key")
        fra_key = pki.load_ed25519_key(federation / "bureaus" / "FRA" / "signing.key")
        now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        try:
            await hub.start()
            async with hub.channel("USA") as channel:
                stub = hub_pb2_grpc.HubStub(channel)
                desk = disclosure_pb2_grpc.DisclosureStub(channel)
                for name, key in (
                    ("requester FRA, signed by USA", usa_key),
                    ("requester FRA, signed by FRA", fra_key),
                ):
                    forged = disclosure.DisclosureRequest(
                        request_id=disclosure.new_request_id(),
                        match_id=os.urandom(16),
                        requester="FRA",
                        purpose="p",
                        legal_basis="b",
                        created_ms=now,
                        expires_ms=now + 86_400_000,
                    )
                    signed = disclosure_pb2.SignedDisclosureRequest(
                        request=forged.encode(), signature=disclosure.sign_request(key, forged)
                    )
                    seen[name] = await code_of(desk.Request(signed, timeout=5))
                seen["enroll DEU/x"] = await code_of(
                    stub.Enroll(
                        iter(
                            [
                                hub_pb2.EnrollRequest(
                                    header=hub_pb2.EnrollHeader(dataset="DEU/x", epoch=1)
                                )
                            ]
                        ),
                        timeout=5,
                    )
                )
                seen["update DEU/x"] = await code_of(
                    stub.UpdateDataset(
                        hub_pb2.UpdateDatasetRequest(dataset="DEU/x", epoch=1), timeout=5
                    )
                )
        finally:
            await hub.stop()
        return seen

    seen = run(main())
    for name, (code, details) in seen.items():
        assert code is grpc.StatusCode.PERMISSION_DENIED, (name, code, details)
        count("impersonation in a message field")
    assert "you are USA" in seen["requester FRA, signed by FRA"][1]


async def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


# -- hostile input --------------------------------------------------------------------------


def _raw(channel: grpc.aio.Channel, method: str, kind: str = "unary") -> Any:
    if kind == "unary":
        return channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    if kind == "server_stream":
        return channel.unary_stream(method, request_serializer=None, response_deserializer=None)
    if kind == "client_stream":
        return channel.stream_unary(method, request_serializer=None, response_deserializer=None)
    return channel.stream_stream(method, request_serializer=None, response_deserializer=None)


async def raw_code(channel: grpc.aio.Channel, method: str, kind: str, payload: Any) -> Any:
    call = _raw(channel, method, kind)
    try:
        if kind in ("unary", "client_stream"):
            await call(payload, timeout=5)
        else:
            async for _ in call(payload, timeout=5):
                pass
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


GARBAGE = [b"\xff\xff\xff\xff", b"\x0a\x40short", b"\x12", b"garbage\x00\x01\x02\x03"]


def test_hostile_input_at_the_custodian(
    federation: Path, tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    async def main() -> tuple[dict[str, Any], int]:
        custodians = Custodians(federation, executor)
        seen: dict[str, Any] = {}
        try:
            address = await custodians.start("FRA")
            creds = pki.TlsFiles.in_folder(federation / "bureaus" / "USA").channel_credentials()
            _, element = oprf.blind(b"x", Mode.VOPRF)
            good = custodian_pb2.EvaluateRequest(
                epoch=1, participants=[1, 2], blinded_elements=[element]
            )
            bad = {
                "non-canonical element": [element, b"\xff" * 32],
                "p + 1 (non-canonical)": [(2**255 - 18).to_bytes(32, "little")],
                "identity": [bytes(32)],
                "31 bytes": [element[:31]],
                "33 bytes": [element + b"\x00"],
                "empty batch": [],
                "oversized batch": [element] * 65,
            }
            async with grpc.aio.secure_channel(address, creds) as channel:
                stub = custodian_pb2_grpc.CustodianStub(channel)
                for name, elements in bad.items():
                    seen[name] = await code_of(
                        stub.Evaluate(
                            custodian_pb2.EvaluateRequest(
                                epoch=1, participants=[1, 2], blinded_elements=elements
                            ),
                            timeout=5,
                        )
                    )
                seen["repeated participant"] = await code_of(
                    stub.Evaluate(
                        custodian_pb2.EvaluateRequest(
                            epoch=1, participants=[1, 1], blinded_elements=[element]
                        ),
                        timeout=5,
                    )
                )
                for i, payload in enumerate(
                    [*GARBAGE, good.SerializeToString()[:-3], good.SerializeToString()[:5]]
                ):
                    seen[f"raw bytes {i}"] = await raw_code(
                        channel, "/blindmatch.v1.Custodian/Evaluate", "unary", payload
                    )
                fuzzed = await fuzz(channel, "/blindmatch.v1.Custodian/Evaluate", good, 200)
                reply = await stub.Evaluate(good, timeout=5)
                assert len(reply.evaluated_elements) == 1
        finally:
            await custodians.close()
        return seen, fuzzed

    seen, fuzzed = run(main())
    for name, (code, details) in seen.items():
        assert code is grpc.StatusCode.INVALID_ARGUMENT, (name, code, details)
        count("hostile input at the custodian")
    assert "not a valid protobuf message" in seen["raw bytes 0"][1]
    count("random bytes at the custodian", fuzzed)


async def fuzz(channel: grpc.aio.Channel, method: str, good: Any, n: int) -> int:
    """Send n mutations of a good request's bytes; none may end in UNKNOWN or INTERNAL."""
    rng = random.Random(n)
    base = bytearray(good.SerializeToString())
    for _ in range(n):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            choice = rng.random()
            if choice < 0.4 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif choice < 0.7:
                data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
            elif data:
                del data[rng.randrange(len(data))]
        code, details = await raw_code(channel, method, "unary", bytes(data))
        assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (
            bytes(data).hex(),
            code,
            details,
        )
    return n


def test_hostile_input_at_the_hub(federation: Path, tmp_path: Path) -> None:
    async def main() -> tuple[dict[str, Any], int, int]:
        hub = InProcessHub(federation, tmp_path / "hub.sqlite", max_tags_per_request=100)
        seen: dict[str, Any] = {}
        tag = os.urandom(16)
        good_key = common_pb2.TaggedKey(tag=tag, handle=os.urandom(16), key_type=PASSPORT)

        def header(name: str) -> hub_pb2.EnrollRequest:
            return hub_pb2.EnrollRequest(header=hub_pb2.EnrollHeader(dataset=name, epoch=1))

        def batch(*keys: common_pb2.TaggedKey) -> hub_pb2.EnrollRequest:
            return hub_pb2.EnrollRequest(batch=hub_pb2.TagBatch(keys=list(keys)))

        def trailer(n: int, digest: bytes = b"\x00" * 32) -> hub_pb2.EnrollRequest:
            return hub_pb2.EnrollRequest(trailer=hub_pb2.EnrollTrailer(tag_count=n, digest=digest))

        try:
            await hub.start()
            async with hub.channel("USA") as channel:
                stub = hub_pb2_grpc.HubStub(channel)

                def query(*tags: common_pb2.QueryTag) -> Any:
                    return code_of(
                        stub.Query(hub_pb2.QueryRequest(epoch=1, tags=list(tags)), timeout=5)
                    )

                seen["tag of 15 bytes"] = await query(
                    common_pb2.QueryTag(tag=tag[:15], key_type=PASSPORT)
                )
                seen["tag of 17 bytes"] = await query(
                    common_pb2.QueryTag(tag=tag + b"\0", key_type=PASSPORT)
                )
                seen["unknown key type"] = await query(common_pb2.QueryTag(tag=tag, key_type=99))  # type: ignore[arg-type]
                seen["epoch 0"] = await code_of(
                    stub.Query(hub_pb2.QueryRequest(epoch=0, tags=[]), timeout=5)
                )
                seen["101 tags (limit 100)"] = await query(
                    *[common_pb2.QueryTag(tag=os.urandom(16), key_type=PASSPORT)] * 101
                )
                streams = {
                    "stream without header": [batch(good_key), trailer(1)],
                    "two headers": [header("a"), header("b")],
                    "handle of 17 bytes": [
                        header("c"),
                        batch(common_pb2.TaggedKey(tag=tag, handle=b"h" * 17, key_type=PASSPORT)),
                    ],
                    "101 keys in a batch": [header("d"), batch(*[good_key] * 101)],
                    "trailer that does not match": [header("e"), batch(good_key), trailer(1)],
                    "trailer count off by one": [header("f"), batch(good_key), trailer(2)],
                    "no trailer": [header("g"), batch(good_key)],
                }
                for name, messages in streams.items():
                    seen[name] = await code_of(stub.Enroll(iter(messages), timeout=5))
                bulk = stub.BulkMatch(
                    iter(
                        [
                            hub_pb2.BulkMatchRequest(
                                batch_id=1,
                                epoch=1,
                                tags=[common_pb2.QueryTag(tag=b"x", key_type=PASSPORT)],
                            )
                        ]
                    ),
                    timeout=5,
                )
                seen["bulk batch with a 1-byte tag"] = await code_of(_drain(bulk))
                raw_cases = {
                    "Query": ("/blindmatch.v1.Hub/Query", "unary"),
                    "GetStatus": ("/blindmatch.v1.Hub/GetStatus", "unary"),
                    "WatchNotices": ("/blindmatch.v1.Hub/WatchNotices", "server_stream"),
                    "Enroll": ("/blindmatch.v1.Hub/Enroll", "client_stream"),
                    "BulkMatch": ("/blindmatch.v1.Hub/BulkMatch", "stream"),
                    "Disclosure.Request": ("/blindmatch.v1.Disclosure/Request", "unary"),
                    "AuditLog.GetEntries": ("/blindmatch.v1.AuditLog/GetEntries", "unary"),
                }
                good_query = hub_pb2.QueryRequest(
                    epoch=1, tags=[common_pb2.QueryTag(tag=tag, key_type=PASSPORT)]
                ).SerializeToString()
                for name, (method, kind) in raw_cases.items():
                    for i, payload in enumerate([*GARBAGE, good_query[:-2]]):
                        if name == "GetStatus" and i == len(GARBAGE):
                            continue  # a truncated QueryRequest may be a valid empty message
                        data: Any = payload
                        if kind in ("client_stream", "stream"):
                            data = iter([payload])
                        seen[f"raw {name} {i}"] = await raw_code(channel, method, kind, data)
                # A valid protobuf whose inner signed request is garbage.
                desk = disclosure_pb2_grpc.DisclosureStub(channel)
                seen["garbage signed request"] = await code_of(
                    desk.Request(
                        disclosure_pb2.SignedDisclosureRequest(
                            request=os.urandom(64), signature=os.urandom(64)
                        ),
                        timeout=5,
                    )
                )
                # Over the message size limit: gRPC itself refuses it.
                huge = hub_pb2.QueryRequest(
                    epoch=1, tags=[common_pb2.QueryTag(tag=os.urandom(16), key_type=PASSPORT)]
                )
                huge.tags[0].tag = os.urandom(9 * 1024 * 1024)
                oversized = await code_of(stub.Query(huge, timeout=10))
                fuzzed = await fuzz(
                    channel,
                    "/blindmatch.v1.Hub/Query",
                    hub_pb2.QueryRequest.FromString(good_query),
                    200,
                )
                # The server still answers a good request, and nothing was enrolled.
                status = await stub.GetStatus(hub_pb2.GetStatusRequest(), timeout=5)
                assert status.caller == "USA" and status.datasets == 0
                listed = await stub.ListDatasets(hub_pb2.ListDatasetsRequest(), timeout=5)
                assert list(listed.datasets) == []
        finally:
            await hub.stop()
        return seen, fuzzed, 0 if oversized[0] is grpc.StatusCode.RESOURCE_EXHAUSTED else 1

    seen, fuzzed, oversized_wrong = run(main())
    for name, (code, details) in seen.items():
        assert code is grpc.StatusCode.INVALID_ARGUMENT, (name, code, details)
        count("hostile input at the hub")
    assert oversized_wrong == 0
    count("hostile input at the hub")
    assert "nothing was committed" in seen["no trailer"][1]
    count("random bytes at the hub", fuzzed)


async def _drain(call: Any) -> None:
    async for _ in call:
        pass


# -- a fishing bureau ------------------------------------------------------------------------


def test_hub_quota_refuses_a_fishing_bureau_audits_and_counts(
    federation: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ops = OpsConfig(quota=QuotaSettings(query_tags_per_second=1, query_tags_burst=15))

    async def main() -> dict[str, Any]:
        hub = InProcessHub(federation, tmp_path / "hub.sqlite", ops=ops)
        out: dict[str, Any] = {}
        tags = [common_pb2.QueryTag(tag=os.urandom(16), key_type=PASSPORT) for _ in range(10)]
        try:
            await hub.start()
            async with hub.channel("USA") as channel:
                stub = hub_pb2_grpc.HubStub(channel)
                await stub.Query(hub_pb2.QueryRequest(epoch=1, tags=tags), timeout=5)
                try:
                    await stub.Query(hub_pb2.QueryRequest(epoch=1, tags=tags), timeout=5)
                except grpc.aio.AioRpcError as exc:
                    out["query"] = (
                        exc.code(),
                        exc.details(),
                        dict(exc.trailing_metadata() or ()),
                    )
                bulk = stub.BulkMatch(
                    iter([hub_pb2.BulkMatchRequest(batch_id=7, epoch=1, tags=tags)]), timeout=5
                )
                try:
                    await _drain(bulk)
                except grpc.aio.AioRpcError as exc:
                    out["bulk"] = (exc.code(), exc.details(), dict(exc.trailing_metadata() or ()))
                log = audit_pb2_grpc.AuditLogStub(channel)
                head = await log.GetTreeHead(audit_pb2.GetTreeHeadRequest(), timeout=5)
                entries = await log.GetEntries(
                    audit_pb2.GetEntriesRequest(start=0, end=head.size), timeout=5
                )
                out["entries"] = [audit.decode_entry(e) for e in entries.entries if e]
            # Another bureau has its own bucket.
            async with hub.channel("DEU") as channel:
                await hub_pb2_grpc.HubStub(channel).Query(
                    hub_pb2.QueryRequest(epoch=1, tags=tags), timeout=5
                )
            assert hub.operations is not None
            out["metric"] = {
                op: hub.operations.metrics.registry.get_sample_value(
                    "blindmatch_hub_quota_refusals_total", {"bureau": "USA", "operation": op}
                )
                for op in ("query", "bulk_match")
            }
        finally:
            await hub.stop()
        return out

    with caplog.at_level(logging.WARNING, logger="blindmatch.hub"):
        out = run(main())
    code, details, trailers = out["query"]
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "quota exceeded for USA: 10 tags asked; retry after" in details
    assert 4000 <= int(trailers["retry-after-ms"]) <= 5100
    code, details, trailers = out["bulk"]
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and details.startswith("batch_id 7: ")
    assert "retry-after-ms" in trailers
    refusals = [e for e in out["entries"] if e.kind is audit.EntryKind.QUOTA_REFUSAL]
    assert [(e["bureau"], e["operation"]) for e in refusals] == [
        ("USA", "query"),
        ("USA", "bulk_match"),
    ]
    assert out["metric"] == {"query": 1.0, "bulk_match": 1.0}
    logged = [r.getMessage() for r in caplog.records if "quota refusal" in r.getMessage()]
    assert len(logged) == 2 and all("USA" in m for m in logged)
    count("fishing bureau", 2)
