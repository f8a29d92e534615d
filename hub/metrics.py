"""The hub's Prometheus metrics and how its server is instrumented.

`HubMetrics` holds, in its own registry, the RPC counts and latencies of
every call (`bureau_agent.metrics.RpcMetrics`, by service, method and status
code), the tags committed by enrollments and updates, the tags looked up,
and quota refusals by bureau and operation.  Labels never carry a tag,
handle or identifier.

`Operations` bundles what `hub.server.serve` needs from `hub.quota_config`:

    ops = Operations(OpsConfig.load(config_path))
    server = grpc.aio.server(interceptors=ops.interceptors(), options=...)
    HubService(store, ..., quota=ops.quota, audit=store, metrics=ops.metrics)
    ...                                   # add the other servicers
    ops.start([server], service_names)    # reflection and the metrics endpoint
    ...
    ops.stop()
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence

import grpc
from prometheus_client import CollectorRegistry, Counter

from bureau_agent.metrics import MetricsEndpoint, RpcMetrics, enable_reflection, serve_metrics
from bureau_agent.quota import TokenBuckets
from hub.quota_config import OpsConfig

__all__ = ["HubMetrics", "Operations"]

log = logging.getLogger("blindmatch.hub")


class HubMetrics:
    """Counters of one hub process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.rpc = RpcMetrics(self.registry)
        self.enrolled_tags = Counter(
            "blindmatch_hub_enrolled_tags",
            "Tags made live by committed enrollments and dataset updates.",
            registry=self.registry,
        )
        self.queried_tags = Counter(
            "blindmatch_hub_queried_tags",
            "Tags looked up by Query and BulkMatch (refused ones excluded).",
            registry=self.registry,
        )
        self.quota_refusals = Counter(
            "blindmatch_hub_quota_refusals",
            "Lookups refused for quota, by bureau and operation.",
            ["bureau", "operation"],
            registry=self.registry,
        )


class Operations:
    """Quota buckets, metrics, interceptors, reflection and the metrics endpoint."""

    def __init__(self, config: OpsConfig, metrics: HubMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or HubMetrics()
        self.quota: TokenBuckets | None = config.quota.buckets() if config.quota else None
        self.endpoint: MetricsEndpoint | None = None

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """For `grpc.aio.server(interceptors=...)`."""
        return self.metrics.rpc.interceptors()

    def start(self, servers: Sequence[grpc.aio.Server], services: Iterable[str]) -> None:
        """Enable reflection on every server (before they start) and the metrics endpoint."""
        if self.config.reflection:
            names = tuple(services)
            for server in servers:
                enable_reflection(server, names)
        if self.config.metrics_listen:
            self.endpoint = serve_metrics(self.metrics.registry, self.config.metrics_listen)
            path = self.config.metrics_address_file
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text(self.endpoint.address + "\n", encoding="utf-8")
                os.replace(tmp, path)
            log.info("metrics endpoint on http://%s/metrics", self.endpoint.address)

    def stop(self) -> None:
        if self.endpoint is not None:
            self.endpoint.stop()
            self.endpoint = None
