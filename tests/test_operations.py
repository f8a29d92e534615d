"""Operations: metrics, reflection, logs without secrets, deadlines, retries.

* Agents (real processes) and the hub serve Prometheus metrics (RPC counts
  by method and code, latencies, enrolled and queried tags, custodian
  evaluations, quota refusals) and gRPC server reflection.
* After an enrollment, a query, a bulk match and a disclosure through a real
  federation, no process log holds any identifier, tag or handle.
* Every outgoing call of the agent has a deadline (an audit of the source),
  and the deadlines work: a hub that never answers costs one `rpc_timeout`.
* Idempotent calls are retried with backoff (hub reads, custodian
  Evaluate); a query is not.
"""

from __future__ import annotations

import ast
import asyncio
import json
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from prometheus_client.parser import text_string_to_metric_families

from blindmatch.v1 import (
    agent_pb2,
    audit_pb2,
    common_pb2,
    custodian_pb2,
    disclosure_pb2,
    hub_pb2,
    hub_pb2_grpc,
)
from bureau_agent import pki
from bureau_agent.custodian import CustodianService
from bureau_agent.demo import write_demo_data
from bureau_agent.localfed import LocalFederation
from hub.errors import ConfigError
from hub.quota_config import OpsConfig, QuotaSettings
from tests.inprocess import (
    Custodians,
    InProcessAgent,
    InProcessHub,
    make_federation,
    set_address,
)

ROOT = Path(__file__).resolve().parent.parent


def scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples of a Prometheus endpoint: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def reflected_services(channel: grpc.Channel) -> set[str]:
    return set(ProtoReflectionDescriptorDatabase(channel).get_services())


# -- a federation of real processes --------------------------------------------------------


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    root = tmp_path_factory.mktemp("ops")
    federation = LocalFederation(root, ["FRA", "DEU", "USA"], ["FRA", "DEU"], threshold=2)
    federation.create()
    for code in ("FRA", "USA"):  # a custodian and a plain bureau serve metrics
        path = federation.config_path(code)
        path.write_text('metrics_listen = "127.0.0.1:0"\n' + path.read_text())
    with federation.running():
        yield federation


@pytest.fixture(scope="module")
def story(fed: LocalFederation) -> dict[str, Any]:
    """Enrollment, query, bulk match and a disclosure, through the CLI."""
    data = write_demo_data(fed.root / "data", size=25)
    schema = str(data["schema"])
    enrolled = json.loads(
        fed.cli(
            "FRA", "enroll", str(data["FRA"]), "--dataset", "watch", "--schema", schema, "--json"
        ).stdout
    )
    query = json.loads(fed.cli("USA", "query", "--passport", "FRA:12AB34567", "--json").stdout)
    bulk = json.loads(
        fed.cli("USA", "match", str(data["USA"]), "--schema", schema, "--json").stdout
    )
    (match,) = query["matches"]
    case = json.loads(
        fed.cli(
            "USA",
            "disclosure",
            "request",
            match["match_id"],
            "--purpose",
            "ops test",
            "--legal-basis",
            "test",
            "--json",
        ).stdout
    )
    fed.cli("FRA", "disclosure", "approve", case["request_id"], "--fields", "name,dob")
    shown = json.loads(fed.cli("USA", "disclosure", "show", case["request_id"], "--json").stdout)
    assert shown["record"] == {"name": "Müller, Hans-Peter", "dob": "1980-02-03"}
    return {"data": data, "enrolled": enrolled, "bulk": bulk, "case": case}


def test_agents_serve_metrics(fed: LocalFederation, story: dict[str, Any]) -> None:
    usa = scrape((fed.state_dir("USA") / "metrics-address").read_text().strip())
    fra = scrape((fed.state_dir("FRA") / "metrics-address").read_text().strip())
    agent = "blindmatch.v1.Agent"
    assert sample(usa, "blindmatch_rpc_handled_total", service=agent, method="Query", code="OK")
    assert sample(usa, "blindmatch_rpc_handled_total", service=agent, method="MatchFile", code="OK")
    assert sample(usa, "blindmatch_rpc_duration_seconds_count", service=agent, method="Query")
    assert sample(usa, "blindmatch_agent_queried_tags_total") >= 1 + story["bulk"]["keys"]
    assert sample(fra, "blindmatch_agent_enrolled_tags_total") == story["enrolled"]["keys"]
    assert sample(fra, "blindmatch_custodian_evaluated_elements_total", caller="USA") > 0
    assert sample(
        fra,
        "blindmatch_rpc_handled_total",
        service="blindmatch.v1.Custodian",
        method="Evaluate",
        code="OK",
    )
    assert sample(fra, "blindmatch_custodian_quota_refusals_total", caller="USA") == 0
    # DEU has no metrics_listen: the endpoint is off by default.
    assert not (fed.state_dir("DEU") / "metrics-address").exists()


def test_agents_serve_reflection(fed: LocalFederation) -> None:
    with grpc.insecure_channel(f"unix:{fed.state_dir('USA') / 'agent.sock'}") as channel:
        assert {"blindmatch.v1.Agent", "grpc.health.v1.Health"} <= reflected_services(channel)
    address = (
        pki.load_directory(fed.federation / "directory.json", fed.federation / "ca" / "ca.crt")
        .bureau("FRA")
        .address
    )
    creds = pki.TlsFiles.in_folder(fed.federation / "bureaus" / "USA").channel_credentials()
    with grpc.secure_channel(address, creds) as channel:
        assert "blindmatch.v1.Custodian" in reflected_services(channel)


def test_no_log_holds_an_identifier_a_tag_or_a_handle(
    fed: LocalFederation, story: dict[str, Any]
) -> None:
    data = story["data"]
    identifiers: set[str] = set()
    for code in ("FRA", "DEU", "BRA", "USA"):
        for line in data[code].read_text(encoding="utf-8").splitlines()[1:]:
            identifiers.update(v for v in line.split(",")[1:] if len(v) >= 6)
    identifiers |= {"Müller", "12AB34567", "Hans-Peter", "m.alrashid@example.org"}
    with sqlite3.connect(f"file:{fed.hub_database}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT tag, handle FROM tags").fetchall()
    secrets = {bytes(tag).hex() for tag, _ in rows} | {bytes(handle).hex() for _, handle in rows}
    assert len(rows) >= story["enrolled"]["keys"] and len(identifiers) > 50
    logs = {p.name: p.read_text(errors="replace") for p in (fed.root / "logs").glob("*.log")}
    assert {"hub.log", "FRA.log", "DEU.log", "USA.log"} <= set(logs)
    assert all(len(text) > 100 for text in logs.values())
    leaks = [
        (name, value)
        for name, text in logs.items()
        for value in identifiers | secrets
        if value in text or value.upper() in text
    ]
    assert leaks == []
    # The agents' logs are JSON lines (the hub's follow `hub.server`'s format).
    for code in ("FRA", "DEU", "USA"):
        for line in logs[f"{code}.log"].splitlines():
            json.loads(line)


# -- the hub ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_federation(tmp_path_factory.mktemp("ops-pki"), ["FRA", "USA"], ["FRA", "USA"], 2)


def test_hub_serves_metrics_and_reflection(pki_root: Path, tmp_path: Path) -> None:
    ops = OpsConfig(
        quota=QuotaSettings(query_tags_per_second=1, query_tags_burst=3),
        metrics_listen="127.0.0.1:0",
        metrics_address_file=tmp_path / "metrics.address",
    )

    async def main() -> tuple[dict[Any, float], set[str]]:
        hub = InProcessHub(pki_root, tmp_path / "hub.sqlite", ops=ops)
        await hub.start()
        try:
            keys = [
                common_pb2.TaggedKey(
                    tag=bytes([i]) * 16, handle=bytes([i]) * 16, key_type=common_pb2.KEY_TYPE_EMAIL
                )
                for i in range(5)
            ]
            from hub import policy
            from psi.identifiers import KeyType

            digest = policy.digest_of(
                policy.TaggedKey(k.tag, k.handle, KeyType.EMAIL) for k in keys
            )
            async with hub.channel("FRA") as channel:
                stub = hub_pb2_grpc.HubStub(channel)
                await stub.Enroll(
                    iter(
                        [
                            hub_pb2.EnrollRequest(
                                header=hub_pb2.EnrollHeader(dataset="d", epoch=1)
                            ),
                            hub_pb2.EnrollRequest(batch=hub_pb2.TagBatch(keys=keys)),
                            hub_pb2.EnrollRequest(
                                trailer=hub_pb2.EnrollTrailer(tag_count=5, digest=digest)
                            ),
                        ]
                    ),
                    timeout=10,
                )
            async with hub.channel("USA") as channel:
                stub = hub_pb2_grpc.HubStub(channel)
                tags = [
                    common_pb2.QueryTag(tag=k.tag, key_type=common_pb2.KEY_TYPE_EMAIL)
                    for k in keys[:2]
                ]
                await stub.Query(hub_pb2.QueryRequest(epoch=1, tags=tags), timeout=10)
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.Query(hub_pb2.QueryRequest(epoch=1, tags=tags), timeout=10)
            address = (tmp_path / "metrics.address").read_text().strip()
            samples = await asyncio.to_thread(scrape, address)

            def reflect() -> set[str]:
                creds = pki.TlsFiles.in_folder(pki_root / "bureaus" / "USA").channel_credentials()
                with grpc.secure_channel(hub.address, creds) as channel:
                    return reflected_services(channel)

            services = await asyncio.to_thread(reflect)
        finally:
            await hub.stop()
        return samples, services

    samples, services = asyncio.run(main())
    hub_service = "blindmatch.v1.Hub"
    assert sample(samples, "blindmatch_hub_enrolled_tags_total") == 5
    assert sample(samples, "blindmatch_hub_queried_tags_total") == 2
    assert sample(samples, "blindmatch_hub_quota_refusals_total", bureau="USA", operation="query")
    assert sample(
        samples, "blindmatch_rpc_handled_total", service=hub_service, method="Enroll", code="OK"
    )
    assert sample(
        samples, "blindmatch_rpc_handled_total", service=hub_service, method="Query", code="OK"
    )
    assert sample(
        samples,
        "blindmatch_rpc_handled_total",
        service=hub_service,
        method="Query",
        code="RESOURCE_EXHAUSTED",
    )
    assert {
        "blindmatch.v1.Hub",
        "blindmatch.v1.AuditLog",
        "blindmatch.v1.Disclosure",
        "grpc.health.v1.Health",
    } <= services


def test_ops_config_tables(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(
        'listen = "127.0.0.1:0"\n\n[quota]\nquery_tags_per_second = 10\nquery_tags_burst = 100\n'
        '\n[metrics]\nlisten = "127.0.0.1:9465"\naddress_file = "m.addr"\nreflection = false\n'
    )
    ops = OpsConfig.load(config)
    assert ops.quota == QuotaSettings(10.0, 100.0)
    assert ops.metrics_listen == "127.0.0.1:9465" and not ops.reflection
    assert ops.metrics_address_file == tmp_path / "m.addr"
    assert OpsConfig.from_mapping({}, base=tmp_path) == OpsConfig()  # quota on, metrics off
    disabled = OpsConfig.from_mapping({"quota": {"enabled": False}}, base=tmp_path)
    assert disabled.quota is None
    for bad, words in (
        ({"quota": {"query_tags_burst": 0}}, "positive"),
        ({"quota": {"burst": 5}}, "unknown key(s) burst in [quota]"),
        ({"metrics": {"listen": "9465"}}, "host:port"),
        ({"metrics": "on"}, "must be a table"),
    ):
        with pytest.raises(ConfigError, match=r".*") as info:
            OpsConfig.from_mapping(bad, base=tmp_path)
        assert words in str(info.value)


# -- deadlines ---------------------------------------------------------------------------------

RPC_NAMES = {
    m.name
    for module in (hub_pb2, audit_pb2, disclosure_pb2, custodian_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
    for m in service.methods
} | {m.name for m in health_pb2.DESCRIPTOR.services_by_name["Health"].methods}
# Calls without an overall deadline, and why (see bureau_agent.local_api's notes):
# enrollment and bulk streams have a per-message inactivity deadline instead.
NO_OVERALL_DEADLINE = {("local_api.py", "Enroll"), ("local_api.py", "BulkMatch")}


def test_every_outgoing_call_of_the_agent_has_a_deadline() -> None:
    """An audit of the source: every RPC the agent makes (to custodians, the
    hub, other agents) passes `timeout=`.  cli.py is left out: it calls its
    own agent over the Unix socket, and the agent bounds each outgoing call."""
    audited = 0
    missing = []
    for path in sorted((ROOT / "bureau_agent").glob("*.py")):
        if path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in RPC_NAMES
            ):
                continue
            audited += 1
            timeout = next((k.value for k in node.keywords if k.arg == "timeout"), None)
            where = (path.name, node.func.attr)
            explicit_none = isinstance(timeout, ast.Constant) and timeout.value is None
            if timeout is None or (explicit_none and where not in NO_OVERALL_DEADLINE):
                missing.append((*where, node.lineno))
    assert missing == []
    assert audited >= 20


class StuckHub(hub_pb2_grpc.HubServicer):
    """A hub that accepts calls and never answers; counts them."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.failures: dict[str, int] = {}

    def _seen(self, name: str) -> int:
        self.calls[name] = self.calls.get(name, 0) + 1
        return self.calls[name]

    async def Query(self, request: Any, context: Any) -> Any:
        self._seen("Query")
        if self.failures.get("Query"):
            self.failures["Query"] -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "hub restarting")
        await asyncio.Event().wait()

    async def ListDatasets(self, request: Any, context: Any) -> Any:
        self._seen("ListDatasets")
        if self.failures.get("ListDatasets"):
            self.failures["ListDatasets"] -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "hub restarting")
        return hub_pb2.ListDatasetsResponse()

    async def Enroll(self, request_iterator: Any, context: Any) -> Any:
        self._seen("Enroll")
        await asyncio.Event().wait()  # never reads, never answers

    async def GetStatus(self, request: Any, context: Any) -> Any:
        # A query asks which key epochs are in use when the directory has several.
        return hub_pb2.HubStatus(epochs=[1])


async def serve_fake_hub(root: Path, servicer: Any) -> grpc.aio.Server:
    server = grpc.aio.server()
    hub_pb2_grpc.add_HubServicer_to_server(servicer, server)
    port = server.add_secure_port(
        "127.0.0.1:0", pki.TlsFiles.in_folder(root / "hub").server_credentials()
    )
    await server.start()
    pki.update_directory(root, lambda d: d.replace(hub_address=f"127.0.0.1:{port}"))
    return server


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


def test_deadlines_and_retries_against_a_misbehaving_hub(
    pki_root: Path, tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    (tmp_path / "schema.toml").write_text(
        'format = "csv"\nid = "id"\n\n[fields]\nemail = "email"\n'
    )
    (tmp_path / "data.csv").write_text("id,email\nR1,a@b.org\n")

    async def main() -> dict[str, Any]:
        hub = StuckHub()  # type: ignore[abstract]  # the methods it leaves out are not called
        server = await serve_fake_hub(pki_root, hub)
        custodians = Custodians(pki_root, executor)
        agent = InProcessAgent(pki_root, "USA", tmp_path / "usa", executor, rpc_timeout=0.5)
        out: dict[str, Any] = {}
        try:
            await custodians.start("FRA")
            await custodians.start("USA")
            await agent.start()
            async with agent.channel() as channel:
                stub = agent.stub(channel)
                started = time.monotonic()
                try:
                    await stub.Query(
                        agent_pb2.LocalQueryRequest(
                            identifiers=agent_pb2.Identifiers(email="a@b.org")
                        ),
                        timeout=30,
                    )
                except grpc.aio.AioRpcError as exc:
                    out["stuck query"] = (exc.code(), time.monotonic() - started)
                # A read is retried after UNAVAILABLE; a query is not.
                hub.failures = {"ListDatasets": 2, "Query": 1}
                await stub.ListDatasets(agent_pb2.LocalListDatasetsRequest(), timeout=30)
                out["list attempts"] = hub.calls["ListDatasets"]
                before = hub.calls["Query"]
                try:
                    await stub.Query(
                        agent_pb2.LocalQueryRequest(
                            identifiers=agent_pb2.Identifiers(email="a@b.org")
                        ),
                        timeout=30,
                    )
                except grpc.aio.AioRpcError as exc:
                    out["failed query"] = (exc.code(), hub.calls["Query"] - before)
            started = time.monotonic()
            try:
                await agent.enroll(tmp_path / "data.csv", tmp_path / "schema.toml", "d")
            except grpc.aio.AioRpcError as exc:
                out["stuck enroll"] = (exc.code(), exc.details(), time.monotonic() - started)
        finally:
            await agent.stop()
            await custodians.close()
            await server.stop(None)
        return out

    out = asyncio.run(main())
    code, seconds = out["stuck query"]
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED and seconds < 5
    assert out["list attempts"] == 3
    assert out["failed query"] == (grpc.StatusCode.UNAVAILABLE, 1)
    code, details, seconds = out["stuck enroll"]
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED, details
    assert "did not acknowledge the enrollment" in details and "--replace" in details
    assert seconds < 15


class Flaky(CustodianService):
    """A custodian that is briefly unavailable, or over quota, then answers."""

    def __init__(self, *args: Any, failures: list[tuple[grpc.StatusCode, str]], **kw: Any):
        super().__init__(*args, **kw)
        self.failures = failures
        self.calls = 0

    async def Evaluate(self, request: Any, context: Any) -> Any:
        self.calls += 1
        if self.failures:
            code, retry_ms = self.failures.pop(0)
            if retry_ms:
                context.set_trailing_metadata((("retry-after-ms", retry_ms),))
            await context.abort(code, "not now")
        return await super().Evaluate(request, context)


def test_custodian_evaluate_is_retried_with_backoff(
    pki_root: Path, tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    """n = t = 2: a transient failure of one custodian would fail the batch
    without a retry; Evaluate is idempotent, so the tagger asks again."""

    async def main() -> tuple[list[bytes], int, int, float]:
        custodians = Custodians(pki_root, executor)
        agent = InProcessAgent(pki_root, "USA", tmp_path / "usa", executor)
        try:
            await custodians.start(
                "FRA",
                Flaky,
                failures=[
                    (grpc.StatusCode.UNAVAILABLE, ""),
                    (grpc.StatusCode.RESOURCE_EXHAUSTED, "150"),
                ],
            )
            await custodians.start("USA")
            await agent.start()
            assert agent.tagger is not None
            started = time.monotonic()
            tags = await agent.tagger.tag([b"blindmatch/v1|email|a@b.org"])
            flaky = custodians.services["FRA"]
            assert isinstance(flaky, Flaky)
            return tags, flaky.calls, agent.tagger.stats.retries, time.monotonic() - started
        finally:
            await agent.stop()
            await custodians.close()

    from tests.inprocess import expected_tags

    tags, calls, retries, seconds = asyncio.run(main())
    assert tags == expected_tags(pki_root, [b"blindmatch/v1|email|a@b.org"], ["FRA", "USA"])
    assert calls == 3 and retries >= 2
    assert seconds >= 0.15  # the retry-after hint was honoured
    set_address(pki_root, "FRA", "")


def test_metrics_endpoint_errors_are_clear() -> None:
    import socket

    from bureau_agent.metrics import AgentMetrics, MetricsError, serve_metrics

    registry = AgentMetrics().registry
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            serve_metrics(registry, f"127.0.0.1:{port}")
    with pytest.raises(MetricsError, match="must be host:port"):
        serve_metrics(registry, "9464")
    endpoint = serve_metrics(registry, "127.0.0.1:0")
    try:
        assert sample(scrape(endpoint.address), "blindmatch_agent_enrolled_tags_total") == 0
    finally:
        endpoint.stop()


def test_hub_process_reads_quota_and_metrics_tables(pki_root: Path, tmp_path: Path) -> None:
    """`python -m hub` with [quota] and [metrics] in its configuration: quota
    refusals, INVALID_ARGUMENT for garbage, reflection and the endpoint."""
    import signal
    import subprocess
    import sys

    config = tmp_path / "hub.toml"
    config.write_text(
        f'listen = "127.0.0.1:0"\n'
        f'database = "{tmp_path / "hub.sqlite"}"\n'
        f'address_file = "{tmp_path / "address"}"\n'
        f'credentials = "{pki_root / "hub"}"\n'
        f'federation = "{pki_root}"\n\n'
        "[quota]\nquery_tags_per_second = 1\nquery_tags_burst = 3\n\n"
        '[metrics]\nlisten = "127.0.0.1:0"\naddress_file = "metrics.address"\n'
    )
    log = (tmp_path / "hub.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "hub", "--config", str(config)], stdout=log, stderr=log, cwd=ROOT
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "metrics.address").exists() or not (tmp_path / "address").exists():
            assert process.poll() is None, (tmp_path / "hub.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        address = (tmp_path / "address").read_text().strip()
        creds = pki.TlsFiles.in_folder(pki_root / "bureaus" / "USA").channel_credentials()
        tags = [common_pb2.QueryTag(tag=bytes(16), key_type=common_pb2.KEY_TYPE_EMAIL)] * 2
        with grpc.secure_channel(address, creds) as channel:
            stub = hub_pb2_grpc.HubStub(channel)
            stub.Query(hub_pb2.QueryRequest(epoch=1, tags=tags), timeout=10)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Query(hub_pb2.QueryRequest(epoch=1, tags=tags), timeout=10)
            raw: Any = channel.unary_unary(
                "/blindmatch.v1.Hub/Query", request_serializer=None, response_deserializer=None
            )
            with pytest.raises(grpc.RpcError) as garbage:
                raw(b"\xff\xff\xff", timeout=10)
            services = reflected_services(channel)
        samples = scrape((tmp_path / "metrics.address").read_text().strip())
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        exit_code = process.wait(30)
        log.close()
    assert exit_code == 0
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert garbage.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "blindmatch.v1.Hub" in services
    assert sample(samples, "blindmatch_hub_quota_refusals_total", bureau="USA", operation="query")
