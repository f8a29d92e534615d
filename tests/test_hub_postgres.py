"""What PostgreSQL adds: several hubs on one database, schema migration, and
the store settings of hub.toml.

The shared rules run on PostgreSQL through the parametrized tests of the
other hub test modules; these tests are about two hubs (two `serve()`
instances, each with its own `PostgresTagStore`: its own pool, listener and
audit tree) serving one database while bureaus use both.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from click.testing import CliRunner

from blindmatch.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    common_pb2,
    disclosure_pb2,
    disclosure_pb2_grpc,
    hub_pb2,
    hub_pb2_grpc,
)
from bureau_agent import pki
from bureau_agent.cli import main as cli_main
from hub import policy
from hub.config import HubConfig
from hub.errors import ConcurrentEnrollmentError, ConfigError, StorageError
from hub.policy import DatasetPolicy, EnrollSpec
from hub.server import migrate, serve
from hub.store import SqliteTagStore
from hub.store_pg import SCHEMA_VERSION, PostgresTagStore, describe_dsn
from psi import merkle
from tests.test_hub_audit import audit_key, signed_head
from tests.test_hub_disclosure import BureauKeys, bureau_keys, denial, make_request, signed
from tests.test_hub_service import (
    BUREAUS,
    Federation,
    Hub,
    enroll,
    hit_indices,
    keys,
    query_tags,
    shared,
)
from tests.test_hub_store import enroll as store_enroll
from tests.test_hub_store import keys as store_keys
from tests.test_hub_store import queries, run

LINKABLE = common_pb2.DatasetPolicy(linkable=True)
INCOMING = disclosure_pb2.ListDisclosuresRequest.DIRECTION_INCOMING
OUTGOING = disclosure_pb2.ListDisclosuresRequest.DIRECTION_OUTGOING


@dataclass(frozen=True)
class Fed:
    federation: Federation
    keys: dict[str, BureauKeys]


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Fed:
    root = tmp_path_factory.mktemp("federation")
    pki.init_federation(root, "postgres")
    hub_dir = pki.issue_hub(root)
    folders = {code: pki.issue_bureau(root, code) for code in BUREAUS}
    return Fed(
        Federation(root, hub_dir, folders, rogue=hub_dir),
        {code: bureau_keys(code, folder) for code, folder in folders.items()},
    )


@pytest.fixture
def config(fed: Fed, postgres_dsn: str) -> HubConfig:
    """One hub's configuration; the hubs of a test differ only in their port."""
    return HubConfig(
        tls=pki.TlsFiles.in_folder(fed.federation.hub),
        store="postgres",
        postgres_dsn=postgres_dsn,
        listen="127.0.0.1:0",
        federation=fed.federation.root,
        grace_period=2.0,
    )


@dataclass
class TwoHubs:
    a: Hub
    b: Hub

    def disclosure(self, hub: Hub, code: str) -> disclosure_pb2_grpc.DisclosureAsyncStub:
        return disclosure_pb2_grpc.DisclosureStub(hub.channels[code])

    def audit(self, hub: Hub, code: str) -> audit_pb2_grpc.AuditLogAsyncStub:
        return audit_pb2_grpc.AuditLogStub(hub.channels[code])


def run_with_two_hubs(
    fed: Fed, config: HubConfig, scenario: Callable[[TwoHubs], Awaitable[None]]
) -> None:
    """Start two hubs on one database, connect FRA, DEU and ITA to each, run
    `scenario`, stop both."""

    async def start(stop: asyncio.Event) -> tuple[asyncio.Task[None], str]:
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        server = asyncio.create_task(serve(config, ready=ready.set_result, stop=stop))
        waiting: list[asyncio.Future[Any]] = [server, ready]
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if server in done:
            server.result()
        return server, ready.result()

    def connect(address: str) -> Hub:
        channels = {
            code: grpc.aio.secure_channel(
                address, pki.TlsFiles.in_folder(folder).channel_credentials()
            )
            for code, folder in fed.federation.bureaus.items()
        }
        stubs = {code: hub_pb2_grpc.HubStub(ch) for code, ch in channels.items()}
        return Hub(address, stubs, channels)

    async def main() -> None:
        stop = asyncio.Event()
        servers: list[asyncio.Task[None]] = []
        hubs: list[Hub] = []
        try:
            for _ in range(2):
                server, address = await start(stop)
                servers.append(server)
                hubs.append(connect(address))
            await asyncio.wait_for(scenario(TwoHubs(*hubs)), 60)
        finally:
            for hub in hubs:
                for channel in hub.channels.values():
                    await channel.close()
            stop.set()
            for server in servers:
                await asyncio.wait_for(server, 10)

    asyncio.run(main())


# -- two hubs, one database ------------------------------------------------------------


def test_a_version_committed_through_one_hub_is_whole_in_the_other(
    fed: Fed, config: HubConfig
) -> None:
    n = 12_000  # several staging chunks
    old, new = keys(n), keys(n)
    sample = sorted({*range(0, n, 97), n - 1})
    probe = [old[i] for i in sample] + [new[i] for i in sample]
    all_old, all_new = (len(sample), 0), (0, len(sample))
    key = audit_key(fed.federation)

    async def scenario(hubs: TwoHubs) -> None:
        first = await enroll(hubs.a.FRA, "w", old, batch=5000)
        # Acknowledged by A: B answers from it at once.
        assert await hit_indices(hubs.b.DEU, probe) == list(range(len(sample)))
        head = await signed_head(hubs.audit(hubs.b, "ITA"), key)
        assert head.size > first.audit_index
        observed: list[tuple[int, int]] = []
        acknowledged = asyncio.Event()

        async def reader() -> None:
            while True:
                after_ack = acknowledged.is_set()
                hits = await hit_indices(hubs.b.DEU, probe)
                seen = (sum(i < len(sample) for i in hits), sum(i >= len(sample) for i in hits))
                observed.append(seen)
                if after_ack:
                    assert seen == all_new, "B answered from the old version after A's ack"
                    return

        reading = asyncio.create_task(reader())
        response = await enroll(hubs.a.FRA, "w", new, replace=True, batch=2500)
        acknowledged.set()
        await asyncio.wait_for(reading, 20)
        assert response.version == 2
        # Every answer from B saw one whole version.
        assert set(observed) <= {all_old, all_new}, set(observed)
        assert observed[0] == all_old and observed[-1] == all_new
        assert len(observed) > 2
        # B's log has A's enrollment leaf as soon as A acknowledged it.
        head = await signed_head(hubs.audit(hubs.b, "FRA"), key)
        assert head.size > response.audit_index
        listed = await hubs.b.FRA.ListDatasets(hub_pb2.ListDatasetsRequest(), timeout=5)
        assert [(d.name, d.version, d.tag_count) for d in listed.datasets] == [("w", 2, n)]

    run_with_two_hubs(fed, config, scenario)


def test_standing_match_notices_reach_a_follower_on_the_other_hub(
    fed: Fed, config: HubConfig
) -> None:
    fra = keys(20)
    deu = [*keys(5), *shared(fra[3:5])]

    async def scenario(hubs: TwoHubs) -> None:
        await enroll(hubs.b.FRA, "wanted", fra, policy_=LINKABLE)
        follow = hubs.b.FRA.WatchNotices(hub_pb2.WatchNoticesRequest(follow=True), timeout=20)
        await asyncio.sleep(0.1)  # the follower on B now waits
        response = await enroll(hubs.a.DEU, "alerts", deu, policy_=LINKABLE)
        assert response.new_notices == 2
        pushed = []
        for _ in range(2):
            notice = await asyncio.wait_for(follow.read(), 5)
            assert isinstance(notice, common_pb2.Notice)
            pushed.append(notice)
        assert [n.sequence for n in pushed] == [1, 2]
        assert {n.handle for n in pushed} == {k.handle for k in fra[3:5]}
        follow.cancel()
        # Both hubs hold the same notices for each side.
        for code in ("FRA", "DEU"):
            on_a = [n async for n in hubs.a.stubs[code].WatchNotices(hub_pb2.WatchNoticesRequest())]
            on_b = [n async for n in hubs.b.stubs[code].WatchNotices(hub_pb2.WatchNoticesRequest())]
            assert on_a == on_b and len(on_a) == 2
        # A later match made through B wakes a follower on A.
        follow = hubs.a.DEU.WatchNotices(
            hub_pb2.WatchNoticesRequest(after_sequence=2, follow=True), timeout=20
        )
        await asyncio.sleep(0.1)
        update = hub_pb2.UpdateDatasetRequest(dataset="wanted", epoch=1, add=shared(deu[:1]))
        assert (await hubs.b.FRA.UpdateDataset(update, timeout=5)).new_notices == 1
        notice = await asyncio.wait_for(follow.read(), 5)
        assert isinstance(notice, common_pb2.Notice)
        assert (notice.sequence, notice.handle) == (3, deu[0].handle)
        follow.cancel()

    run_with_two_hubs(fed, config, scenario)


def test_disclosure_cases_cross_hubs_and_audit_heads_agree(fed: Fed, config: HubConfig) -> None:
    fra, deu = fed.keys["FRA"], fed.keys["DEU"]
    ks = keys(3)
    key = audit_key(fed.federation)

    async def scenario(hubs: TwoHubs) -> None:
        await enroll(hubs.b.FRA, "w", ks)
        answer = await hubs.a.DEU.Query(
            hub_pb2.QueryRequest(epoch=1, tags=query_tags(ks[1:2])),
            timeout=5,
        )
        (match,) = answer.matches
        request = make_request("DEU", bytes.fromhex(match.match_id))
        # The owner follows its incoming cases on B; the requester asks on A.
        incoming = hubs.disclosure(hubs.b, "FRA").List(
            disclosure_pb2.ListDisclosuresRequest(direction=INCOMING, follow=True), timeout=20
        )
        outgoing = hubs.disclosure(hubs.a, "DEU").List(
            disclosure_pb2.ListDisclosuresRequest(direction=OUTGOING, follow=True), timeout=20
        )
        await asyncio.sleep(0.1)
        ticket = await hubs.disclosure(hubs.a, "DEU").Request(signed(deu, request), timeout=5)
        case = await asyncio.wait_for(incoming.read(), 5)
        assert isinstance(case, disclosure_pb2.DisclosureCase)
        assert (case.request_id, case.handle) == (request.request_id, ks[1].handle)
        mine = await asyncio.wait_for(outgoing.read(), 5)  # the new case, as DEU sees it
        assert isinstance(mine, disclosure_pb2.DisclosureCase)
        await hubs.disclosure(hubs.b, "FRA").Decide(denial(fra, request), timeout=5)
        decided = await asyncio.wait_for(outgoing.read(), 5)
        assert isinstance(decided, disclosure_pb2.DisclosureCase)
        assert decided.status == disclosure_pb2.DISCLOSURE_STATUS_DENIED
        incoming.cancel()
        outgoing.cancel()
        got = await hubs.disclosure(hubs.a, "DEU").Get(
            disclosure_pb2.GetDisclosureRequest(request_id=request.request_id), timeout=5
        )
        assert got.status == disclosure_pb2.DISCLOSURE_STATUS_DENIED

        # Heads from both hubs: one log, the earlier head a prefix of the later.
        head_a = await signed_head(hubs.audit(hubs.a, "ITA"), key)
        assert head_a.size > ticket.audit_index
        await enroll(hubs.b.ITA, "x", keys(2))  # one more leaf, through B
        head_b = await signed_head(hubs.audit(hubs.b, "ITA"), key)
        assert head_b.size == head_a.size + 1
        for proving in (hubs.a, hubs.b):
            proof = await hubs.audit(proving, "ITA").GetConsistencyProof(
                audit_pb2.GetConsistencyProofRequest(old_size=head_a.size, new_size=head_b.size),
                timeout=5,
            )
            merkle.verify_consistency(
                head_a.size, head_b.size, head_a.root, head_b.root, list(proof.hashes)
            )
        leaves = []
        for hub in (hubs.a, hubs.b):
            entries = await hubs.audit(hub, "ITA").GetEntries(
                audit_pb2.GetEntriesRequest(start=0, end=head_b.size), timeout=5
            )
            leaves.append(list(entries.leaf_hashes))
        assert leaves[0] == leaves[1]
        assert merkle.root(leaves[0]) == head_b.root

    run_with_two_hubs(fed, config, scenario)


# -- two stores, one database ------------------------------------------------------------


def test_concurrent_writers_in_two_stores_keep_one_log(postgres_dsn: str) -> None:
    async def main() -> None:
        a = await PostgresTagStore.open(postgres_dsn, auto_sweep=False)
        b = await PostgresTagStore.open(postgres_dsn, auto_sweep=False)
        try:
            ks = store_keys(50)
            await store_enroll(a, "FRA", "w", ks)

            async def burst(store: PostgresTagStore, asker: str, name: str) -> list[int]:
                indices = [
                    (
                        await store.query(asker, 1, queries(ks[i : i + 3]), include_own=False)
                    ).audit_index
                    for i in range(0, 30, 3)
                ]
                indices.append(
                    (await store_enroll(store, asker, name, store_keys(7000))).audit_index
                )
                return indices

            got = await asyncio.gather(burst(a, "DEU", "x"), burst(b, "ITA", "y"))
            # Leaf indices are dense and never given twice.
            assert sorted(got[0] + got[1]) == list(range(1, 23))
            head_a, head_b = await a.audit_head(), await b.audit_head()
            assert head_a == head_b and head_a[0] == 23
            entries = await b.audit_entries(0, 23)
            assert merkle.root([merkle.leaf_hash(e) for e in entries]) == head_a[1]
            assert await a.audit_consistency_proof(5, 23) == await b.audit_consistency_proof(5, 23)
        finally:
            await a.close()
            await b.close()

    run(main())


def test_every_connection_plans_lookups_as_key_probes(postgres_dsn: str) -> None:
    """The planner settings that keep a 10,000-tag lookup on the primary key
    (see `hub.store_pg._SESSION_SETTINGS`) hold on every connection of the
    pool, whatever the server's defaults."""

    async def main() -> list[tuple[str, str]]:
        store = await PostgresTagStore.open(postgres_dsn, auto_sweep=False)
        try:
            await store_enroll(store, "FRA", "w", store_keys(20))
            seen = []
            with store._pool.connection() as a, store._pool.connection() as b:
                for conn in (a, b):
                    for name in ("random_page_cost", "max_parallel_workers_per_gather"):
                        (value,) = conn.execute(f"SHOW {name}").fetchall()[0]
                        seen.append((name, str(value)))
            return seen
        finally:
            await store.close()

    seen = run(main())
    assert seen == [("random_page_cost", "1.1"), ("max_parallel_workers_per_gather", "0")] * 2
    with psycopg.connect(postgres_dsn) as plain:  # the server's own defaults differ
        assert plain.execute("SHOW random_page_cost").fetchall() == [("4",)]


def test_a_bulk_lookup_probes_the_primary_key(postgres_dsn: str) -> None:
    """A 10,000-tag lookup, its tags sent packed in one bytea, is planned as
    probes of the tags' primary key (not a scan of the table), and finds
    exactly the enrolled tags among them."""
    from hub.store_pg import _TAG_ROWS, _packed

    enrolled = store_keys(3000)
    asked = [k.tag for k in enrolled[:500]] + [os.urandom(16) for _ in range(9500)]

    async def main() -> tuple[str, set[bytes]]:
        store = await PostgresTagStore.open(postgres_dsn, auto_sweep=False)
        try:
            await store_enroll(store, "FRA", "w", enrolled)
            with store._pool.connection() as conn:
                conn.execute("ANALYZE tags")
                plan = "\n".join(
                    row[0] for row in conn.execute("EXPLAIN " + _TAG_ROWS, (_packed(asked),))
                )
                found = {bytes(row[0]) for row in conn.execute(_TAG_ROWS, (_packed(asked),))}
            return plan, found
        finally:
            await store.close()

    plan, found = run(main())
    plan = re.sub(r"'\\x[0-9a-f]+'", "'...'", plan)  # the 160 KB bytea literal
    assert "Index" in plan and "tags_pkey" in plan, plan
    assert "Seq Scan on tags" not in plan, plan
    assert found == {k.tag for k in enrolled[:500]}


def test_an_enrollment_survives_another_hub_starting_and_dies_with_its_own(
    postgres_dsn: str,
) -> None:
    spec = EnrollSpec("w", 1, DatasetPolicy(), replace=True)

    async def main() -> None:
        a = await PostgresTagStore.open(postgres_dsn, auto_sweep=False)
        ks = store_keys(6000)
        enrollment = await a.begin_enrollment("FRA", spec)
        await enrollment.add(ks)
        b = await PostgresTagStore.open(postgres_dsn, auto_sweep=False)  # recovers at start
        try:
            result = await enrollment.commit(len(ks), policy.digest_of(ks))
            assert (result.version, result.tag_count) == (1, 6000)
            assert len((await b.query("DEU", 1, queries(ks[:9]), include_own=False)).hits) == 9
            # A stages again; while A lives, B may not take the dataset over ...
            left = await a.begin_enrollment("FRA", spec)
            await left.add(store_keys(6000))
            with pytest.raises(ConcurrentEnrollmentError):
                await b.begin_enrollment("FRA", spec)
            with pytest.raises(ConcurrentEnrollmentError):
                await b.update_dataset("FRA", "w", 1, [], [])
        finally:
            await a.close()  # ... once A is gone, its staging is abandoned
        try:
            fresh = store_keys(5)
            assert (await store_enroll(b, "FRA", "w", fresh, replace=True)).version == 2
            assert len((await b.query("DEU", 1, queries(ks[:9]), include_own=False)).hits) == 0
        finally:
            await b.close()

    run(main())


def test_a_lost_listener_reconnects_and_wakes_followers(postgres_dsn: str) -> None:
    fra = store_keys(3)
    linkable = DatasetPolicy(linkable=True)

    async def main() -> None:
        a = await PostgresTagStore.open(postgres_dsn, auto_sweep=False)
        b = await PostgresTagStore.open(postgres_dsn, auto_sweep=False)
        try:
            await store_enroll(a, "FRA", "w", fra, policy_=linkable)
            waiting = asyncio.create_task(b.wait_for_notices("FRA", 0))
            # Every listening connection dies (as in a database failover) ...
            with psycopg.connect(postgres_dsn, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'blindmatch-hub-listener'"
                )
            # ... and a match is made while B cannot hear of it.
            shared = [policy.TaggedKey(k.tag, os.urandom(16), k.key_type) for k in fra[:1]]
            assert (await store_enroll(a, "DEU", "w", shared, policy_=linkable)).new_notices == 1
            assert await asyncio.wait_for(waiting, 10) is True  # after B reconnects
            assert [n.sequence for n in await b.read_notices("FRA", 0, 10)] == [1]
            # B listens again: the next notice wakes it at once.
            waiting = asyncio.create_task(b.wait_for_notices("DEU", 1))
            await asyncio.sleep(0.05)
            more = [policy.TaggedKey(fra[1].tag, os.urandom(16), fra[1].key_type)]
            await a.update_dataset("DEU", "w", 1, more, [])
            assert await asyncio.wait_for(waiting, 5) is True
        finally:
            await a.close()
            await b.close()

    run(main())


# -- schema -------------------------------------------------------------------------------


def write_config(tmp_path: Path, fed: Fed, **store: Any) -> Path:
    lines = [f'credentials = "{fed.federation.hub}"']
    lines += [f'{k} = "{v}"' for k, v in store.items()]
    path = tmp_path / "hub.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_migrate_creates_then_finds_the_schema_current(
    fed: Fed, tmp_path: Path, postgres_dsn: str
) -> None:
    (tmp_path / "pg").mkdir()
    (tmp_path / "lite").mkdir()
    pg = write_config(tmp_path / "pg", fed, store="postgres", postgres_dsn=postgres_dsn)
    lite = write_config(tmp_path / "lite", fed, database="hub.sqlite")
    created = migrate(pg)
    assert (created.before, created.after) == (0, SCHEMA_VERSION)
    assert "created" in str(created) and "dbname=" in str(created)
    again = migrate(pg)
    assert (again.before, again.after) == (SCHEMA_VERSION, SCHEMA_VERSION)
    assert "up to date" in str(again)
    first = migrate(lite)
    assert (first.before, first.after) == (0, 4)
    assert "sqlite" in str(first) and "created" in str(first)
    # The CLI command.
    result = CliRunner().invoke(cli_main, ["hub", "migrate", "--config", str(pg)])
    assert result.exit_code == 0, result.output
    assert "up to date" in result.output

    async def opened() -> None:
        store = await PostgresTagStore.open(postgres_dsn)
        await store.close()

    run(opened())  # opening a migrated database changes nothing
    assert PostgresTagStore.migrate(postgres_dsn) == (SCHEMA_VERSION, SCHEMA_VERSION)
    assert SqliteTagStore.migrate(tmp_path / "lite" / "hub.sqlite") == (4, 4)


def test_a_newer_schema_is_refused(postgres_dsn: str) -> None:
    PostgresTagStore.migrate(postgres_dsn)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
    with pytest.raises(StorageError, match="schema version 99; this hub knows up to"):
        PostgresTagStore.migrate(postgres_dsn)

    async def main() -> None:
        await PostgresTagStore.open(postgres_dsn)

    with pytest.raises(StorageError, match="upgrade the hub"):
        run(main())


def test_an_unreachable_database_is_a_storage_error_without_the_password(
    tmp_path: Path,
) -> None:
    dsn = f"host={tmp_path} port=1 dbname=nothing user=hub password=s3cret connect_timeout=2"
    assert describe_dsn(dsn) == f"postgres host={tmp_path} port=1 dbname=nothing user=hub"

    async def main() -> None:
        await PostgresTagStore.open(dsn)

    with pytest.raises(StorageError) as caught:
        run(main())
    assert "s3cret" not in str(caught.value)
    assert "dbname=nothing" in str(caught.value)


def test_store_settings_in_hub_toml(fed: Fed, tmp_path: Path) -> None:
    cases: dict[str, Sequence[str]] = {
        'store = "mysql"\ndatabase = "d"\n': ["store must be one of sqlite, postgres", "mysql"],
        'store = "postgres"\n': ["postgres_dsn is required", "host="],
        'store = "postgres"\ndatabase = "d"\npostgres_dsn = "dbname=x"\n': [
            "database names a SQLite file"
        ],
        'database = "d"\npostgres_dsn = "dbname=x"\n': ['postgres_dsn needs store = "postgres"'],
        'store = "postgres"\npostgres_dsn = ""\n': ["postgres_dsn must be a non-empty string"],
    }
    path = tmp_path / "hub.toml"
    for text, fragments in cases.items():
        path.write_text(f'credentials = "{fed.federation.hub}"\n' + text)
        with pytest.raises(ConfigError) as caught:
            HubConfig.load(path)
        for fragment in fragments:
            assert fragment in str(caught.value), (text, caught.value)
    path.write_text(
        f'credentials = "{fed.federation.hub}"\nstore = "postgres"\n'
        'postgres_dsn = "host=db dbname=hub password=pw"\n'
    )
    loaded = HubConfig.load(path)
    assert (loaded.store, loaded.postgres_dsn, loaded.database) == (
        "postgres", "host=db dbname=hub password=pw", None,
    )  # fmt: skip
    assert loaded.store_description == "postgres host=db dbname=hub"
    with pytest.raises(ConfigError, match="postgres_dsn is required"):
        replace(loaded, postgres_dsn=None)
    path.write_text(f'credentials = "{fed.federation.hub}"\ndatabase = "hub.sqlite"\n')
    assert HubConfig.load(path).store == "sqlite"


def test_migrate_from_the_cli_reports_a_bad_database(fed: Fed, tmp_path: Path) -> None:
    dsn = f"host={tmp_path} port=1 dbname=nothing connect_timeout=2"
    path = write_config(tmp_path, fed, store="postgres", postgres_dsn=dsn)
    result = CliRunner().invoke(cli_main, ["hub", "migrate", "--config", str(path)])
    assert result.exit_code != 0
    assert "StorageError" in result.output and "dbname=nothing" in result.output
