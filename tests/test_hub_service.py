"""The hub end to end: the real server (`hub.server.serve`) on 127.0.0.1:0
with certificates made by `bureau_agent.pki`, a real store (a SQLite file,
or a database on a real PostgreSQL server: `config` is parametrized over
both), and grpc.aio clients for three bureaus."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from blindmatch.v1 import common_pb2, hub_pb2, hub_pb2_grpc
from bureau_agent import pki
from bureau_agent.local_api import bulk_answer_matches
from hub import policy
from hub._store_sql import _CHUNK
from hub.config import HubConfig
from hub.errors import ConfigError
from hub.server import serve
from tests.stores import StoreBackend

PASSPORT = common_pb2.KEY_TYPE_PASSPORT
PERSON = common_pb2.KEY_TYPE_PERSON
UNSPECIFIED = common_pb2.KEY_TYPE_UNSPECIFIED


def unknown_type(code: int) -> common_pb2.KeyType.ValueType:
    """A key type number the enum does not name (proto3 keeps it on the wire)."""
    return common_pb2.KeyType.ValueType(code)


PHONETIC = common_pb2.KEY_TYPE_PERSON_PHONETIC
LINKABLE = common_pb2.DatasetPolicy(linkable=True)
BUREAUS = ("FRA", "DEU", "ITA")


@dataclass(frozen=True)
class Federation:
    root: Path
    hub: Path
    bureaus: dict[str, Path]
    rogue: Path  # a bureau "FRA" certified by another federation's CA


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    root = tmp_path_factory.mktemp("federation")
    pki.init_federation(root, "test")
    hub_dir = pki.issue_hub(root)
    bureaus = {code: pki.issue_bureau(root, code) for code in BUREAUS}
    rogue_root = tmp_path_factory.mktemp("rogue")
    pki.init_federation(rogue_root, "rogue")
    return Federation(root, hub_dir, bureaus, pki.issue_bureau(rogue_root, "FRA"))


@pytest.fixture
def config(federation: Federation, tmp_path: Path, store_backend: StoreBackend) -> HubConfig:
    return store_backend.configure(
        HubConfig(
            tls=pki.TlsFiles.in_folder(federation.hub),
            database=tmp_path / "hub.sqlite",
            listen="127.0.0.1:0",
            address_file=tmp_path / "hub.address",
            grace_period=2.0,
        )
    )


@dataclass
class Hub:
    address: str
    stubs: dict[str, hub_pb2_grpc.HubAsyncStub]
    channels: dict[str, grpc.aio.Channel]

    def __getattr__(self, code: str) -> hub_pb2_grpc.HubAsyncStub:
        return self.stubs[code]


Scenario = Callable[[Hub], Awaitable[None]]


def run_with_hub(federation: Federation, config: HubConfig, scenario: Scenario) -> None:
    """Start the hub, connect FRA, DEU and ITA, run `scenario`, stop the hub."""

    async def main() -> None:
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        stop = asyncio.Event()
        server = asyncio.create_task(serve(config, ready=ready.set_result, stop=stop))
        waiting: list[asyncio.Future[Any]] = [server, ready]
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if server in done:
            server.result()  # raises what made the server fail
        address = ready.result()
        channels = {
            code: grpc.aio.secure_channel(
                address, pki.TlsFiles.in_folder(folder).channel_credentials()
            )
            for code, folder in federation.bureaus.items()
        }
        try:
            stubs = {code: hub_pb2_grpc.HubStub(ch) for code, ch in channels.items()}
            await asyncio.wait_for(scenario(Hub(address, stubs, channels)), 30)
        finally:
            for channel in channels.values():
                await channel.close()
            stop.set()
            await asyncio.wait_for(server, 10)

    asyncio.run(main())


# -- client helpers -------------------------------------------------------------------


def keys(n: int, key_type: common_pb2.KeyType.ValueType = PASSPORT) -> list[common_pb2.TaggedKey]:
    return [
        common_pb2.TaggedKey(tag=os.urandom(16), handle=os.urandom(16), key_type=key_type)
        for _ in range(n)
    ]


def shared(ks: Sequence[common_pb2.TaggedKey]) -> list[common_pb2.TaggedKey]:
    """The same tags under fresh handles: another bureau's records with the same keys."""
    return [common_pb2.TaggedKey(tag=k.tag, handle=os.urandom(16), key_type=k.key_type) for k in ks]


def digest(ks: Sequence[common_pb2.TaggedKey]) -> bytes:
    return policy.digest_of(
        policy.TaggedKey(k.tag, k.handle, policy.key_type_from_code(k.key_type)) for k in ks
    )


def enroll_stream(
    name: str,
    ks: Sequence[common_pb2.TaggedKey],
    *,
    epoch: int = 1,
    policy_: common_pb2.DatasetPolicy | None = None,
    category: str = "",
    replace: bool = False,
    batch: int = 1000,
    trailer: hub_pb2.EnrollTrailer | None = None,
) -> list[hub_pb2.EnrollRequest]:
    header = hub_pb2.EnrollHeader(
        dataset=name, epoch=epoch, policy=policy_, category=category, replace=replace
    )
    return [
        hub_pb2.EnrollRequest(header=header),
        *(
            hub_pb2.EnrollRequest(batch=hub_pb2.TagBatch(keys=ks[i : i + batch]))
            for i in range(0, len(ks), batch)
        ),
        hub_pb2.EnrollRequest(
            trailer=trailer or hub_pb2.EnrollTrailer(tag_count=len(ks), digest=digest(ks))
        ),
    ]


async def enroll(
    stub: hub_pb2_grpc.HubAsyncStub, name: str, ks: Sequence[common_pb2.TaggedKey], **kw: Any
) -> hub_pb2.EnrollResponse:
    return await stub.Enroll(iter(enroll_stream(name, ks, **kw)), timeout=10)


def query_tags(ks: Sequence[common_pb2.TaggedKey]) -> list[common_pb2.QueryTag]:
    return [common_pb2.QueryTag(tag=k.tag, key_type=k.key_type) for k in ks]


async def query(
    stub: hub_pb2_grpc.HubAsyncStub,
    ks: Sequence[common_pb2.TaggedKey],
    *,
    epoch: int = 1,
    include_own: bool = False,
) -> hub_pb2.QueryResponse:
    return await stub.Query(
        hub_pb2.QueryRequest(epoch=epoch, tags=query_tags(ks), include_own=include_own),
        timeout=10,
    )


async def hit_indices(stub: hub_pb2_grpc.HubAsyncStub, ks: Sequence[Any], **kw: Any) -> list[int]:
    return sorted(m.query_index for m in (await query(stub, ks, **kw)).matches)


async def fails(call: Awaitable[Any], code: grpc.StatusCode, *fragments: str) -> str:
    """Await `call`, which must fail with `code` and a message naming each fragment."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() is code, caught.value.details()
    details = caught.value.details() or ""
    for fragment in fragments:
        assert fragment in details, details
    return details


# -- matching -----------------------------------------------------------------------------


def test_hits_across_bureaus_never_own_unless_asked(
    federation: Federation, config: HubConfig
) -> None:
    fra, deu = keys(50), keys(20, PHONETIC)

    async def scenario(hub: Hub) -> None:
        assert (await enroll(hub.FRA, "watchlist", fra)).tag_count == 50
        await enroll(hub.DEU, "watchlist", deu)
        asked = [*keys(5), fra[10], deu[3], fra[49]]
        answer = await query(hub.ITA, asked)
        assert answer.datasets_searched == 2
        by_index = {m.query_index: m for m in answer.matches}
        assert sorted(by_index) == [5, 6, 7]
        assert by_index[5].key_type == PASSPORT
        assert by_index[5].strength == common_pb2.STRENGTH_EXACT
        assert by_index[6].key_type == PHONETIC
        assert by_index[6].strength == common_pb2.STRENGTH_CANDIDATE
        assert len({m.match_id for m in answer.matches}) == 3
        again = await query(hub.ITA, asked)
        assert not {m.match_id for m in again.matches} & {m.match_id for m in answer.matches}
        # The caller's own datasets only with include_own.
        own = await query(hub.FRA, asked)
        assert [m.query_index for m in own.matches] == [6]
        assert own.datasets_searched == 1
        assert await hit_indices(hub.FRA, asked, include_own=True) == [5, 6, 7]

    run_with_hub(federation, config, scenario)


def test_policy_masks_owner_and_category(federation: Federation, config: HubConfig) -> None:
    hidden, shown, owner_only = keys(2), keys(2), keys(2)

    async def scenario(hub: Hub) -> None:
        await enroll(hub.FRA, "secret-alpha", hidden, category="stolen-passports")
        await enroll(
            hub.DEU,
            "secret-beta",
            shown,
            category="fugitives",
            policy_=common_pb2.DatasetPolicy(reveal_owner=True, reveal_category=True),
        )
        await enroll(
            hub.ITA, "secret-gamma", owner_only, policy_=common_pb2.DatasetPolicy(reveal_owner=True)
        )
        (a, b, c) = (
            await query(hub.FRA, [hidden[0], shown[0], owner_only[0]], include_own=True)
        ).matches
        assert not a.HasField("owner") and not a.HasField("category")
        assert (b.owner, b.category) == ("DEU", "fugitives")
        assert c.owner == "ITA" and not c.HasField("category")
        # Nothing in an answer names a dataset.
        for match in (a, b, c):
            assert "secret" not in str(match)

    run_with_hub(federation, config, scenario)


def test_only_datasets_of_the_request_epoch_match(
    federation: Federation, config: HubConfig
) -> None:
    old, new = keys(3), keys(3)

    async def scenario(hub: Hub) -> None:
        await enroll(hub.FRA, "old", old, epoch=1)
        await enroll(hub.FRA, "new", new, epoch=2)
        assert await hit_indices(hub.DEU, [*old, *new], epoch=1) == [0, 1, 2]
        assert await hit_indices(hub.DEU, [*old, *new], epoch=2) == [3, 4, 5]
        assert await hit_indices(hub.DEU, [*old, *new], epoch=3) == []
        # Moving a dataset to a new epoch: re-enroll with replace.
        await enroll(hub.FRA, "old", old, epoch=2, replace=True)
        assert await hit_indices(hub.DEU, old, epoch=1) == []
        assert await hit_indices(hub.DEU, old, epoch=2) == [0, 1, 2]
        status = await hub.ITA.GetStatus(hub_pb2.GetStatusRequest(), timeout=5)
        assert list(status.epochs) == [2]

    run_with_hub(federation, config, scenario)


def test_bulk_match_answers_each_batch_in_order(federation: Federation, config: HubConfig) -> None:
    fra = keys(30)

    async def scenario(hub: Hub) -> None:
        await enroll(hub.FRA, "w", fra)
        requests = [
            hub_pb2.BulkMatchRequest(batch_id=100 + i, epoch=1, tags=query_tags([*keys(2), fra[i]]))
            for i in range(10)
        ]
        answers = [a async for a in hub.DEU.BulkMatch(iter(requests), timeout=10)]
        assert [a.batch_id for a in answers] == list(range(100, 110))
        assert all([m.query_index for m in a.matches] == [2] for a in answers)
        assert not any(a.HasField("match_columns") for a in answers)
        # The same batches answered in columns: the same hits, new match ids.
        for r in requests:
            r.answer_in_columns = True
        in_columns = [a async for a in hub.DEU.BulkMatch(iter(requests), timeout=10)]
        assert [a.batch_id for a in in_columns] == list(range(100, 110))
        for a, b in zip(answers, in_columns, strict=True):
            assert not b.matches and b.HasField("match_columns")
            [match] = bulk_answer_matches(b, 3)
            assert match.query_index == 2 and match.match_id != a.matches[0].match_id
            a.matches[0].match_id = match.match_id
            assert match == a.matches[0]
        bad = [
            *requests[:2],
            hub_pb2.BulkMatchRequest(
                batch_id=7, epoch=1, tags=[common_pb2.QueryTag(tag=b"x", key_type=PASSPORT)]
            ),
        ]
        call = hub.DEU.BulkMatch(iter(bad), timeout=10)
        seen = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for answer in call:
                seen.append(answer.batch_id)
        assert seen == [100, 101]
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "batch_id 7: tags[0].tag" in (caught.value.details() or "")

    run_with_hub(federation, config, scenario)


def key_columns(ks: Sequence[common_pb2.TaggedKey]) -> common_pb2.TaggedKeyColumns:
    return common_pb2.TaggedKeyColumns(
        tags=b"".join(k.tag for k in ks),
        handles=b"".join(k.handle for k in ks),
        key_types=[k.key_type for k in ks],
    )


def test_column_batches_match_message_batches(federation: Federation, config: HubConfig) -> None:
    """The columnar forms of TagBatch and BulkMatchRequest carry the same
    keys as the per-key messages: mixed in one stream, under one digest."""
    fra = [*keys(40), *keys(20, PERSON)]

    async def scenario(hub: Hub) -> None:
        header = hub_pb2.EnrollHeader(dataset="w", epoch=1)
        stream = [
            hub_pb2.EnrollRequest(header=header),
            hub_pb2.EnrollRequest(batch=hub_pb2.TagBatch(keys=fra[:25])),
            hub_pb2.EnrollRequest(batch=hub_pb2.TagBatch(columns=key_columns(fra[25:]))),
            hub_pb2.EnrollRequest(
                trailer=hub_pb2.EnrollTrailer(tag_count=len(fra), digest=digest(fra))
            ),
        ]
        response = await hub.FRA.Enroll(iter(stream), timeout=10)
        assert response.tag_count == 60
        asked = [*keys(3), fra[2], fra[30], *keys(2), fra[59]]
        # The right tag under another key type is no hit.
        asked.append(common_pb2.TaggedKey(tag=fra[50].tag, key_type=PASSPORT))
        bulk = hub_pb2.BulkMatchRequest(
            batch_id=1,
            epoch=1,
            columns=common_pb2.QueryTagColumns(
                tags=b"".join(k.tag for k in asked), key_types=[k.key_type for k in asked]
            ),
        )
        [answer] = [a async for a in hub.DEU.BulkMatch(iter([bulk]), timeout=10)]
        assert sorted(m.query_index for m in answer.matches) == [3, 4, 7]
        assert sorted(m.query_index for m in answer.matches) == await hit_indices(hub.DEU, asked)
        assert {m.key_type for m in answer.matches if m.query_index == 7} == {PERSON}

        # Bad columns: each error names the batch, the column and, where it can, the key.
        def enrolling(columns: common_pb2.TaggedKeyColumns, **extra: Any) -> Any:
            batch = hub_pb2.TagBatch(columns=columns, **extra)
            return hub.DEU.Enroll(
                iter([hub_pb2.EnrollRequest(header=header), hub_pb2.EnrollRequest(batch=batch)]),
                timeout=10,
            )

        good = key_columns(keys(4))
        cases: list[tuple[common_pb2.TaggedKeyColumns, dict[str, Any], list[str]]] = [
            (
                common_pb2.TaggedKeyColumns(
                    tags=good.tags[:-1], handles=good.handles, key_types=good.key_types
                ),
                {},
                ["batch 0: columns.tags", "63 bytes", "16-byte"],
            ),
            (
                common_pb2.TaggedKeyColumns(
                    tags=good.tags, handles=good.handles[:32], key_types=good.key_types
                ),
                {},
                ["batch 0: columns.handles", "2 handles for 4 tags"],
            ),
            (
                common_pb2.TaggedKeyColumns(
                    tags=good.tags, handles=good.handles, key_types=[PASSPORT] * 3
                ),
                {},
                ["batch 0: columns.key_types", "3 entries for 4 tags"],
            ),
            (
                common_pb2.TaggedKeyColumns(
                    tags=good.tags,
                    handles=good.handles,
                    key_types=[PASSPORT, PASSPORT, UNSPECIFIED, unknown_type(99)],
                ),
                {},
                ["batch 0: columns.key_types[2]", "unspecified"],
            ),
            (good, {"keys": keys(1)}, ["batch 0", "both keys and columns"]),
        ]
        for columns, extra, fragments in cases:
            await fails(enrolling(columns, **extra), grpc.StatusCode.INVALID_ARGUMENT, *fragments)
        too_many = common_pb2.QueryTagColumns(
            tags=bytes(16 * 10_001), key_types=[PASSPORT] * 10_001
        )
        bad_bulk = [
            hub_pb2.BulkMatchRequest(batch_id=5, epoch=1, columns=too_many),
            hub_pb2.BulkMatchRequest(
                batch_id=6,
                epoch=1,
                columns=common_pb2.QueryTagColumns(tags=bytes(16), key_types=[unknown_type(77)]),
            ),
        ]
        for request, fragments in zip(
            bad_bulk,
            [["batch_id 5", "at most 10000"], ["batch_id 6: columns.key_types[0]"]],
            strict=True,
        ):
            call = hub.DEU.BulkMatch(iter([request]), timeout=10)
            await fails(_drain(call), grpc.StatusCode.INVALID_ARGUMENT, *fragments)
        # Nothing was enrolled by any of that.
        assert list((await hub.DEU.ListDatasets(hub_pb2.ListDatasetsRequest())).datasets) == []

    run_with_hub(federation, config, scenario)


async def _drain(call: Any) -> list[Any]:
    return [answer async for answer in call]


# -- datasets and versions --------------------------------------------------------------------


def test_datasets_belong_to_their_owner(federation: Federation, config: HubConfig) -> None:
    async def scenario(hub: Hub) -> None:
        await enroll(hub.FRA, "watchlist", keys(3))
        await enroll(hub.DEU, "watchlist", keys(4))  # same name, another owner
        await fails(
            enroll(hub.FRA, "DEU/watchlist", keys(1), replace=True),
            grpc.StatusCode.PERMISSION_DENIED,
            "DEU/watchlist",
        )
        update = hub_pb2.UpdateDatasetRequest(dataset="DEU/watchlist", epoch=1, add=keys(1))
        await fails(hub.FRA.UpdateDataset(update, timeout=5), grpc.StatusCode.PERMISSION_DENIED)
        # Unknown or not, another bureau's name gets the same answer.
        update = hub_pb2.UpdateDatasetRequest(dataset="DEU/none", epoch=1, add=keys(1))
        await fails(hub.FRA.UpdateDataset(update, timeout=5), grpc.StatusCode.PERMISSION_DENIED)
        update = hub_pb2.UpdateDatasetRequest(dataset="FRA/watchlist", epoch=1, add=keys(2))
        assert (await hub.FRA.UpdateDataset(update, timeout=5)).tag_count == 5
        listed = (await hub.FRA.ListDatasets(hub_pb2.ListDatasetsRequest(), timeout=5)).datasets
        assert [(d.owner, d.name, d.tag_count, d.version) for d in listed] == [
            ("FRA", "watchlist", 5, 2)
        ]
        assert listed[0].updated_unix_ms > 0
        await fails(
            enroll(hub.FRA, "watchlist", keys(1)), grpc.StatusCode.ALREADY_EXISTS, "replace"
        )
        listed = (await hub.ITA.ListDatasets(hub_pb2.ListDatasetsRequest(), timeout=5)).datasets
        assert list(listed) == []

    run_with_hub(federation, config, scenario)


def test_replace_is_atomic_for_readers(federation: Federation, config: HubConfig) -> None:
    n = 2 * _CHUNK + 2000  # more than two staging chunks
    old, new = keys(n), keys(n)
    sample = sorted({*range(0, n, 97), n - 1})
    probe = [old[i] for i in sample] + [new[i] for i in sample]

    async def scenario(hub: Hub) -> None:
        await enroll(hub.FRA, "w", old, batch=5000)
        observed: list[tuple[int, int]] = []

        async def reader() -> None:
            while True:
                hits = await hit_indices(hub.DEU, probe)
                observed.append(
                    (sum(i < len(sample) for i in hits), sum(i >= len(sample) for i in hits))
                )
                if observed[-1][1]:
                    return

        readers = asyncio.create_task(reader())
        response = await enroll(hub.FRA, "w", new, replace=True, batch=2500)
        await asyncio.wait_for(readers, 10)
        assert response.version == 2
        # Every answer saw one whole version: all old keys or all new ones.
        assert set(observed) <= {(len(sample), 0), (0, len(sample))}, set(observed)
        assert observed[0] == (len(sample), 0) and observed[-1] == (0, len(sample))
        assert len(observed) > 2

    run_with_hub(federation, config, scenario)


def test_interrupted_enrollments_leave_the_previous_version(
    federation: Federation, config: HubConfig
) -> None:
    old, new = keys(10), keys(_CHUNK + 1000)

    async def still_old(hub: Hub) -> None:
        assert await hit_indices(hub.DEU, old) == list(range(10))
        assert await hit_indices(hub.DEU, new[:20]) == []

    async def scenario(hub: Hub) -> None:
        await enroll(hub.FRA, "w", old)
        # A wrong digest.
        bad = hub_pb2.EnrollTrailer(tag_count=len(new), digest=digest(new[::-1]))
        await fails(
            enroll(hub.FRA, "w", new, replace=True, trailer=bad),
            grpc.StatusCode.INVALID_ARGUMENT,
            "trailer.digest",
            "nothing was committed",
        )
        await still_old(hub)
        # A stream that stops without a trailer.
        await fails(
            hub.FRA.Enroll(iter(enroll_stream("w", new, replace=True)[:-1]), timeout=10),
            grpc.StatusCode.INVALID_ARGUMENT,
            "without a trailer",
        )
        await still_old(hub)
        # A client that goes away mid-stream.
        gate = asyncio.Event()

        async def stream() -> AsyncIterator[hub_pb2.EnrollRequest]:
            for message in enroll_stream("w", new, replace=True)[:-1]:
                yield message
            gate.set()
            await asyncio.sleep(30)

        call = hub.FRA.Enroll(stream(), timeout=20)
        await asyncio.wait_for(gate.wait(), 10)
        await asyncio.sleep(0.2)  # let the hub stage the batches
        call.cancel()
        await still_old(hub)
        # A header that is not first.
        messages = enroll_stream("w", new[:2], replace=True)
        await fails(
            hub.FRA.Enroll(iter([messages[1], *messages]), timeout=10),
            grpc.StatusCode.INVALID_ARGUMENT,
            "start with a header",
        )
        # The hub dropped the cancelled stream's staging: replacing works again.
        for _ in range(100):
            try:
                response = await enroll(hub.FRA, "w", new, replace=True)
                break
            except grpc.aio.AioRpcError as exc:
                assert exc.code() is grpc.StatusCode.ABORTED  # the abort still running
                await asyncio.sleep(0.05)
        assert response.version == 2
        assert await hit_indices(hub.DEU, [*old, *new[:20]]) == list(range(10, 30))

    run_with_hub(federation, config, scenario)


def test_update_removes_at_once_and_checks_the_epoch(
    federation: Federation, config: HubConfig
) -> None:
    base, extra = keys(5), keys(3)

    async def scenario(hub: Hub) -> None:
        await enroll(hub.FRA, "w", base)
        request = hub_pb2.UpdateDatasetRequest(
            dataset="w", epoch=1, add=extra, remove_handles=[base[0].handle, base[4].handle]
        )
        response = await hub.FRA.UpdateDataset(request, timeout=5)
        assert (response.version, response.added, response.removed) == (2, 3, 2)
        assert await hit_indices(hub.DEU, [*base, *extra]) == [1, 2, 3, 5, 6, 7]
        await fails(
            hub.FRA.UpdateDataset(
                hub_pb2.UpdateDatasetRequest(dataset="w", epoch=2, add=keys(1)), timeout=5
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "epoch 1",
            "epoch 2",
        )
        await fails(
            hub.FRA.UpdateDataset(
                hub_pb2.UpdateDatasetRequest(dataset="nope", epoch=1, add=keys(1)), timeout=5
            ),
            grpc.StatusCode.NOT_FOUND,
            "nope",
        )
        await fails(
            hub.FRA.UpdateDataset(
                hub_pb2.UpdateDatasetRequest(dataset="w", epoch=1, remove_handles=[b"short"]),
                timeout=5,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "remove_handles[0]",
        )

    run_with_hub(federation, config, scenario)


def test_invalid_requests_name_the_field_and_limit(
    federation: Federation, config: HubConfig
) -> None:
    async def scenario(hub: Hub) -> None:
        too_many = [common_pb2.QueryTag(tag=bytes(16), key_type=PASSPORT)] * 10_001
        await fails(
            hub.DEU.Query(hub_pb2.QueryRequest(epoch=1, tags=too_many), timeout=10),
            grpc.StatusCode.INVALID_ARGUMENT,
            "10001",
            "at most 10000",
        )
        tags = query_tags(keys(5))
        tags[3] = common_pb2.QueryTag(tag=bytes(15), key_type=PASSPORT)
        await fails(
            hub.DEU.Query(hub_pb2.QueryRequest(epoch=1, tags=tags), timeout=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "tags[3].tag",
            "16 bytes, got 15",
        )
        tags[3] = common_pb2.QueryTag(tag=bytes(16))
        await fails(
            hub.DEU.Query(hub_pb2.QueryRequest(epoch=1, tags=tags), timeout=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "tags[3].key_type",
        )
        await fails(
            hub.DEU.Query(hub_pb2.QueryRequest(tags=tags[:1]), timeout=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "epoch",
        )
        ks = keys(3)
        ks[2] = common_pb2.TaggedKey(tag=bytes(16), handle=bytes(17), key_type=PASSPORT)
        await fails(
            enroll(hub.DEU, "w", ks, batch=2),
            grpc.StatusCode.INVALID_ARGUMENT,
            "batch 1: keys[0].handle",
        )
        await fails(
            enroll(hub.DEU, "w", keys(10_001), batch=10_001),
            grpc.StatusCode.INVALID_ARGUMENT,
            "at most 10000",
        )
        await fails(
            enroll(hub.DEU, "bad/name", keys(1)), grpc.StatusCode.PERMISSION_DENIED, "bad/name"
        )
        # Nothing was enrolled by any of that.
        assert list((await hub.DEU.ListDatasets(hub_pb2.ListDatasetsRequest())).datasets) == []

    run_with_hub(federation, config, scenario)


# -- standing matches ----------------------------------------------------------------------------


def test_standing_match_notices(federation: Federation, config: HubConfig) -> None:
    fra = keys(20)
    deu = [*keys(5), *shared(fra[3:5])]

    async def notices(stub: hub_pb2_grpc.HubAsyncStub, after: int = 0) -> list[common_pb2.Notice]:
        request = hub_pb2.WatchNoticesRequest(after_sequence=after)
        return [n async for n in stub.WatchNotices(request, timeout=5)]

    async def scenario(hub: Hub) -> None:
        await enroll(
            hub.FRA,
            "wanted",
            fra,
            policy_=common_pb2.DatasetPolicy(linkable=True, reveal_owner=True),
        )
        await enroll(hub.ITA, "private", shared(fra[:3]))  # not linkable: never notified
        response = await enroll(
            hub.DEU,
            "alerts",
            deu,
            category="fugitives",
            policy_=common_pb2.DatasetPolicy(linkable=True, reveal_category=True),
        )
        assert response.new_notices == 2
        to_fra, to_deu = await notices(hub.FRA), await notices(hub.DEU)
        assert [n.sequence for n in to_fra] == [1, 2]
        assert {n.match_id for n in to_fra} == {n.match_id for n in to_deu}
        assert {(n.dataset, n.handle) for n in to_fra} == {("wanted", k.handle) for k in fra[3:5]}
        assert {(n.dataset, n.handle) for n in to_deu} == {("alerts", k.handle) for k in deu[5:]}
        for n in to_fra:  # DEU's policy: category, not owner
            assert n.other_category == "fugitives" and not n.HasField("other_owner")
            assert n.strength == common_pb2.STRENGTH_EXACT and n.created_unix_ms > 0
        for n in to_deu:  # FRA's policy: owner, not category
            assert n.other_owner == "FRA" and not n.HasField("other_category")
        assert await notices(hub.ITA) == []
        # Re-enrolling the same handles makes no new notice.
        again = await enroll(
            hub.DEU, "alerts", deu, replace=True, category="fugitives", policy_=LINKABLE
        )
        assert again.new_notices == 0
        assert len(await notices(hub.FRA)) == 2
        # A follower gets a new notice as soon as it is committed.
        follow = hub.FRA.WatchNotices(
            hub_pb2.WatchNoticesRequest(after_sequence=2, follow=True), timeout=10
        )
        await asyncio.sleep(0.1)  # the follower is now waiting
        update = hub_pb2.UpdateDatasetRequest(dataset="alerts", epoch=1, add=shared(fra[9:10]))
        assert (await hub.DEU.UpdateDataset(update, timeout=5)).new_notices == 1
        pushed = await asyncio.wait_for(follow.read(), 5)
        assert isinstance(pushed, common_pb2.Notice)
        assert (pushed.sequence, pushed.handle) == (3, fra[9].handle)
        follow.cancel()
        # Notices are kept once read: an agent can read them all again.
        assert [n.sequence for n in await notices(hub.FRA)] == [1, 2, 3]
        assert [n.sequence for n in await notices(hub.FRA, after=1)] == [2, 3]

    run_with_hub(federation, config, scenario)


def test_follow_streams_end_when_the_hub_stops(federation: Federation, config: HubConfig) -> None:
    async def main() -> None:
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        stop = asyncio.Event()
        server = asyncio.create_task(serve(config, ready=ready.set_result, stop=stop))
        address = await ready
        creds = pki.TlsFiles.in_folder(federation.bureaus["FRA"]).channel_credentials()
        async with grpc.aio.secure_channel(address, creds) as channel:
            follow = hub_pb2_grpc.HubStub(channel).WatchNotices(
                hub_pb2.WatchNoticesRequest(follow=True), timeout=20
            )
            await asyncio.sleep(0.2)
            started = time.monotonic()
            stop.set()
            assert [n async for n in follow] == []  # ends cleanly, not after the grace period
            await asyncio.wait_for(server, 10)
            assert time.monotonic() - started < config.grace_period

    asyncio.run(main())


# -- identity, health, status ----------------------------------------------------------------


def test_tls_handshake_refuses_strangers(federation: Federation, config: HubConfig) -> None:
    ca = (federation.root / "ca" / "ca.crt").read_bytes()
    rogue = pki.TlsFiles.in_folder(federation.rogue)

    async def scenario(hub: Hub) -> None:
        attempts = {
            "no client certificate": grpc.ssl_channel_credentials(root_certificates=ca),
            "another federation's certificate": grpc.ssl_channel_credentials(
                root_certificates=ca,
                private_key=rogue.key.read_bytes(),
                certificate_chain=rogue.cert.read_bytes(),
            ),
        }
        for what, creds in attempts.items():
            async with grpc.aio.secure_channel(hub.address, creds) as channel:
                call = hub_pb2_grpc.HubStub(channel).GetStatus(
                    hub_pb2.GetStatusRequest(), timeout=5
                )
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call
                assert caught.value.code() is grpc.StatusCode.UNAVAILABLE, what
        async with grpc.aio.insecure_channel(hub.address) as channel:
            await fails(
                hub_pb2_grpc.HubStub(channel).GetStatus(hub_pb2.GetStatusRequest(), timeout=5),
                grpc.StatusCode.UNAVAILABLE,
            )
        # The hub's own certificate is not a bureau's.
        creds = pki.TlsFiles.in_folder(federation.hub).channel_credentials()
        async with grpc.aio.secure_channel(hub.address, creds) as channel:
            await fails(
                hub_pb2_grpc.HubStub(channel).GetStatus(hub_pb2.GetStatusRequest(), timeout=5),
                grpc.StatusCode.PERMISSION_DENIED,
                "not a bureau",
            )

    run_with_hub(federation, config, scenario)


def test_health_status_and_address_file(federation: Federation, config: HubConfig) -> None:
    async def scenario(hub: Hub) -> None:
        health = health_pb2_grpc.HealthStub(hub.channels["ITA"])
        for service in ("", "blindmatch.v1.Hub"):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert config.address_file is not None
        assert config.address_file.read_text().strip() == hub.address
        await enroll(hub.FRA, "a", keys(3), epoch=4)
        await enroll(hub.DEU, "b", keys(2), epoch=2)
        status = await hub.ITA.GetStatus(hub_pb2.GetStatusRequest(), timeout=5)
        assert (status.caller, status.datasets, status.tags, list(status.epochs)) == (
            "ITA", 2, 5, [2, 4],
        )  # fmt: skip
        assert status.version
        assert (await hub.DEU.GetStatus(hub_pb2.GetStatusRequest(), timeout=5)).caller == "DEU"

    run_with_hub(federation, config, scenario)


def test_directory_refuses_revoked_certificates(
    federation: Federation, config: HubConfig, tmp_path: Path
) -> None:
    # A federation of its own, so that revoking does not touch the shared one.
    root = tmp_path / "fed"
    pki.init_federation(root, "revocation")
    hub_dir = pki.issue_hub(root)
    folders = {code: pki.issue_bureau(root, code) for code in BUREAUS}
    serial = pki.certificate_serial((folders["ITA"] / "tls.crt").read_bytes())
    pki.update_directory(root, lambda d: d.replace(revoked_serials=frozenset({serial})))
    local = Federation(root, hub_dir, folders, federation.rogue)

    async def scenario(hub: Hub) -> None:
        assert (await hub.FRA.GetStatus(hub_pb2.GetStatusRequest(), timeout=5)).caller == "FRA"
        await fails(
            hub.ITA.GetStatus(hub_pb2.GetStatusRequest(), timeout=5),
            grpc.StatusCode.PERMISSION_DENIED,
            "revoked",
        )

    tls = pki.TlsFiles.in_folder(hub_dir)
    run_with_hub(local, replace(config, tls=tls, federation=root), scenario)


# -- configuration and the process ---------------------------------------------------------


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    cases = {
        'credentials = "c"\ndatabase = "d"\nport = 1\n': "unknown key(s) port",
        'database = "d"\n': "credentials is required",
        'database = "d"\ntls_cert = "c"\n': "or all of tls_cert, tls_key, ca_cert",
        'credentials = "c"\ntls_key = "k"\ndatabase = "d"\n': "not both",
        'credentials = "c"\ndatabase = "d"\nmax_tags_per_request = 0\n': "max_tags_per_request",
        'credentials = "c"\ndatabase = "d"\nlisten = "nope"\n': "listen must be host:port",
        'credentials = "c"\ndatabase = "d"\ngrace_period = "x"\n': "grace_period",
        'credentials = "c"\ndatabase = "d"\nlisteners = 0\n': "listeners must be an integer from 1",
        "credentials = \n": "not valid TOML",
    }
    for text, fragment in cases.items():
        path.write_text(text)
        with pytest.raises(ConfigError) as caught:
            HubConfig.load(path)
        assert fragment in str(caught.value), (text, caught.value)
    with pytest.raises(ConfigError, match="not found"):
        HubConfig.load(tmp_path / "missing.toml")
    path.write_text(
        'tls_cert = "a.crt"\ntls_key = "/k/a.key"\nca_cert = "ca.crt"\ndatabase = "d"\n'
    )
    files = HubConfig.load(path).tls
    assert files == pki.TlsFiles(tmp_path / "a.crt", Path("/k/a.key"), tmp_path / "ca.crt")
    path.write_text('credentials = "certs"\ndatabase = "/abs/hub.sqlite"\naddress_file = "a"\n')
    loaded = HubConfig.load(path)
    assert loaded.tls == pki.TlsFiles.in_folder(tmp_path / "certs")
    assert loaded.database == Path("/abs/hub.sqlite")
    assert (loaded.address_file, loaded.federation) == (tmp_path / "a", None)
    assert loaded.max_tags_per_request == 10_000
    assert loaded.listeners == 4


def _listening_sockets(port: int) -> int:
    """How many TCP sockets listen on `port` (Linux: /proc/net/tcp and tcp6;
    gRPC may bind 127.0.0.1 as a v4-mapped IPv6 socket)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                count += 1
    return count


def _sqlite_config(
    federation: Federation, tmp_path: Path, listen: str, listeners: int
) -> HubConfig:
    return HubConfig(
        tls=pki.TlsFiles.in_folder(federation.hub),
        database=tmp_path / f"hub-{listeners}.sqlite",
        listen=listen,
        listeners=listeners,
        grace_period=1.0,
    )


def test_listeners_share_the_port_and_every_connection_is_served(
    federation: Federation, tmp_path: Path
) -> None:
    config = _sqlite_config(federation, tmp_path, "127.0.0.1:0", 3)

    async def scenario(hub: Hub) -> None:
        port = int(hub.address.rpartition(":")[2])
        assert _listening_sockets(port) == 3
        # Separate connections (each channel its own subchannel pool), which
        # the kernel spreads over the listeners; one that did not serve would
        # leave its connections' calls unanswered.
        creds = pki.TlsFiles.in_folder(federation.bureaus["DEU"]).channel_credentials()
        own_pool = [("grpc.use_local_subchannel_pool", 1)]
        channels = [
            grpc.aio.secure_channel(hub.address, creds, options=own_pool) for _ in range(12)
        ]
        try:
            statuses = await asyncio.gather(
                *(
                    hub_pb2_grpc.HubStub(ch).GetStatus(hub_pb2.GetStatusRequest(), timeout=10)
                    for ch in channels
                )
            )
        finally:
            for channel in channels:
                await channel.close()
        assert [s.caller for s in statuses] == ["DEU"] * 12

    run_with_hub(federation, config, scenario)


def test_a_port_in_use_is_refused_with_shared_listeners(
    federation: Federation, tmp_path: Path
) -> None:
    # SO_REUSEPORT would let a second hub of the same user share the port
    # and take half the calls: the hub checks with a plain bind first.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        config = _sqlite_config(federation, tmp_path, f"127.0.0.1:{taken}", 4)
        with pytest.raises(ConfigError, match=rf"127.0.0.1:{taken}: the port is in use"):
            asyncio.run(asyncio.wait_for(serve(config), 10))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    first = _sqlite_config(federation, tmp_path / "first", f"127.0.0.1:{free}", 4)
    (tmp_path / "first").mkdir()

    async def scenario(hub: Hub) -> None:
        assert _listening_sockets(free) == 4
        for listeners in (4, 1):
            second = _sqlite_config(federation, tmp_path, f"127.0.0.1:{free}", listeners)
            with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{free}"):
                await asyncio.wait_for(serve(second), 10)
        assert (await hub.DEU.GetStatus(hub_pb2.GetStatusRequest(), timeout=5)).caller == "DEU"

    run_with_hub(federation, first, scenario)


@pytest.fixture
def hub_process(
    federation: Federation, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    config = tmp_path / "hub.toml"
    config.write_text(
        f'listen = "127.0.0.1:0"\ncredentials = "{federation.hub}"\n'
        'database = "hub.sqlite"\naddress_file = "hub.address"\ngrace_period = 1\n'
    )
    with subprocess.Popen(
        [sys.executable, "-m", "hub", "--config", str(config)],
        cwd=Path(__file__).parent.parent,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            yield process, tmp_path / "hub.address"
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()


def test_python_m_hub_serves_until_sigterm(
    federation: Federation, hub_process: tuple[subprocess.Popen[str], Path]
) -> None:
    process, address_file = hub_process
    deadline = time.monotonic() + 20
    while not address_file.exists():
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert time.monotonic() < deadline, "the hub did not write its address"
        time.sleep(0.05)
    address = address_file.read_text().strip()

    async def check() -> None:
        creds = pki.TlsFiles.in_folder(federation.bureaus["DEU"]).channel_credentials()
        async with grpc.aio.secure_channel(address, creds) as channel:
            status = await hub_pb2_grpc.HubStub(channel).GetStatus(
                hub_pb2.GetStatusRequest(), timeout=10
            )
            assert status.caller == "DEU"

    asyncio.run(check())
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    # The process entry (not `serve`) moves start-up objects out of the collector's way.
    assert process.stderr is not None
    assert "start-up objects kept out of garbage collection" in process.stderr.read()


def test_python_m_hub_reports_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('credentials = "c"\ndatabase = "d"\nmax_tags = 5\n')
    done = subprocess.run(
        [sys.executable, "-m", "hub", "--config", str(config)],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "ConfigError" in done.stderr and "max_tags" in done.stderr
