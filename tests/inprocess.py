"""Real gRPC servers in the test's event loop, over mutual TLS and real files:
a hub (as `hub.server` builds it, with `hub.metrics.Operations`), custodian
servers (honest, or a subclass that lies), and a bureau agent's local API on a
Unix socket.  Used by the adversarial and operations tests, which need to
reach inside a party (a dishonest custodian, a hub with a tiny quota) in a
way a production process must not offer."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from blindmatch.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    custodian_pb2_grpc,
    disclosure_pb2,
    disclosure_pb2_grpc,
    hub_pb2,
    hub_pb2_grpc,
)
from bureau_agent import ceremony, pki
from bureau_agent.config import AgentConfig
from bureau_agent.custodian import CustodianService
from bureau_agent.local_api import AgentService
from bureau_agent.metrics import AgentMetrics, enable_reflection
from bureau_agent.records import RecordStore
from bureau_agent.retry import Backoff
from bureau_agent.tagging import ThresholdTagger
from hub.audit import TreeHeadSigner
from hub.metrics import Operations
from hub.quota_config import OpsConfig
from hub.service import AuditLogService, DisclosureService, HubService
from hub.store import SqliteTagStore
from psi import oprf, tags, threshold
from psi.oprf import Mode

HUB_SERVICES = (
    hub_pb2.DESCRIPTOR.services_by_name["Hub"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditLog"].full_name,
    disclosure_pb2.DESCRIPTOR.services_by_name["Disclosure"].full_name,
    health.SERVICE_NAME,
)


def make_federation(
    root: Path, bureaus: Sequence[str], custodians: Sequence[str], threshold_t: int
) -> Path:
    """CA, hub and bureau certificates, directory and a key ceremony."""
    pki.init_federation(root, "adversaries")
    pki.issue_hub(root)
    for code in bureaus:
        pki.issue_bureau(root, code)
    ceremony.run_ceremony(root, epoch=1, threshold_t=threshold_t, custodians=list(custodians))
    return root


def directory_cache(root: Path) -> pki.DirectoryCache:
    return pki.DirectoryCache(root / "directory.json", root / "ca" / "ca.crt")


def expected_tags(root: Path, inputs: Sequence[bytes], custodians: Sequence[str]) -> list[bytes]:
    """The tags the single key recovered from t shares gives (what honest tagging yields)."""
    d = pki.load_directory(root / "directory.json", root / "ca" / "ca.crt")
    shares = [ceremony.load_share(ceremony.share_path(root, 1, c), d, c).share for c in custodians]
    key = threshold.recover_key(shares)
    return [tags.tag_from_output(oprf.evaluate(key, x, Mode.VOPRF)) for x in inputs]


def set_address(root: Path, code: str, address: str) -> None:
    pki.set_address(root, code, address)


@dataclass
class InProcessHub:
    """The hub's three services and health over one SQLite file."""

    root: Path
    database: Path
    ops: OpsConfig = field(default_factory=OpsConfig)
    max_tags_per_request: int = 10_000
    server: grpc.aio.Server | None = None
    store: SqliteTagStore | None = None
    operations: Operations | None = None
    address: str = ""

    async def start(self) -> str:
        self.store = await SqliteTagStore.open(self.database, readers=2)
        cache = directory_cache(self.root)
        self.operations = Operations(self.ops)
        server = grpc.aio.server(
            interceptors=self.operations.interceptors(),
            # As hub.server: room for the largest request, so that a larger one
            # is refused by gRPC's own size check.
            options=[
                ("grpc.max_receive_message_length", 8 * 1024 * 1024),
                ("grpc.max_send_message_length", 8 * 1024 * 1024),
            ],
        )
        hub_pb2_grpc.add_HubServicer_to_server(
            HubService(
                self.store,
                max_tags_per_request=self.max_tags_per_request,
                directory=cache.get,
                quota=self.operations.quota,
                audit=self.store,
                metrics=self.operations.metrics,
            ),
            server,
        )
        key = pki.load_ed25519_key(self.root / "hub" / "audit-signing.key")
        audit_pb2_grpc.add_AuditLogServicer_to_server(
            AuditLogService(self.store, TreeHeadSigner(key), directory=cache.get), server
        )
        disclosure_pb2_grpc.add_DisclosureServicer_to_server(
            DisclosureService(self.store, directory=cache.get), server
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        tls = pki.TlsFiles.in_folder(self.root / "hub")
        port = server.add_secure_port("127.0.0.1:0", tls.server_credentials())
        self.operations.start([server], HUB_SERVICES)
        await server.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        self.server = server
        self.address = f"127.0.0.1:{port}"
        pki.update_directory(self.root, lambda d: d.replace(hub_address=self.address))
        return self.address

    async def stop(self) -> None:
        if self.server is not None:
            if self.store is not None:
                await self.store.interrupt_waiters()
            await self.server.stop(None)
            self.server = None
        if self.operations is not None:
            self.operations.stop()
        if self.store is not None:
            await self.store.close()
            self.store = None

    def channel(self, code: str) -> grpc.aio.Channel:
        creds = pki.TlsFiles.in_folder(self.root / "bureaus" / code).channel_credentials()
        return grpc.aio.secure_channel(self.address, creds)


class Custodians:
    """Custodian servers on 127.0.0.1:0; each publishes its address."""

    def __init__(self, root: Path, executor: Executor) -> None:
        self.root = root
        self.executor = executor
        self.servers: dict[str, grpc.aio.Server] = {}
        self.services: dict[str, CustodianService] = {}
        self.cache = directory_cache(root)

    async def start(
        self,
        code: str,
        service_class: type[CustodianService] = CustodianService,
        *,
        share: threshold.KeyShare | None = None,
        metrics: AgentMetrics | None = None,
        **options: Any,
    ) -> str:
        loaded = ceremony.load_share(
            ceremony.share_path(self.root, 1, code), self.cache.get(), code
        )
        if share is not None:
            loaded = ceremony.CustodianShare(code, loaded.epoch, share, loaded.commitments)
        metrics = metrics or AgentMetrics()
        server = grpc.aio.server(interceptors=metrics.rpc.interceptors())
        service = service_class(
            [loaded], self.cache.get, self.executor, max_batch=64, metrics=metrics, **options
        )
        custodian_pb2_grpc.add_CustodianServicer_to_server(service, server)
        enable_reflection(server, ["blindmatch.v1.Custodian"])
        tls = pki.TlsFiles.in_folder(self.root / "bureaus" / code)
        port = server.add_secure_port("127.0.0.1:0", tls.server_credentials())
        await server.start()
        self.servers[code] = server
        self.services[code] = service
        address = f"127.0.0.1:{port}"
        set_address(self.root, code, address)
        return address

    async def stop(self, code: str) -> None:
        await self.servers.pop(code).stop(None)
        self.services.pop(code, None)
        set_address(self.root, code, "")

    async def close(self) -> None:
        for code in list(self.servers):
            await self.servers.pop(code).stop(None)


@dataclass
class InProcessAgent:
    """A bureau's local API (`AgentService`) on a Unix socket in `state`."""

    root: Path
    code: str
    state: Path
    executor: Executor
    batch_size: int = 1000
    rpc_timeout: float = 10.0
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.05, maximum=0.5))
    server: grpc.aio.Server | None = None
    service: AgentService | None = None
    tagger: ThresholdTagger | None = None
    metrics: AgentMetrics = field(default_factory=AgentMetrics)

    @property
    def config(self) -> AgentConfig:
        return AgentConfig(
            bureau=self.code,
            federation=self.root,
            credentials=self.root / "bureaus" / self.code,
            state_dir=self.state,
            batch_size=self.batch_size,
            rpc_timeout=self.rpc_timeout,
        )

    async def start(self) -> None:
        config = self.config
        self.state.mkdir(parents=True, exist_ok=True)
        cache = directory_cache(self.root)
        self.tagger = ThresholdTagger(
            cache, config.tls, self.executor, rpc_timeout=self.rpc_timeout, backoff=self.backoff
        )
        self.store = RecordStore(config.records_path)
        self.service = AgentService(
            config, cache, self.tagger, self.store, metrics=self.metrics, backoff=self.backoff
        )
        server = grpc.aio.server(interceptors=self.metrics.rpc.interceptors())
        agent_pb2_grpc.add_AgentServicer_to_server(self.service, server)
        server.add_insecure_port(f"unix:{config.socket_path}")
        await server.start()
        self.server = server

    def stub(self, channel: grpc.aio.Channel) -> agent_pb2_grpc.AgentAsyncStub:
        stub: agent_pb2_grpc.AgentAsyncStub = agent_pb2_grpc.AgentStub(channel)
        return stub

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(f"unix:{self.config.socket_path}")

    async def enroll(self, path: Path, schema: Path, dataset: str, **flags: Any) -> Any:
        """Run a local Enroll to the end; its summary (raises AioRpcError)."""
        async with self.channel() as channel:
            summary = None
            async for event in self.stub(channel).Enroll(
                agent_pb2.LocalEnrollRequest(
                    path=str(path), schema_path=str(schema), dataset=dataset, **flags
                ),
                timeout=120,
            ):
                if event.WhichOneof("event") == "summary":
                    summary = event.summary
            return summary

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(None)
            self.server = None
        if self.service is not None:
            await self.service.close()
        with contextlib.suppress(Exception):
            self.store.close()
