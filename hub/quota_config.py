"""The hub's operations settings: quotas, metrics endpoint and reflection,
read from two optional tables of the hub's TOML configuration file.

    [quota]                           # per-bureau token buckets on looked-up tags
    enabled = true                    # default true
    query_tags_per_second = 50000     # Query and BulkMatch draw on one bucket per bureau
    query_tags_burst = 500000         # the most a bureau may look up at once

    [metrics]
    listen = "127.0.0.1:9465"         # Prometheus text endpoint; default: off (no key)
    address_file = "metrics.address"  # optional: the bound host:port is written here
    reflection = true                 # gRPC server reflection; default true

They are parsed here rather than in `hub.config.HubConfig` so that the two
can change independently; `HubConfig` only has to let the two tables pass.
Relative paths are relative to the configuration file's folder.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bureau_agent.quota import TokenBuckets
from hub.errors import ConfigError

__all__ = ["OpsConfig", "QuotaSettings"]

_QUOTA_KEYS = frozenset({"enabled", "query_tags_per_second", "query_tags_burst"})
_METRICS_KEYS = frozenset({"listen", "address_file", "reflection"})


@dataclass(frozen=True)
class QuotaSettings:
    """A token bucket per bureau over the tags it looks up."""

    query_tags_per_second: float = 50_000.0
    query_tags_burst: float = 500_000.0

    def buckets(self) -> TokenBuckets:
        return TokenBuckets(self.query_tags_per_second, self.query_tags_burst)


@dataclass(frozen=True)
class OpsConfig:
    """Quota, metrics and reflection settings (all optional)."""

    quota: QuotaSettings | None = field(default_factory=QuotaSettings)
    metrics_listen: str = ""
    metrics_address_file: Path | None = None
    reflection: bool = True

    @classmethod
    def load(cls, path: Path) -> OpsConfig:
        """Read the `[quota]` and `[metrics]` tables of the hub's TOML file."""
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"hub configuration not found at {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
        return cls.from_mapping(data, base=path.parent, source=str(path))

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], *, base: Path, source: str = "hub configuration"
    ) -> OpsConfig:
        quota = _table(data, "quota", _QUOTA_KEYS, source)
        metrics = _table(data, "metrics", _METRICS_KEYS, source)

        def flag(table: Mapping[str, Any], name: str, key: str) -> bool:
            value = table.get(key, True)
            if not isinstance(value, bool):
                raise ConfigError(f"{source}: [{name}] {key} must be true or false, got {value!r}")
            return value

        def rate(key: str, default: float) -> float:
            value = quota.get(key, default)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ConfigError(
                    f"{source}: [quota] {key} must be a positive number, got {value!r}"
                )
            return float(value)

        settings = QuotaSettings(
            query_tags_per_second=rate("query_tags_per_second", 50_000.0),
            query_tags_burst=rate("query_tags_burst", 500_000.0),
        )
        listen = metrics.get("listen", "")
        if not isinstance(listen, str):
            raise ConfigError(f"{source}: [metrics] listen must be host:port, got {listen!r}")
        if listen:
            host, colon, port = listen.rpartition(":")
            if not colon or not host or not port.isdigit() or int(port) > 65535:
                raise ConfigError(
                    f"{source}: [metrics] listen must be host:port (port 0 = any), got {listen!r}"
                )
        address_file: Path | None = None
        if "address_file" in metrics:
            raw = metrics["address_file"]
            if not isinstance(raw, str) or not raw:
                raise ConfigError(f"{source}: [metrics] address_file must be a path")
            address_file = Path(raw) if Path(raw).is_absolute() else base / raw
        return cls(
            quota=settings if flag(quota, "quota", "enabled") else None,
            metrics_listen=listen,
            metrics_address_file=address_file,
            reflection=flag(metrics, "metrics", "reflection"),
        )


def _table(
    data: Mapping[str, Any], name: str, known: frozenset[str], source: str
) -> Mapping[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, Mapping):
        raise ConfigError(f"{source}: {name} must be a table ([{name}])")
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)} in [{name}]; known keys are "
            f"{', '.join(sorted(known))}"
        )
    return table
