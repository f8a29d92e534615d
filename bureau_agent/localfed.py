"""A whole federation on loopback, as real processes: for the demo, the
end-to-end tests and the benchmarks.

`LocalFederation` makes the CA, the hub's and every bureau's certificates,
runs the key ceremony, writes each daemon's configuration, starts the hub and
one agent process per bureau (custodians listen on port 0 and publish their
address through a signed directory update), and stops them all.  Every
command it runs is the real `blindmatch` CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bureau_agent import ceremony, pki

__all__ = ["LocalFederation"]

CLI = [sys.executable, "-m", "bureau_agent.cli"]


@dataclass
class LocalFederation:
    """A federation of `bureaus` under `root`, with a `threshold`-of-len(custodians) key."""

    root: Path
    bureaus: Sequence[str]
    custodians: Sequence[str]
    threshold: int
    name: str = "demo"
    epoch: int = 1
    hub_store: str = "sqlite"
    hub_extra: dict[str, object] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    startup_timeout: float = 60.0
    agent_workers: int = 2  # worker processes per agent

    # -- paths --------------------------------------------------------------

    @property
    def federation(self) -> Path:
        return self.root / "federation"

    def config_path(self, code: str) -> Path:
        return self.root / "agents" / f"{code}.toml"

    def state_dir(self, code: str) -> Path:
        return self.root / "state" / code

    @property
    def hub_config_path(self) -> Path:
        return self.root / "hub" / "hub.toml"

    @property
    def hub_database(self) -> Path:
        return self.root / "hub" / "hub.sqlite"

    def log_path(self, who: str) -> Path:
        return self.root / "logs" / f"{who}.log"

    # -- set-up -------------------------------------------------------------

    def create(self) -> None:
        """CA, certificates, key ceremony and configuration files."""
        pki.init_federation(self.federation, self.name)
        pki.issue_hub(self.federation)
        for code in self.bureaus:
            pki.issue_bureau(self.federation, code)
        ceremony.run_ceremony(
            self.federation,
            epoch=self.epoch,
            threshold_t=self.threshold,
            custodians=list(self.custodians),
        )
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        self._write_hub_config()
        for code in self.bureaus:
            self._write_agent_config(code)

    def _write_hub_config(self) -> None:
        hub_dir = self.federation / "hub"
        lines = [
            'listen = "127.0.0.1:0"',
            f'database = "{self.hub_database}"',
            f'address_file = "{self.root / "hub" / "address"}"',
            f'tls_cert = "{hub_dir / "tls.crt"}"',
            f'tls_key = "{hub_dir / "tls.key"}"',
            f'ca_cert = "{hub_dir / "ca.crt"}"',
        ]
        for key, value in self.hub_extra.items():
            lines.append(
                f"{key} = {value!r}" if not isinstance(value, str) else f'{key} = "{value}"'
            )
        self.hub_config_path.parent.mkdir(parents=True, exist_ok=True)
        self.hub_config_path.write_text("\n".join(lines) + "\n")

    def _write_agent_config(self, code: str, epochs: Sequence[int] | None = None) -> None:
        lines = [
            f'bureau = "{code}"',
            f'federation = "{self.federation}"',
            f'credentials = "{self.federation / "bureaus" / code}"',
            f'state_dir = "{self.state_dir(code)}"',
            'listen = "127.0.0.1:0"',
            f"workers = {self.agent_workers}",
            "rpc_timeout = 20.0",
        ]
        if code in self.custodians:
            shares = [ceremony.share_path(self.federation, e, code) for e in epochs or [self.epoch]]
            lines += ["", "[custodian]", f"shares = {json.dumps([str(p) for p in shares])}"]
        path = self.config_path(code)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")

    def hold_epochs(self, code: str, epochs: Sequence[int]) -> None:
        """Rewrite a custodian's configuration to hold its shares of `epochs`
        (made by `blindmatch keys ceremony`); takes effect at `restart`."""
        self._write_agent_config(code, epochs)

    # -- processes ----------------------------------------------------------

    def _spawn(self, who: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.log_path(who), "ab")  # noqa: SIM115 - owned by the process record
        process = subprocess.Popen(  # noqa: S603 - our own CLI, fixed arguments
            [*CLI, *args], stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        log.close()
        self.processes[who] = process
        return process

    def _wait_for(self, path: Path, who: str) -> str:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if path.exists() and path.read_text().strip():
                return path.read_text().strip()
            process = self.processes.get(who)
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{who} exited with {process.returncode}: {self.tail(who)}")
            time.sleep(0.05)
        raise TimeoutError(f"{who} did not start within {self.startup_timeout} s: {self.tail(who)}")

    def tail(self, who: str, lines: int = 15) -> str:
        path = self.log_path(who)
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            if path.exists()
            else ""
        )

    def start_hub(self) -> str:
        """Start the hub and publish its address in the directory."""
        address_file = self.root / "hub" / "address"
        address_file.unlink(missing_ok=True)
        self._spawn("hub", ["hub", "serve", "--config", str(self.hub_config_path)])
        address = self._wait_for(address_file, "hub")
        pki.set_address(self.federation, "hub", address)
        return address

    def start_agent(self, code: str) -> None:
        """Start a bureau's agent; a custodian's address goes into the directory."""
        state = self.state_dir(code)
        (state / "address").unlink(missing_ok=True)
        (state / "agent.sock").unlink(missing_ok=True)
        self._spawn(code, ["agent", "serve", "--config", str(self.config_path(code))])

    def wait_agent(self, code: str) -> None:
        state = self.state_dir(code)
        if code in self.custodians:
            address = self._wait_for(state / "address", code)
            self.set_address(code, address)
        self._wait_for_socket(code)

    def set_address(self, code: str, address: str) -> None:
        pki.set_address(self.federation, code, address)

    def _wait_for_socket(self, code: str) -> None:
        socket = self.state_dir(code) / "agent.sock"
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            process = self.processes.get(code)
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{code} exited with {process.returncode}: {self.tail(code)}")
            if socket.exists():
                with grpc.insecure_channel(f"unix:{socket}") as channel:
                    try:
                        reply = health_pb2_grpc.HealthStub(channel).Check(
                            health_pb2.HealthCheckRequest(), timeout=1.0
                        )
                        if reply.status == health_pb2.HealthCheckResponse.SERVING:
                            return
                    except grpc.RpcError:
                        pass
            time.sleep(0.05)
        raise TimeoutError(f"agent {code} not serving after {self.startup_timeout} s")

    def start(self) -> None:
        """Start the hub and every agent, custodians first; wait until all serve."""
        self.start_hub()
        for code in self.bureaus:
            self.start_agent(code)
        for code in self.bureaus:
            self.wait_agent(code)

    def stop(self, who: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Signal one process and wait for it; returns its exit code."""
        process = self.processes.pop(who, None)
        if process is None or process.poll() is not None:
            return process.returncode if process else None
        process.send_signal(sig)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def restart(self, code: str) -> None:
        """Stop an agent (SIGTERM) and start it again with its current configuration."""
        self.stop(code)
        self.start_agent(code)
        self.wait_agent(code)

    def stop_all(self) -> dict[str, int | None]:
        """SIGTERM every agent, then the hub; return the exit codes."""
        codes: dict[str, int | None] = {}
        agents = [w for w in self.processes if w != "hub"]
        for who in agents:
            process = self.processes[who]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for who in agents:
            codes[who] = self.stop(who)
        if "hub" in self.processes:
            codes["hub"] = self.stop("hub")
        return codes

    # -- the CLI ------------------------------------------------------------

    def cli(
        self, code: str | None, *args: str, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run `blindmatch ARGS` as bureau `code` (its config in BLINDMATCH_CONFIG)."""
        env = dict(os.environ)
        if code is not None:
            env["BLINDMATCH_CONFIG"] = str(self.config_path(code))
        result = subprocess.run(  # noqa: S603 - our own CLI
            [*CLI, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"blindmatch {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result

    @contextlib.contextmanager
    def running(self) -> Iterator[LocalFederation]:
        """Start everything; stop everything on the way out, whatever happens."""
        try:
            self.start()
            yield self
        finally:
            self.stop_all()
