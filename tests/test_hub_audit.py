"""The hub's audit log: a leaf for every change, in the change's own
transaction; entries free of tags and handles; signed tree heads and RFC 9162
proofs that verify with `psi.merkle`; a log that survives restarts and
`kill -9`.

Store tests go through the `HubStore` protocol and the `open_store` fixture
(`conftest.py`), and service tests through a `config` for the store under
test: each runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from blindmatch.v1 import audit_pb2, audit_pb2_grpc, common_pb2, hub_pb2
from bureau_agent import pki
from hub import policy
from hub.audit import MAX_ENTRIES_PER_CALL, TreeHeadSigner, check_entries_range
from hub.config import HubConfig
from hub.errors import ConfigError, FailedPreconditionError, LimitExceededError
from hub.policy import DatasetPolicy, EnrollSpec, TaggedKey
from hub.server import serve
from hub.store import HubStore
from psi import merkle
from psi.audit import AuditEntry, EntryKind, decode_entry
from psi.errors import InvalidInputError, VerifyError
from tests.stores import CHILD_OPEN, StoreBackend
from tests.test_hub_service import (
    BUREAUS,
    Federation,
    Hub,
    enroll,
    fails,
    keys,
    query,
    query_tags,
    run_with_hub,
    shared,
)
from tests.test_hub_store import enroll as store_enroll
from tests.test_hub_store import keys as store_keys
from tests.test_hub_store import queries, run

OpenStore = Callable[[], Awaitable[HubStore]]
LINKABLE = DatasetPolicy(linkable=True)


def with_store(open_store: OpenStore, scenario: Callable[[HubStore], Awaitable[None]]) -> None:
    async def main() -> None:
        store = await open_store()
        try:
            await scenario(store)
        finally:
            await store.close()

    run(main())


async def all_entries(store: HubStore) -> list[bytes]:
    size, _ = await store.audit_head()
    entries: list[bytes] = []
    for start in range(0, size, MAX_ENTRIES_PER_CALL):
        entries += await store.audit_entries(start, min(size, start + MAX_ENTRIES_PER_CALL))
    return entries


def assert_free_of(entries: Iterable[bytes], secrets: Iterable[bytes]) -> None:
    """No entry holds any of these byte strings, raw or in hex."""
    needles = [(s, s.hex().encode()) for s in secrets]
    for entry in entries:
        for raw, hexed in needles:
            assert raw not in entry and hexed not in entry, entry


def verify_log(entries: Sequence[bytes], size: int, root: bytes) -> None:
    assert len(entries) == size
    assert merkle.root([merkle.leaf_hash(e) for e in entries]) == root


# -- the store: what is logged, and when ----------------------------------------------


def test_every_change_appends_its_leaf_in_order(open_store: OpenStore) -> None:
    fra, deu = store_keys(30), store_keys(10)
    deu[0] = TaggedKey(fra[0].tag, os.urandom(16), fra[0].key_type)  # a standing match
    extra = store_keys(3)

    async def scenario(store: HubStore) -> None:
        first = await store_enroll(store, "FRA", "wanted", fra, policy_=LINKABLE)
        assert first.audit_index == 0
        second = await store_enroll(store, "DEU", "alerts", deu, policy_=LINKABLE)
        assert (second.audit_index, second.new_notices) == (1, 1)
        update = await store.update_dataset(
            "FRA", "wanted", 1, extra, [fra[5].handle, fra[6].handle, fra[5].handle]
        )
        assert (update.audit_index, update.version) == (3, 2)
        hit = await store.query("ITA", 1, queries([fra[1], *store_keys(4)]), include_own=False)
        miss = await store.query("ITA", 1, queries(store_keys(2)), include_own=False)
        assert (hit.audit_index, miss.audit_index) == (5, 6)
        refusal = await store.record_quota_refusal("ITA", "query")
        assert refusal == 7

        decoded = [decode_entry(e) for e in await all_entries(store)]
        assert [e.kind for e in decoded] == [
            EntryKind.ENROLLMENT,
            EntryKind.ENROLLMENT,
            EntryKind.STANDING_MATCH,
            EntryKind.REMOVAL,
            EntryKind.ENROLLMENT,
            EntryKind.QUERY,
            EntryKind.QUERY,
            EntryKind.QUOTA_REFUSAL,
        ]

        def fields(entry: AuditEntry) -> dict[str, object]:
            return dict(entry.fields)

        assert fields(decoded[0]) == {
            "bureau": "FRA",
            "dataset": "wanted",
            "version": 1,
            "count": 30,
            "digest": policy.digest_of(fra),
        }
        assert fields(decoded[2]) == {
            "match_id": decoded[2]["match_id"],
            "bureau": "DEU",
            "other": "FRA",
        }
        # An update: its removal leaf (handles named, once each), then its
        # additions as an enrollment delta of the same version.
        assert fields(decoded[3]) == {
            "bureau": "FRA",
            "dataset": "wanted",
            "version": 2,
            "count": 2,
        }
        assert fields(decoded[4]) == {
            "bureau": "FRA",
            "dataset": "wanted",
            "version": 2,
            "count": 3,
            "digest": policy.digest_of(extra),
        }
        assert fields(decoded[5]) == {"requester": "ITA", "tags": 5, "hits": 1}
        assert fields(decoded[6]) == {"requester": "ITA", "tags": 2, "hits": 0}
        assert fields(decoded[7]) == {"bureau": "ITA", "operation": "query"}
        assert all(e.time_ms > 0 for e in decoded)
        # The standing match's id is the one both notices carry.
        (notice,) = await store.read_notices("FRA", 0, 10)
        assert bytes.fromhex(notice.match_id) == decoded[2]["match_id"]
        assert_free_of(
            await all_entries(store),
            [k.tag for k in (*fra, *deu, *extra)] + [k.handle for k in (*fra, *deu, *extra)],
        )

    with_store(open_store, scenario)


def test_refused_changes_append_nothing(open_store: OpenStore) -> None:
    ks = store_keys(10)

    async def scenario(store: HubStore) -> None:
        await store_enroll(store, "FRA", "w", ks)
        spec = EnrollSpec("w", 1, DatasetPolicy(), replace=True)
        enrollment = await store.begin_enrollment("FRA", spec)
        await enrollment.add(store_keys(7000))
        with pytest.raises(InvalidInputError):
            await enrollment.commit(7000, bytes(32))  # a wrong digest
        with pytest.raises(FailedPreconditionError):
            await store.update_dataset("FRA", "w", 2, ks[:1], [])  # another epoch
        assert (await store.audit_head())[0] == 1
        empty = await store.update_dataset("FRA", "w", 1, [], [])
        assert empty.audit_index == 1  # an update always has its removal leaf
        assert decode_entry((await store.audit_entries(1, 2))[0])["count"] == 0

    with_store(open_store, scenario)


def test_log_survives_a_restart(open_store: OpenStore) -> None:
    async def first_run() -> tuple[int, bytes]:
        store = await open_store()
        try:
            for i in range(5):
                await store_enroll(store, "FRA", f"w{i}", store_keys(3))
            await store.query("DEU", 1, queries(store_keys(2)), include_own=False)
            return await store.audit_head()
        finally:
            await store.close()

    size, root = run(first_run())
    assert size == 6

    async def second_run(store: HubStore) -> None:
        assert await store.audit_head() == (size, root)
        result = await store_enroll(store, "DEU", "w", store_keys(4))
        assert result.audit_index == size  # appending continues
        new_size, new_root = await store.audit_head()
        assert new_size == size + 1
        proof = await store.audit_consistency_proof(size, new_size)
        merkle.verify_consistency(size, new_size, root, new_root, proof)
        verify_log(await all_entries(store), new_size, new_root)

    with_store(open_store, second_run)


def test_audit_arguments_name_what_is_wrong(open_store: OpenStore) -> None:
    async def scenario(store: HubStore) -> None:
        for i in range(3):
            await store_enroll(store, "FRA", f"w{i}", store_keys(1))
        cases: list[tuple[Awaitable[object], str]] = [
            (store.audit_entries(0, 4), "end: is 4, beyond the log size 3"),
            (store.audit_entries(2, 1), "start: is 2, after end 1"),
            (store.audit_inclusion_proof(0, 4), "tree_size"),
            (store.audit_inclusion_proof(0, 0), "tree_size"),
            (store.audit_inclusion_proof(2, 2), "leaf_index"),
            (store.audit_consistency_proof(1, 4), "new_size: is 4, beyond the log size 3"),
            (store.audit_consistency_proof(0, 2), "old_size"),
            (store.audit_consistency_proof(3, 2), "old_size"),
        ]
        for call, fragment in cases:
            with pytest.raises(InvalidInputError) as caught:
                await call
            assert fragment in str(caught.value)
        assert await store.audit_entries(1, 1) == []
        assert await store.audit_consistency_proof(2, 2) == []

    with_store(open_store, scenario)
    check_entries_range(0, MAX_ENTRIES_PER_CALL, MAX_ENTRIES_PER_CALL + 5)
    with pytest.raises(LimitExceededError, match="at most 1000 per call"):
        check_entries_range(0, MAX_ENTRIES_PER_CALL + 1, MAX_ENTRIES_PER_CALL + 5)


def test_tree_heads_are_signed_once_per_size_and_never_go_back_in_time(
    tmp_path: Path,
) -> None:
    pki.init_federation(tmp_path, "heads")
    hub_dir = pki.issue_hub(tmp_path)
    key = pki.load_ed25519_key(hub_dir / "audit-signing.key")
    listed = pki.load_directory(tmp_path / "directory.json", tmp_path / "ca" / "ca.crt")
    clock = iter([5_000, 4_000, 9_000])
    signer = TreeHeadSigner(key, clock=lambda: next(clock))
    log = merkle.MerkleLog()
    log.extend([b"a", b"b"])
    first = signer.sign(2, log.root())
    assert signer.sign(2, log.root()) is first  # cached: no second signature
    merkle.verify_tree_head(listed.hub_audit_key, first.head, first.signature)
    log.append(b"c")
    second = signer.sign(3, log.root())
    assert second.head.timestamp_ms == 5_000  # the clock went back; the head did not
    merkle.verify_tree_head(listed.hub_audit_key, second.head, second.signature)
    forged = replace(second.head, size=4)
    with pytest.raises(VerifyError):
        merkle.verify_tree_head(listed.hub_audit_key, forged, second.signature)
    with pytest.raises(FailedPreconditionError, match="audit_key"):
        TreeHeadSigner(None).sign(3, log.root())


# -- durability (a real kill -9) ---------------------------------------------------------

_CHILD = CHILD_OPEN + textwrap.dedent(
    """
    import asyncio, os, sys
    from hub.policy import DatasetPolicy, EnrollSpec, QueryTag, TaggedKey, digest_of
    from psi.identifiers import KeyType

    async def main():
        store = await open_store(sys.argv)
        spec = EnrollSpec("w", 1, DatasetPolicy(), replace=True)
        while True:
            ks = [TaggedKey(os.urandom(16), os.urandom(16), KeyType.VIN) for _ in range(300)]
            e = await store.begin_enrollment("FRA", spec)
            await e.add(ks)
            result = await e.commit(len(ks), digest_of(ks))
            print(result.version, result.audit_index, flush=True)
            probe = [QueryTag(k.tag, k.key_type) for k in ks[:3]]
            await store.query("DEU", 1, probe, include_own=False)

    asyncio.run(main())
    """
)


def test_kill_9_never_leaves_a_leaf_without_its_version(
    open_store: OpenStore, store_backend: StoreBackend
) -> None:
    acknowledged: list[tuple[int, int]] = []
    for kill_after in (3, 7, 11):
        with subprocess.Popen(
            [sys.executable, "-c", _CHILD, *store_backend.argv],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parent.parent,
        ) as child:
            try:
                assert child.stdout is not None
                for _ in range(kill_after):
                    version, index = child.stdout.readline().split()
                    acknowledged.append((int(version), int(index)))
                # Somewhere in the next enrollments or queries.
                time.sleep(random.uniform(0, 0.02))
            finally:
                child.send_signal(signal.SIGKILL)
                child.wait()

        async def after_crash(store: HubStore) -> None:
            (info,) = await store.list_datasets("FRA")
            entries = [decode_entry(e) for e in await all_entries(store)]
            enrolled = [
                (e["version"], i) for i, e in enumerate(entries) if e.kind is EntryKind.ENROLLMENT
            ]
            # Exactly one leaf per committed version, none for anything else.
            assert [v for v, _ in enrolled] == list(range(1, info.version + 1))
            # Every acknowledged version has the leaf it was told about.
            assert set(acknowledged) <= set(enrolled)
            assert all(e["requester"] == "DEU" for e in entries if e.kind is EntryKind.QUERY)
            size, root = await store.audit_head()
            verify_log(await all_entries(store), size, root)

        with_store(open_store, after_crash)
    assert store_backend.scalar("SELECT count(*) FROM staging") == 0


# -- the AuditLog service over gRPC ------------------------------------------------------


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    root = tmp_path_factory.mktemp("federation")
    pki.init_federation(root, "audit")
    hub_dir = pki.issue_hub(root)
    bureaus = {code: pki.issue_bureau(root, code) for code in BUREAUS}
    return Federation(root, hub_dir, bureaus, rogue=hub_dir)


@pytest.fixture
def config(federation: Federation, tmp_path: Path, store_backend: StoreBackend) -> HubConfig:
    return store_backend.configure(
        HubConfig(
            tls=pki.TlsFiles.in_folder(federation.hub),
            database=tmp_path / "hub.sqlite",
            listen="127.0.0.1:0",
            grace_period=2.0,
        )
    )


def audit_key(federation: Federation) -> bytes:
    directory = pki.load_directory(
        federation.root / "directory.json", federation.root / "ca" / "ca.crt"
    )
    return directory.hub_audit_key


async def signed_head(stub: audit_pb2_grpc.AuditLogAsyncStub, key: bytes) -> merkle.TreeHead:
    answer = await stub.GetTreeHead(audit_pb2.GetTreeHeadRequest(), timeout=5)
    head = merkle.TreeHead(size=answer.size, root=answer.root, timestamp_ms=answer.timestamp_ms)
    merkle.verify_tree_head(key, head, answer.signature)
    return head


async def entries_of(stub: audit_pb2_grpc.AuditLogAsyncStub, size: int) -> list[bytes]:
    """The entries one bureau may read (others empty), checked against the leaf hashes."""
    answer = await stub.GetEntries(audit_pb2.GetEntriesRequest(start=0, end=size), timeout=5)
    assert len(answer.entries) == len(answer.leaf_hashes) == size
    for entry, hashed in zip(answer.entries, answer.leaf_hashes, strict=True):
        assert not entry or merkle.leaf_hash(entry) == hashed
    return list(answer.entries)


async def leaf_hashes_of(stub: audit_pb2_grpc.AuditLogAsyncStub, size: int) -> list[bytes]:
    answer = await stub.GetEntries(audit_pb2.GetEntriesRequest(start=0, end=size), timeout=5)
    return list(answer.leaf_hashes)


def test_service_heads_entries_and_proofs_verify(federation: Federation, config: HubConfig) -> None:
    key = audit_key(federation)
    fra, deu, added = keys(40), keys(10), keys(2)

    async def scenario(hub: Hub) -> None:
        audit = {code: audit_pb2_grpc.AuditLogStub(ch) for code, ch in hub.channels.items()}
        empty = await signed_head(audit["ITA"], key)
        assert (empty.size, empty.root) == (0, merkle.EMPTY_ROOT)
        enrolled = await enroll(
            hub.FRA, "wanted", fra, policy_=common_pb2.DatasetPolicy(linkable=True)
        )
        linked = await enroll(
            hub.DEU,
            "alerts",
            [*deu, *shared(fra[:2])],
            policy_=common_pb2.DatasetPolicy(linkable=True),
        )
        update = await hub.FRA.UpdateDataset(
            hub_pb2.UpdateDatasetRequest(
                dataset="wanted", epoch=1, add=added, remove_handles=[fra[9].handle]
            ),
            timeout=5,
        )
        answer = await query(hub.ITA, [fra[3], *keys(3)])
        bulk = [
            hub_pb2.BulkMatchRequest(batch_id=i, epoch=1, tags=query_tags([fra[i], deu[i]]))
            for i in range(3)
        ]
        batches = [b async for b in hub.ITA.BulkMatch(iter(bulk), timeout=10)]
        indices = {
            "enrollment": enrolled.audit_index,
            "linked": linked.audit_index,
            "update": update.audit_index,
            "query": answer.audit_index,
            **{f"batch {b.batch_id}": b.audit_index for b in batches},
        }
        batch_leaves = sorted(indices.pop(f"batch {i}") for i in range(3))
        assert indices == {
            "enrollment": 0,
            "linked": 1,  # then two standing matches: 2, 3
            "update": 4,  # then the enrollment leaf of its additions: 5
            "query": 6,
        }
        # A bulk match looks several batches up at once: each gets its own
        # leaf, in the order their lookups finished.
        assert batch_leaves == [7, 8, 9]
        indices.update({f"batch {i}": leaf for i, leaf in enumerate(batch_leaves)})
        head = await signed_head(audit["DEU"], key)
        assert head.size == 10
        hashes = await leaf_hashes_of(audit["ITA"], head.size)
        assert merkle.root(hashes) == head.root
        views = {code: await entries_of(audit[code], head.size) for code in ("FRA", "DEU", "ITA")}
        # Each bureau reads only the entries of its own actions in full; nobody
        # reads the standing-match entries (they name two bureaus).
        readable = {code: [i for i, e in enumerate(v) if e] for code, v in views.items()}
        assert readable == {"FRA": [0, 4, 5], "DEU": [1], "ITA": [6, 7, 8, 9]}
        entries = [next((v[i] for v in views.values() if v[i]), b"") for i in range(head.size)]
        kinds = [decode_entry(e).kind.value if e else "withheld" for e in entries]
        assert kinds == [
            "enrollment", "enrollment", "withheld", "withheld", "removal",
            "enrollment", "query", "query", "query", "query",
        ]  # fmt: skip
        assert decode_entry(entries[6]).fields == {"requester": "ITA", "tags": 4, "hits": 1}
        for index in indices.values():
            proof = await audit["FRA"].GetInclusionProof(
                audit_pb2.GetInclusionProofRequest(leaf_index=index, tree_size=head.size),
                timeout=5,
            )
            merkle.verify_inclusion(
                merkle.leaf_hash(entries[index]), index, head.size, list(proof.hashes), head.root
            )
        # A new head is consistent with the old one.
        await query(hub.DEU, keys(1))
        newer = await signed_head(audit["FRA"], key)
        assert newer.size == head.size + 1 and newer.timestamp_ms >= head.timestamp_ms
        proof = await audit["FRA"].GetConsistencyProof(
            audit_pb2.GetConsistencyProofRequest(old_size=head.size, new_size=newer.size),
            timeout=5,
        )
        merkle.verify_consistency(head.size, newer.size, head.root, newer.root, list(proof.hashes))
        # Same size, same head (signed once).
        again = await audit["ITA"].GetTreeHead(audit_pb2.GetTreeHeadRequest(), timeout=5)
        assert (again.size, again.timestamp_ms) == (newer.size, newer.timestamp_ms)
        # Arguments beyond the log are refused, naming the argument.
        size = newer.size
        refusals: list[tuple[Awaitable[Any], str]] = [
            (audit["ITA"].GetEntries(audit_pb2.GetEntriesRequest(start=0, end=size + 1)), "end"),
            (audit["ITA"].GetEntries(audit_pb2.GetEntriesRequest(start=3, end=2)), "start"),
            (
                audit["ITA"].GetInclusionProof(
                    audit_pb2.GetInclusionProofRequest(leaf_index=0, tree_size=size + 1)
                ),
                "tree_size",
            ),
            (
                audit["ITA"].GetConsistencyProof(
                    audit_pb2.GetConsistencyProofRequest(old_size=1, new_size=size + 1)
                ),
                "new_size",
            ),
            (
                audit["ITA"].GetConsistencyProof(
                    audit_pb2.GetConsistencyProofRequest(old_size=size + 1, new_size=size + 2)
                ),
                "new_size",
            ),
        ]
        for call, argument in refusals:
            await fails(call, grpc.StatusCode.INVALID_ARGUMENT, argument)
        # No entry holds a tag or a handle of anything sent.
        assert_free_of(
            await entries_of(audit["ITA"], size),
            [k.tag for k in (*fra, *deu, *added)] + [k.handle for k in (*fra, *deu, *added)],
        )

    run_with_hub(federation, config, scenario)


def test_service_log_survives_a_restart(federation: Federation, config: HubConfig) -> None:
    key = audit_key(federation)
    seen: list[merkle.TreeHead] = []

    async def first(hub: Hub) -> None:
        await enroll(hub.FRA, "w", keys(5))
        await query(hub.DEU, keys(2))
        seen.append(await signed_head(audit_pb2_grpc.AuditLogStub(hub.channels["ITA"]), key))

    async def second(hub: Hub) -> None:
        stub = audit_pb2_grpc.AuditLogStub(hub.channels["DEU"])
        old = seen[0]
        same = await signed_head(stub, key)
        assert (same.size, same.root) == (old.size, old.root)  # rebuilt from the stored leaves
        assert (await query(hub.DEU, keys(2))).audit_index == old.size
        new = await signed_head(stub, key)
        proof = await stub.GetConsistencyProof(
            audit_pb2.GetConsistencyProofRequest(old_size=old.size, new_size=new.size)
        )
        merkle.verify_consistency(old.size, new.size, old.root, new.root, list(proof.hashes))

    run_with_hub(federation, config, first)
    run_with_hub(federation, config, second)


def test_hub_refuses_an_audit_key_the_directory_does_not_list(
    federation: Federation, config: HubConfig, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    pki.init_federation(other, "other")
    wrong = pki.issue_hub(other) / "audit-signing.key"
    bad = replace(config, federation=federation.root, audit_key=wrong)

    async def main() -> None:
        await serve(bad, stop=asyncio.Event())

    with pytest.raises(ConfigError, match="not the hub audit key the federation directory lists"):
        asyncio.run(main())
