"""The hub's configuration: a typed, frozen object loaded from TOML.

    listen = "0.0.0.0:7443"                  # host:port; port 0 = any free port
    listeners = 4                            # gRPC servers sharing that port (SO_REUSEPORT):
                                             # grpc.aio accepts one call at a time per
                                             # server, so under load several accept calls
                                             # in parallel (Linux balances connections
                                             # over them); 1 = one server, port not shared
    credentials = "/etc/blindmatch/hub"      # folder with tls.crt, tls.key, ca.crt, or
                                             # tls_cert, tls_key, ca_cert: the three files
    store = "sqlite"                         # or "postgres" (default: sqlite)
    database = "/var/lib/blindmatch/hub.sqlite"  # the SQLite file (store = "sqlite" only)
    postgres_dsn = "host=db.example dbname=blindmatch user=hub"  # libpq connection string
                                             # or URI (store = "postgres" only); a password
                                             # is better kept in ~/.pgpass or PGPASSWORD
    federation = "/etc/blindmatch/federation"  # optional: directory.json + ca/ca.crt;
                                             # when set, only bureaus it lists (and whose
                                             # certificates it does not revoke) are served,
                                             # and disclosure requests and decisions must
                                             # carry signatures by the keys it lists
    address_file = "/run/blindmatch/hub.address"  # optional: the bound host:port is written here
    audit_key = "/etc/blindmatch/hub/audit-signing.key"  # Ed25519 (PEM PKCS8) that signs
                                             # audit tree heads; default: audit-signing.key
                                             # beside tls.crt, when that file exists
    max_disclosure_days = 90                 # the longest a disclosure request stays open
    max_tags_per_request = 10000             # tags (or keys) per request, batch or update
    grace_period = 10.0                      # seconds in-flight RPCs get on SIGTERM/SIGINT
    reader_threads = 4                       # reader connections (SQLite or PostgreSQL)

Relative paths are relative to the configuration file's folder.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bureau_agent import pki
from hub.errors import ConfigError

__all__ = ["STORES", "HubConfig"]

STORES = ("sqlite", "postgres")

_TLS_FILES = ("tls_cert", "tls_key", "ca_cert")
_DEFAULT_AUDIT_KEY = "audit-signing.key"
_KNOWN = frozenset(
    {
        "listen",
        "listeners",
        "credentials",
        *_TLS_FILES,
        "store",
        "database",
        "postgres_dsn",
        "federation",
        "address_file",
        "max_tags_per_request",
        "grace_period",
        "reader_threads",
        "audit_key",
        "max_disclosure_days",
        "quota",  # tables read by hub.quota_config
        "metrics",
    }
)


@dataclass(frozen=True)
class HubConfig:
    """Everything `hub.server.serve` needs."""

    tls: pki.TlsFiles
    database: Path | None = None
    listen: str = "127.0.0.1:7443"
    listeners: int = 4
    federation: Path | None = None
    address_file: Path | None = None
    max_tags_per_request: int = 10_000
    grace_period: float = 10.0
    reader_threads: int = 4
    audit_key: Path | None = None
    max_disclosure_days: int = 90
    store: str = "sqlite"
    postgres_dsn: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.listeners <= 64:
            raise ConfigError(f"listeners must be from 1 to 64, got {self.listeners}")
        if self.store not in STORES:
            raise ConfigError(f"store must be one of {', '.join(STORES)}, got {self.store!r}")
        if self.store == "sqlite" and self.database is None:
            raise ConfigError('database (the SQLite file) is required with store = "sqlite"')
        if self.store == "postgres" and not self.postgres_dsn:
            raise ConfigError(
                'postgres_dsn is required with store = "postgres": a libpq connection string '
                'such as "host=db.example dbname=blindmatch user=hub" or a postgresql:// URI'
            )

    @property
    def sqlite_path(self) -> Path:
        """The SQLite file (store = "sqlite")."""
        if self.database is None:
            raise ConfigError('database (the SQLite file) is required with store = "sqlite"')
        return self.database

    @property
    def dsn(self) -> str:
        """The PostgreSQL connection string (store = "postgres")."""
        if not self.postgres_dsn:
            raise ConfigError('postgres_dsn is required with store = "postgres"')
        return self.postgres_dsn

    @property
    def store_description(self) -> str:
        """Where the hub keeps its data, safe to log (no password)."""
        if self.store == "postgres" and self.postgres_dsn:
            from hub.store_pg import describe_dsn  # psycopg only when it is used

            return describe_dsn(self.postgres_dsn)
        return f"sqlite {self.database}"

    @property
    def audit_key_path(self) -> Path | None:
        """The audit signing key: `audit_key`, else audit-signing.key beside
        the TLS certificate when it exists, else None (heads go unsigned)."""
        if self.audit_key is not None:
            return self.audit_key
        default = self.tls.cert.parent / _DEFAULT_AUDIT_KEY
        return default if default.exists() else None

    @property
    def directory_path(self) -> Path | None:
        """The signed federation directory, when `federation` is set."""
        return self.federation / "directory.json" if self.federation else None

    @property
    def directory_ca(self) -> Path | None:
        """The CA certificate that signs the directory, when `federation` is set."""
        return self.federation / "ca" / "ca.crt" if self.federation else None

    @classmethod
    def load(cls, path: Path) -> HubConfig:
        """Read a TOML file; errors name the file and the bad key."""
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
    ) -> HubConfig:
        """Build from parsed TOML; relative paths are resolved against `base`."""
        unknown = sorted(set(data) - _KNOWN)
        if unknown:
            raise ConfigError(
                f"{source}: unknown key(s) {', '.join(unknown)}; known keys are "
                f"{', '.join(sorted(_KNOWN))}"
            )

        def text(key: str, default: str | None = None) -> str:
            value = data.get(key, default)
            if value is None:
                raise ConfigError(f"{source}: {key} is required")
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{source}: {key} must be a non-empty string, got {value!r}")
            return value

        def path(key: str) -> Path:
            p = Path(text(key))
            return p if p.is_absolute() else base / p

        def optional_path(key: str) -> Path | None:
            return path(key) if key in data else None

        def integer(key: str, default: int, low: int, high: int) -> int:
            value = data.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ConfigError(
                    f"{source}: {key} must be an integer from {low} to {high}, got {value!r}"
                )
            return value

        def seconds(key: str, default: float) -> float:
            value = data.get(key, default)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ConfigError(
                    f"{source}: {key} must be a number of seconds >= 0, got {value!r}"
                )
            return float(value)

        files = [key for key in _TLS_FILES if key in data]
        if "credentials" in data and files:
            raise ConfigError(
                f"{source}: give either credentials (a folder) or {', '.join(_TLS_FILES)}, not both"
            )
        if "credentials" in data:
            tls = pki.TlsFiles.in_folder(path("credentials"))
        elif len(files) == len(_TLS_FILES):
            tls = pki.TlsFiles(cert=path("tls_cert"), key=path("tls_key"), ca=path("ca_cert"))
        else:
            raise ConfigError(
                f"{source}: credentials is required (a folder with tls.crt, tls.key, ca.crt), "
                f"or all of {', '.join(_TLS_FILES)}"
            )
        store = text("store", "sqlite")
        if store not in STORES:
            raise ConfigError(f"{source}: store must be one of {', '.join(STORES)}, got {store!r}")
        if store == "sqlite":
            if "postgres_dsn" in data:
                raise ConfigError(f'{source}: postgres_dsn needs store = "postgres"')
            database: Path | None = path("database")
            dsn = None
        else:
            if "database" in data:
                raise ConfigError(
                    f'{source}: database names a SQLite file, which store = "postgres" does '
                    "not use; remove it (the database is named in postgres_dsn)"
                )
            if "postgres_dsn" not in data:
                raise ConfigError(
                    f'{source}: postgres_dsn is required with store = "postgres": a libpq '
                    'connection string such as "host=db.example dbname=blindmatch user=hub" '
                    "or a postgresql:// URI"
                )
            database, dsn = None, text("postgres_dsn")
        listen = text("listen", "127.0.0.1:7443")
        host, colon, port = listen.rpartition(":")
        if not colon or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"{source}: listen must be host:port (port 0 = any), got {listen!r}")
        return cls(
            tls=tls,
            database=database,
            store=store,
            postgres_dsn=dsn,
            listen=listen,
            listeners=integer("listeners", 4, 1, 64),
            federation=optional_path("federation"),
            address_file=optional_path("address_file"),
            max_tags_per_request=integer("max_tags_per_request", 10_000, 1, 1_000_000),
            grace_period=seconds("grace_period", 10.0),
            reader_threads=integer("reader_threads", 4, 1, 64),
            audit_key=optional_path("audit_key"),
            max_disclosure_days=integer("max_disclosure_days", 90, 1, 3650),
        )
