"""Operations: Prometheus metrics, their HTTP endpoint, and gRPC reflection.

Every daemon keeps its metrics in its own `CollectorRegistry` (no global
state, so tests can run several servers in one process).  `RpcMetrics`
counts and times every RPC by service, method and status code through
`bureau_agent.interceptors.MetricsInterceptor`; the agent adds counters of
enrolled and queried tags and, as a custodian, of evaluated elements and
quota refusals.  Labels are service and method names, status codes and
bureau codes: never an identifier, tag or handle.

The endpoint is off unless configured (`metrics_listen` in the agent's
configuration); it serves the Prometheus text format on any path.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from bureau_agent.interceptors import DecodeGuard, MetricsInterceptor
from psi.errors import LocalError

__all__ = [
    "AgentMetrics",
    "MetricsEndpoint",
    "MetricsError",
    "RpcMetrics",
    "enable_reflection",
    "serve_metrics",
]

log = logging.getLogger("blindmatch.metrics")

# From a cache hit to a large enrollment stream.
_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120, 600)


class MetricsError(LocalError):
    """The metrics endpoint cannot be served at the configured address."""


class RpcMetrics:
    """RPC counts by service, method and code, and latencies by service and method."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.handled = Counter(
            "blindmatch_rpc_handled",
            "RPCs finished, by service, method and gRPC status code.",
            ["service", "method", "code"],
            registry=registry,
        )
        self.seconds = Histogram(
            "blindmatch_rpc_duration_seconds",
            "Time from the start of an RPC to its status, by service and method.",
            ["service", "method"],
            registry=registry,
            buckets=_BUCKETS,
        )

    def record(self, service: str, method: str, code: str, seconds: float) -> None:
        """One finished RPC."""
        self.handled.labels(service, method, code).inc()
        self.seconds.labels(service, method).observe(seconds)

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """The interceptors every server of ours takes, outermost first."""
        return [MetricsInterceptor(self.record), DecodeGuard()]


class AgentMetrics:
    """The metrics of one bureau agent (and its custodian role)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.rpc = RpcMetrics(self.registry)
        self.enrolled_tags = Counter(
            "blindmatch_agent_enrolled_tags",
            "Tags of enrollments the hub acknowledged.",
            registry=self.registry,
        )
        self.queried_tags = Counter(
            "blindmatch_agent_queried_tags",
            "Tags sent to the hub in queries and bulk matches.",
            registry=self.registry,
        )
        self.evaluated_elements = Counter(
            "blindmatch_custodian_evaluated_elements",
            "Blinded elements this custodian evaluated, by calling bureau.",
            ["caller"],
            registry=self.registry,
        )
        self.quota_refusals = Counter(
            "blindmatch_custodian_quota_refusals",
            "Evaluate calls this custodian refused for quota, by calling bureau.",
            ["caller"],
            registry=self.registry,
        )


@dataclass
class MetricsEndpoint:
    """A running metrics HTTP server."""

    address: str
    _server: WSGIServer
    _thread: threading.Thread

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(registry: CollectorRegistry, listen: str) -> MetricsEndpoint:
    """Serve `registry` in the Prometheus text format on `listen` ("host:port",
    port 0 = any free port); the endpoint's `address` is the bound one."""
    host, colon, port = listen.rpartition(":")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise MetricsError(f"the metrics address must be host:port (port 0 = any), got {listen!r}")
    try:
        server, thread = start_http_server(int(port), addr=host, registry=registry)
    except OSError as exc:
        raise MetricsError(f"cannot serve metrics on {listen}: {exc.strerror or exc}") from None
    address = f"{host}:{server.server_port}"
    log.info("metrics endpoint listening", extra={"address": address})
    return MetricsEndpoint(address, server, thread)


def enable_reflection(server: grpc.aio.Server, services: Iterable[str]) -> None:
    """Serve gRPC server reflection for `services` (full names) and itself."""
    reflection.enable_server_reflection((*services, reflection.SERVICE_NAME), server)
