"""The hub daemon: mutual-TLS grpc.aio servers (`listeners` of them sharing
one port) with the Hub, AuditLog, Disclosure and standard health-checking
services, over the store its configuration names (`SqliteTagStore`, or
`PostgresTagStore` which several hub processes may share).

`serve` runs until SIGTERM/SIGINT (or `stop` is set, or it is cancelled),
then stops accepting calls, ends follow-mode notice streams, gives in-flight
calls `grace_period` seconds and closes the store.  `migrate` creates or
upgrades the store's schema without serving (`serve` does it too).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from blindmatch.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    disclosure_pb2,
    disclosure_pb2_grpc,
    hub_pb2,
    hub_pb2_grpc,
)
from bureau_agent import pki
from hub.audit import TreeHeadSigner
from hub.config import HubConfig
from hub.errors import ConfigError
from hub.metrics import Operations
from hub.quota_config import OpsConfig
from hub.service import AuditLogService, DisclosureService, HubService
from hub.store import HubStore, SqliteTagStore

__all__ = ["Migration", "migrate", "open_store", "run", "serve", "settle_heap"]

log = logging.getLogger("blindmatch.hub")

_SERVICES = (
    hub_pb2.DESCRIPTOR.services_by_name["Hub"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditLog"].full_name,
    disclosure_pb2.DESCRIPTOR.services_by_name["Disclosure"].full_name,
)
# A tagged key is about 40 bytes on the wire; leave room for the largest request.
_BYTES_PER_KEY = 64
_MIN_MESSAGE_BYTES = 8 * 1024 * 1024


def _bound_address(listen: str, port: int) -> str:
    host = listen.rpartition(":")[0]
    return f"{host}:{port}"


def _write_address(path: Path, address: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(address + "\n", encoding="utf-8")
    os.replace(tmp, path)  # a reader never sees a half-written address


def _audit_key(config: HubConfig, directory: pki.DirectoryCache | None) -> Ed25519PrivateKey | None:
    """The audit signing key, checked against the directory's hub audit key."""
    path = config.audit_key_path
    if path is None:
        log.warning(
            "no audit signing key (audit_key, or audit-signing.key beside %s): the audit "
            "log is kept but its tree heads cannot be signed",
            config.tls.cert,
        )
        return None
    try:
        key = pki.load_ed25519_key(path)
    except (pki.PkiError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot load the audit signing key {path}: {exc}") from None
    listed = directory.get().hub_audit_key if directory is not None else b""
    if listed and key.public_key().public_bytes_raw() != listed:
        raise ConfigError(
            f"the audit signing key {path} is not the hub audit key the federation directory "
            "lists; bureaus would refuse every tree head (re-run `blindmatch pki issue --hub`, "
            "or point audit_key at the right key)"
        )
    return key


async def open_store(config: HubConfig, *, auto_sweep: bool = True) -> HubStore:
    """Open the store `config` names (creating or upgrading its schema)."""
    if config.store == "postgres":
        from hub.store_pg import PostgresTagStore  # psycopg only when it is used

        return await PostgresTagStore.open(
            config.dsn, readers=config.reader_threads, auto_sweep=auto_sweep
        )
    return await SqliteTagStore.open(
        config.sqlite_path, readers=config.reader_threads, auto_sweep=auto_sweep
    )


@dataclass(frozen=True)
class Migration:
    """What `migrate` did: the store and its schema version before and after
    (0 before: the schema was created)."""

    store: str
    before: int
    after: int

    def __str__(self) -> str:
        if self.before == self.after:
            return f"{self.store}: schema version {self.after}, up to date"
        if self.before == 0:
            return f"{self.store}: schema version {self.after} created"
        return f"{self.store}: schema upgraded from version {self.before} to {self.after}"


def migrate(config_path: Path) -> Migration:
    """Create or upgrade the schema of the store `config_path` names, without
    serving; running it again changes nothing."""
    config = HubConfig.load(config_path)
    if config.store == "postgres":
        from hub.store_pg import PostgresTagStore

        before, after = PostgresTagStore.migrate(config.dsn)
    else:
        before, after = SqliteTagStore.migrate(config.sqlite_path)
    return Migration(config.store_description, before, after)


def _bind(
    servers: Sequence[grpc.aio.Server], listen: str, credentials: grpc.ServerCredentials
) -> int:
    """Bind every server to `listen` (the first picks the port when it is 0);
    the port.  Several servers share it with SO_REUSEPORT: grpc.aio accepts
    one new call at a time per server (the next only after the event loop
    has come round), so under load calls wait to be accepted, not served;
    with several servers the kernel spreads the connections over them and
    each accepts its own."""
    host, _, wanted = listen.rpartition(":")
    port = int(wanted)
    if len(servers) > 1 and port != 0:
        _check_port_free(listen)
    for server in servers:
        try:
            bound = server.add_secure_port(f"{host}:{port}", credentials)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {listen}: {exc}") from None
        if bound == 0:
            raise ConfigError(f"cannot listen on {listen}")
        port = bound
    return port


def _check_port_free(listen: str) -> None:
    """Refuse a port some socket already listens on.  Servers that share a
    port with SO_REUSEPORT would otherwise also share it with another process
    of the same user (a second hub started by mistake) and lose half the calls
    to it; a plain bind, which SO_REUSEPORT does not let through, finds out."""
    host, _, port = listen.rpartition(":")
    try:
        addresses = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        raise ConfigError(f"cannot listen on {listen}: {exc}") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ConfigError(
                        f"cannot listen on {listen}: the port is in use (another hub?)"
                    ) from None
                # Another failure (say, no IPv6 here) is gRPC's to report.


@contextlib.contextmanager
def _signals(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread (tests) or no signals on this platform
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def serve(
    config: HubConfig,
    *,
    ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
    ops: OpsConfig | None = None,
) -> None:
    """Run the hub until SIGTERM/SIGINT, `stop`, or cancellation; `ready` is
    called with the bound "host:port" once the server accepts calls."""
    stop = stop or asyncio.Event()
    operations = Operations(ops or OpsConfig())
    directory = None
    if config.directory_path is not None and config.directory_ca is not None:
        directory = pki.DirectoryCache(config.directory_path, config.directory_ca)
    credentials = config.tls.server_credentials()
    message_bytes = max(_MIN_MESSAGE_BYTES, config.max_tags_per_request * _BYTES_PER_KEY)
    signer = TreeHeadSigner(_audit_key(config, directory))
    store = await open_store(config)
    try:
        directory_source = directory.get if directory is not None else None
        hub_service = HubService(
            store,
            max_tags_per_request=config.max_tags_per_request,
            directory=directory_source,
            quota=operations.quota,
            audit=store,
            metrics=operations.metrics,
        )
        audit_service = AuditLogService(store, signer, directory=directory_source)
        disclosure_service = DisclosureService(
            store, directory=directory_source, max_lifetime_days=config.max_disclosure_days
        )
        health_servicer = health.aio.HealthServicer()
        servers = []
        for _ in range(config.listeners):
            server = grpc.aio.server(
                interceptors=operations.interceptors(),
                options=[
                    ("grpc.max_receive_message_length", message_bytes),
                    ("grpc.max_send_message_length", message_bytes),
                    # One server alone never shares its port, so a second hub on
                    # the same port fails to bind instead of taking half the calls.
                    ("grpc.so_reuseport", int(config.listeners > 1)),
                ],
            )
            hub_pb2_grpc.add_HubServicer_to_server(hub_service, server)
            audit_pb2_grpc.add_AuditLogServicer_to_server(audit_service, server)
            disclosure_pb2_grpc.add_DisclosureServicer_to_server(disclosure_service, server)
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
            servers.append(server)
        operations.start(servers, (*_SERVICES, health.SERVICE_NAME))
        port = _bind(servers, config.listen, credentials)
        for server in servers:
            await server.start()
        try:
            for service in ("", *_SERVICES):
                await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
            address = _bound_address(config.listen, port)
            if config.address_file is not None:
                _write_address(config.address_file, address)
            log.info("hub listening on %s (%s)", address, config.store_description)
            with _signals(stop):
                if ready is not None:
                    ready(address)
                await stop.wait()
            log.info("hub stopping; in-flight calls get %.1f s", config.grace_period)
        finally:
            await health_servicer.enter_graceful_shutdown()
            await store.interrupt_waiters()
            await asyncio.gather(*(server.stop(config.grace_period) for server in servers))
    finally:
        operations.stop()
        await store.close()


def run(config_path: Path) -> None:
    """Load the configuration and serve until SIGTERM/SIGINT (the CLI's entry)."""
    config = HubConfig.load(config_path)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
        )
    asyncio.run(serve(config, ops=OpsConfig.load(config_path), ready=settle_heap))


def settle_heap(_address: str = "") -> None:
    """Move what start-up built into the collector's permanent generation.

    The modules, the store's caches and the servers live as long as the
    process; a full collection walking them stopped the event loop for
    14-19 ms (twice in six seconds at 2,000 queries/s), after this for
    about 1 ms.  Called once the hub serves, by the process entry only (a
    library caller's heap is its own business)."""
    gc.collect()
    gc.freeze()
    log.info("start-up objects kept out of garbage collection: %d", gc.get_freeze_count())
