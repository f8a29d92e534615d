"""A throwaway PostgreSQL server for tests, from the Debian packages.

`PostgresServer.start()` runs `initdb` into a fresh temporary folder, starts
`postgres` listening only on a Unix socket in that folder (no TCP port, so
parallel runs cannot collide), and `stop()` shuts it down and removes the
folder.  PostgreSQL refuses to run as root: when the tests run as root (as
CI does), the server runs as the `postgres` user the Debian package creates
(or, without it, a system user made for the purpose), and the folder is
given to that user.  For tests the server trades durability for speed
(fsync off): they kill hub processes, never the server; `durable=True`
keeps PostgreSQL's defaults (for benchmarks).

`new_database()` makes an empty database per test (`CREATE DATABASE ...
TEMPLATE template0`) and `drop_database()` removes it.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

__all__ = ["PostgresServer", "PostgresUnavailable", "find_bin_dir"]

_FALLBACK_USER = "blindmatch-pg"
_PORT = 5432  # only names the socket file; nothing listens on TCP


class PostgresUnavailable(Exception):
    """PostgreSQL's server programs are not installed here."""


def find_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin that has initdb, pg_ctl and postgres."""
    found = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        bin_dir = Path(initdb).parent
        version = bin_dir.parent.name
        if all((bin_dir / p).exists() for p in ("pg_ctl", "postgres")) and version.isdigit():
            found.append((int(version), bin_dir))
    if not found:
        raise PostgresUnavailable(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); install it "
            "with `apt-get install -y postgresql` (`make system-deps` does)"
        )
    return max(found)[1]


def _server_user() -> pwd.struct_passwd | None:
    """The user to run the server as: None for the current (non-root) user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", _FALLBACK_USER):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _FALLBACK_USER],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(_FALLBACK_USER)


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder, reachable by Unix socket."""

    def __init__(self, *, durable: bool = False) -> None:
        self.durable = durable
        self.bin_dir = find_bin_dir()
        self.user = _server_user()
        # The server's user must reach the folder: as root, make it in /tmp
        # (not a TMPDIR that may sit in root's own, closed home).
        parent = "/tmp" if self.user is not None and os.path.isdir("/tmp") else None  # noqa: S108
        self.root = Path(tempfile.mkdtemp(prefix="blindmatch-pg-", dir=parent))
        self.data = self.root / "data"
        self.socket_dir = self.root
        self.log = self.root / "postgres.log"
        self._names = itertools.count(1)
        self._running = False

    def _run(self, *args: str) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.user is not None:
            runuser = shutil.which("runuser") or "/usr/sbin/runuser"
            command = [runuser, "-u", self.user.pw_name, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n"
                f"{log}"
            )

    def start(self) -> None:
        """initdb, then start the server and wait until it accepts connections."""
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        settings = [
            "-c listen_addresses=''",
            f"-c unix_socket_directories='{self.socket_dir}'",
            f"-c port={_PORT}",
            "-c max_connections=200",
            "-c shared_buffers=128MB",
        ]
        if not self.durable:
            settings += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        options = " ".join(settings)
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log),
                  "-o", options)  # fmt: skip
        self._running = True

    def stop(self) -> None:
        """Stop the server (immediately) and remove its folder."""
        try:
            if self._running:
                self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")
                self._running = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq connection string for `dbname` as the superuser."""
        return f"host={self.socket_dir} port={_PORT} user=postgres dbname={dbname}"

    def new_database(self) -> str:
        """Create an empty database; its DSN."""
        name = f"hub_test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.dsn(name)

    def drop_database(self, dsn: str) -> None:
        """Drop a database made by `new_database` (ending its sessions first)."""
        name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def database_files(self, dsn: str) -> list[Path]:
        """The files that hold `dsn`'s database on disk, after a checkpoint."""
        name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute("CHECKPOINT")
            row = conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (name,)).fetchone()
        assert row is not None
        return [p for p in (self.data / "base" / str(row[0])).iterdir() if p.is_file()]
