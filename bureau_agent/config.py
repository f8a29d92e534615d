"""The agent daemon's configuration: a typed, frozen object loaded from TOML.

bureau = "FRA"
federation = "/etc/blindmatch/federation"   # folder with directory.json, ca/ca.crt
credentials = "/etc/blindmatch/FRA"         # folder with tls.crt, tls.key, ca.crt, keys
state_dir = "/var/lib/blindmatch"           # records.sqlite, agent.sock, address
listen = "127.0.0.1:7443"                   # custodian service (mutual TLS); port 0 = any
hub = "hub.example:7443"                    # default: the directory's hub address
phone_region = "FR"                         # default region for national phone numbers
batch_size = 1000                           # elements per OPRF batch
workers = 0                                 # CPU worker processes, 0 = one per core
rpc_timeout = 30.0                          # seconds, every outgoing RPC
metrics_listen = "127.0.0.1:9464"           # Prometheus endpoint; default: off

[custodian]                                 # only on custodian bureaus
shares = ["epoch-1.share.json", "epoch-2.share.json"]   # one file per key epoch held
max_batch = 4096

A custodian serves every epoch it holds a share of (during a key transition,
the old and the new one); `share = "epoch-1.share.json"` (a single file) is
accepted too.  Each share is checked against the directory's Feldman
commitments when the agent starts; two files of one epoch are refused.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bureau_agent import pki

__all__ = ["AgentConfig", "ConfigError", "CustodianConfig"]


class ConfigError(pki.PkiError):
    """The configuration file is missing, malformed or names a bad value."""


@dataclass(frozen=True)
class CustodianConfig:
    """The custodian role: the share files (one per key epoch), and the largest batch served."""

    shares: tuple[Path, ...]
    max_batch: int = 4096
    quota_elements_per_second: float = 50_000.0
    quota_burst: float = 500_000.0


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent daemon and the CLI need to know about one bureau."""

    bureau: str
    federation: Path
    credentials: Path
    state_dir: Path
    listen: str = "127.0.0.1:0"
    hub: str = ""
    phone_region: str = ""
    batch_size: int = 1000
    workers: int = 0
    rpc_timeout: float = 30.0
    metrics_listen: str = ""
    custodian: CustodianConfig | None = None
    source: Path | None = None

    @property
    def directory_path(self) -> Path:
        return self.federation / "directory.json"

    @property
    def ca_cert(self) -> Path:
        return self.federation / "ca" / "ca.crt"

    @property
    def tls(self) -> pki.TlsFiles:
        return pki.TlsFiles.in_folder(self.credentials)

    @property
    def signing_key_path(self) -> Path:
        return self.credentials / "signing.key"

    @property
    def hpke_key_paths(self) -> tuple[Path, Path]:
        return self.credentials / "hpke-mlkem768.key", self.credentials / "hpke-x25519.key"

    @property
    def socket_path(self) -> Path:
        return self.state_dir / "agent.sock"

    @property
    def address_file(self) -> Path:
        return self.state_dir / "address"

    @property
    def metrics_address_file(self) -> Path:
        return self.state_dir / "metrics-address"

    @property
    def records_path(self) -> Path:
        return self.state_dir / "records.sqlite"

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1

    @classmethod
    def load(cls, path: Path) -> AgentConfig:
        """Read a TOML file; relative paths are relative to the file's folder."""
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"agent configuration not found at {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        return cls.from_mapping(data, base=path.parent, source=path)

    @classmethod
    def from_mapping(
        cls, data: dict[str, Any], *, base: Path, source: Path | None = None
    ) -> AgentConfig:
        where = str(source or "configuration")
        known = {
            "bureau", "federation", "credentials", "state_dir", "listen", "hub",
            "phone_region", "batch_size", "workers", "rpc_timeout", "custodian",
            "metrics_listen",
        }  # fmt: skip
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(known)}")

        def text(key: str, default: str | None = None) -> str:
            value = data.get(key, default)
            if not isinstance(value, str) or (default is None and not value):
                raise ConfigError(f"{where}: {key} must be a non-empty string")
            return value

        def number(key: str, default: float, kind: type) -> Any:
            value = data.get(key, default)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{where}: {key} must be a non-negative number")
            return kind(value)

        def folder(key: str) -> Path:
            p = Path(text(key))
            return p if p.is_absolute() else base / p

        bureau = text("bureau")
        if not pki.BUREAU_CODE.match(bureau):
            raise ConfigError(f"{where}: bureau {bureau!r} must be three capital letters")
        custodian = None
        if "custodian" in data:
            custodian = _custodian(data["custodian"], base, where)
        batch_size = number("batch_size", 1000, int)
        if not 1 <= batch_size <= 65535:
            raise ConfigError(f"{where}: batch_size must be between 1 and 65535")
        return cls(
            bureau=bureau,
            federation=folder("federation"),
            credentials=folder("credentials"),
            state_dir=folder("state_dir"),
            listen=text("listen", "127.0.0.1:0"),
            hub=text("hub", ""),
            phone_region=text("phone_region", ""),
            batch_size=batch_size,
            workers=number("workers", 0, int),
            rpc_timeout=number("rpc_timeout", 30.0, float),
            metrics_listen=text("metrics_listen", ""),
            custodian=custodian,
            source=source,
        )


_CUSTODIAN_KEYS = frozenset(
    {"share", "shares", "max_batch", "quota_elements_per_second", "quota_burst"}
)


def _custodian(section: object, base: Path, where: str) -> CustodianConfig:
    """The `[custodian]` table: `shares = [paths]` or the older `share = path`."""
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: [custodian] must be a table")
    unknown = sorted(set(section) - _CUSTODIAN_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} in [custodian]")
    if "share" in section and "shares" in section:
        raise ConfigError(f"{where}: [custodian] sets both share and shares; keep shares only")
    if "shares" in section:
        raw = section["shares"]
        if not isinstance(raw, list) or not raw:
            raise ConfigError(
                f"{where}: [custodian] shares must be a non-empty list of share file paths"
            )
    elif "share" in section:
        raw = [section["share"]]
    else:
        raise ConfigError(
            f"{where}: [custodian] needs shares = [<share file>, ...] (one per key epoch)"
        )
    shares: list[Path] = []
    for item in raw:
        if not isinstance(item, str) or not item:
            raise ConfigError(f"{where}: [custodian] share paths must be non-empty strings")
        path = Path(item) if Path(item).is_absolute() else base / item
        if path in shares:
            raise ConfigError(f"{where}: [custodian] lists the share file {path} twice")
        shares.append(path)

    def number(key: str, default: float) -> float:
        value = section.get(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{where}: [custodian] {key} must be a positive number")
        return float(value)

    return CustodianConfig(
        shares=tuple(shares),
        max_batch=int(number("max_batch", 4096)),
        quota_elements_per_second=number("quota_elements_per_second", 50_000),
        quota_burst=number("quota_burst", 500_000),
    )
