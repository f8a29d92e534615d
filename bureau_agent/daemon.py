"""The agent daemon: custodian service (mutual TLS, when the bureau holds a
share) and the local API (Unix socket), with health checking, gRPC server
reflection, a Prometheus metrics endpoint when `metrics_listen` is set, and a
graceful shutdown on SIGTERM.

Both servers count and time every RPC and refuse undecodable requests with
INVALID_ARGUMENT (`bureau_agent.interceptors`)."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from blindmatch.v1 import agent_pb2, agent_pb2_grpc, custodian_pb2, custodian_pb2_grpc
from bureau_agent import ceremony, pki, rpc, work
from bureau_agent.config import AgentConfig
from bureau_agent.custodian import CustodianService
from bureau_agent.disclosure_desk import DisclosureDesk
from bureau_agent.local_api import AgentService
from bureau_agent.logs import setup_logging
from bureau_agent.metrics import AgentMetrics, MetricsEndpoint, enable_reflection, serve_metrics
from bureau_agent.quota import TokenBuckets
from bureau_agent.records import RecordStore
from bureau_agent.tagging import ThresholdTagger
from psi import disclosure

__all__ = ["run", "serve"]

log = logging.getLogger("blindmatch.agent")
GRACE_SECONDS = 5.0
_AGENT = agent_pb2.DESCRIPTOR.services_by_name["Agent"].full_name
_CUSTODIAN = custodian_pb2.DESCRIPTOR.services_by_name["Custodian"].full_name


async def serve(config: AgentConfig, stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set (or SIGTERM/SIGINT arrives)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(config.state_dir, 0o700)
    directory = pki.DirectoryCache(config.directory_path, config.ca_cert)
    # Spawned, not forked: forking a process that already runs gRPC threads
    # leaves the children with broken locks.
    executor = ProcessPoolExecutor(
        config.worker_count,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=work.exit_with_parent,
        initargs=(os.getpid(),),
    )
    # Spawn every worker now (the pool spawns them on demand), in the background.
    warm_up = asyncio.gather(
        *(loop.run_in_executor(executor, work.warm_up) for _ in range(config.worker_count))
    )
    # A pool that cannot start fails the first real task loudly; nothing to report here.
    warm_up.add_done_callback(lambda f: f.cancelled() or f.exception())
    store = RecordStore(config.records_path)
    servers: list[grpc.aio.Server] = []
    health_servicer = health.aio.HealthServicer()
    metrics = AgentMetrics()
    endpoint: MetricsEndpoint | None = None
    if config.metrics_listen:
        endpoint = serve_metrics(metrics.registry, config.metrics_listen)
        pki.write_private_file(config.metrics_address_file, f"{endpoint.address}\n".encode())

    custodian_service: CustodianService | None = None
    if config.custodian is not None:
        shares = ceremony.load_shares(config.custodian.shares, directory.get(), config.bureau)
        custodian_server = grpc.aio.server(
            options=rpc.CHANNEL_OPTIONS, interceptors=metrics.rpc.interceptors()
        )
        custodian_service = CustodianService(
            list(shares.values()),
            directory.get,
            executor,
            max_batch=config.custodian.max_batch,
            quota=TokenBuckets(
                config.custodian.quota_elements_per_second, config.custodian.quota_burst
            ),
            metrics=metrics,
        )
        custodian_pb2_grpc.add_CustodianServicer_to_server(custodian_service, custodian_server)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, custodian_server)
        enable_reflection(custodian_server, (_CUSTODIAN, health.SERVICE_NAME))
        port = custodian_server.add_secure_port(config.listen, config.tls.server_credentials())
        if port == 0:
            raise pki.PkiError(f"cannot listen on {config.listen}")
        await custodian_server.start()
        servers.append(custodian_server)
        host = config.listen.rsplit(":", 1)[0]
        pki.write_private_file(config.address_file, f"{host}:{port}\n".encode())
        log.info(
            "custodian listening",
            extra={
                "address": f"{host}:{port}",
                "epochs": ",".join(str(e) for e in shares),
                "indices": ",".join(str(s.share.index) for s in shares.values()),
            },
        )

    # A custodian bureau applies its own share to its own batches itself.
    own_shares = {} if custodian_service is None else {e: s.share for e, s in shares.items()}
    tagger = ThresholdTagger(
        directory,
        config.tls,
        executor,
        rpc_timeout=config.rpc_timeout,
        own_shares=own_shares,
    )
    agent = AgentService(config, directory, tagger, store, metrics=metrics)
    if config.signing_key_path.exists() and all(p.exists() for p in config.hpke_key_paths):
        mlkem_path, x25519_path = config.hpke_key_paths
        agent.attach_desk(
            DisclosureDesk(
                config.bureau,
                store,
                directory,
                pki.load_ed25519_key(config.signing_key_path),
                disclosure.hpke_private_key(mlkem_path.read_bytes(), x25519_path.read_bytes()),
                agent.hub_channel,
                timeout=config.rpc_timeout,
            )
        )
    if custodian_service is not None:
        custodian_service.attach_witness(agent.audit)
    local_server = grpc.aio.server(
        options=rpc.CHANNEL_OPTIONS, interceptors=metrics.rpc.interceptors()
    )
    agent_pb2_grpc.add_AgentServicer_to_server(agent, local_server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, local_server)
    enable_reflection(local_server, (_AGENT, health.SERVICE_NAME))
    if config.socket_path.exists():
        config.socket_path.unlink()
    local_server.add_insecure_port(f"unix:{config.socket_path}")
    await local_server.start()
    os.chmod(config.socket_path, 0o600)  # the bureau's operators only
    servers.append(local_server)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info("agent ready", extra={"bureau": config.bureau, "socket": str(config.socket_path)})

    await stop.wait()
    log.info("shutting down", extra={"grace_seconds": GRACE_SECONDS})
    warm_up.cancel()
    await health_servicer.enter_graceful_shutdown()
    await asyncio.gather(*(s.stop(GRACE_SECONDS) for s in servers))
    await agent.close()
    store.close()
    executor.shutdown(cancel_futures=True)
    config.socket_path.unlink(missing_ok=True)
    if endpoint is not None:
        endpoint.stop()
        config.metrics_address_file.unlink(missing_ok=True)
    log.info("stopped")


def run(config: AgentConfig) -> None:
    """Blocking entry point for `blindmatch agent serve`."""
    setup_logging(component=f"agent {config.bureau}")
    asyncio.run(serve(config))
