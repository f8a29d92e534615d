"""`blindmatch doctor`: check a bureau's installation (configuration,
directory, certificate, keys, share, agent, hub, clock skew, custodians) and
say what is wrong in words an operator can act on.

Each check is independent and reports ok / warning / failure with a detail;
nothing is changed.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from blindmatch.v1 import custodian_pb2, custodian_pb2_grpc, hub_pb2, hub_pb2_grpc
from bureau_agent import ceremony, pki
from bureau_agent.config import AgentConfig
from psi import disclosure
from psi.errors import BlindmatchError

__all__ = ["Check", "run_doctor"]

RENEW_WARNING_DAYS = 30
WARN_SKEW_SECONDS = 2.0
MAX_SKEW_SECONDS = 60.0


@dataclass(frozen=True)
class Check:
    """One finding."""

    name: str
    status: str  # "ok", "warning" or "failed"
    detail: str


def _check(name: str, fn: Callable[[], str]) -> Check:
    try:
        detail = fn()
    except _Warning as exc:
        return Check(name, "warning", str(exc))
    except (BlindmatchError, OSError, ValueError, grpc.RpcError) as exc:
        if isinstance(exc, grpc.RpcError):
            code = exc.code()
            return Check(name, "failed", f"{code.name if code else 'RPC'}: {exc.details()}")
        return Check(name, "failed", f"{type(exc).__name__}: {exc}")
    return Check(name, "ok", detail)


class _Warning(Exception):
    pass


def run_doctor(config_path: Path) -> Iterator[Check]:
    """Every check, in order; later checks are skipped when what they need failed."""
    try:
        config = AgentConfig.load(config_path)
    except BlindmatchError as exc:
        yield Check("configuration", "failed", str(exc))
        return
    yield Check("configuration", "ok", f"bureau {config.bureau}, state in {config.state_dir}")

    directory: list[pki.Directory] = []

    def load_directory() -> str:
        d = pki.load_directory(config.directory_path, config.ca_cert)
        directory.append(d)
        if config.bureau not in d.bureaus:
            raise BlindmatchError(
                f"{config.bureau} is not in the directory; ask the CA to issue it"
            )
        return f"version {d.version}, signature verified, {len(d.bureaus)} bureaus"

    yield _check("federation directory", load_directory)
    if not directory:
        return
    d = directory[0]

    def certificate() -> str:
        cert = x509.load_pem_x509_certificate(config.tls.cert.read_bytes())
        ca = x509.load_pem_x509_certificate(config.tls.ca.read_bytes())
        cert.verify_directly_issued_by(ca)
        identity = pki.identity_from_pem(config.tls.cert.read_bytes())
        if identity != pki.Identity("bureau", config.bureau):
            raise BlindmatchError(f"the certificate names {identity}, not {config.bureau}")
        if cert.serial_number in d.revoked_serials:
            raise BlindmatchError(f"certificate {cert.serial_number:x} is revoked in the directory")
        left = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
        if left.total_seconds() <= 0:
            raise BlindmatchError(f"the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}")
        if left.days < RENEW_WARNING_DAYS:
            raise _Warning(f"the certificate expires in {left.days} days: renew it (pki issue)")
        return f"{identity}, valid until {cert.not_valid_after_utc:%Y-%m-%d}"

    yield _check("TLS certificate", certificate)

    def keys() -> str:
        entry = d.bureau(config.bureau)
        signing = pki.load_ed25519_key(config.signing_key_path).public_key().public_bytes_raw()
        if signing != entry.signing_key:
            raise BlindmatchError("signing.key does not match the directory's signing key")
        mlkem_path, x25519_path = config.hpke_key_paths
        hpke = disclosure.hpke_private_key(mlkem_path.read_bytes(), x25519_path.read_bytes())
        if hpke.public_key().raw() != (entry.hpke_mlkem768, entry.hpke_x25519):
            raise BlindmatchError(
                "the HPKE keys do not match the directory's; disclosures would fail"
            )
        return "signing and hybrid HPKE keys match the directory"

    yield _check("bureau keys", keys)

    if config.custodian is not None:
        share_paths = config.custodian.shares

        def share() -> str:
            loaded = ceremony.load_shares(share_paths, d, config.bureau)
            held = ", ".join(f"share {s.share.index} of epoch {e}" for e, s in loaded.items())
            return f"{held}: {'each matches its' if len(loaded) > 1 else 'matches the'} commitments"

        yield _check("custodian share", share)

    def agent() -> str:
        with grpc.insecure_channel(f"unix:{config.socket_path}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=3
            )
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise BlindmatchError("the agent is not serving (shutting down?)")
        return f"serving on {config.socket_path}"

    yield _check("agent daemon", agent)

    credentials = config.tls.channel_credentials()

    skew: list[float] = []

    def hub() -> str:
        address = config.hub or d.hub_address
        if not address:
            raise BlindmatchError("no hub address in the configuration or the directory")
        with grpc.secure_channel(address, credentials) as channel:
            sent = time.time()
            status = hub_pb2_grpc.HubStub(channel).GetStatus(hub_pb2.GetStatusRequest(), timeout=5)
            received = time.time()
        if status.server_time_unix_ms:
            # The hub read its clock somewhere inside the round trip.
            skew.append(status.server_time_unix_ms / 1000 - (sent + received) / 2)
        if status.caller != config.bureau:
            raise BlindmatchError(f"the hub sees this bureau as {status.caller!r}")
        counts = f"{status.datasets} datasets, {status.tags:,} tags"
        return f"{address}: {counts}, sees us as {status.caller}"

    yield _check("hub", hub)

    def clock() -> str:
        if not skew:
            raise _Warning("the hub did not report its time; skew not measured")
        seconds = skew[0]
        if abs(seconds) > MAX_SKEW_SECONDS:
            direction = "behind" if seconds > 0 else "ahead of"
            raise BlindmatchError(
                f"this host's clock is {abs(seconds):.1f} s {direction} the hub's: fix NTP "
                "(certificate validity and disclosure expiry depend on it)"
            )
        if abs(seconds) > WARN_SKEW_SECONDS:
            raise _Warning(f"clock differs from the hub's by {seconds:+.1f} s; check NTP")
        return f"within {abs(seconds):.2f} s of the hub's"

    yield _check("clock skew", clock)

    entry = d.current_epoch
    if entry is None:
        yield Check("custodians", "failed", "no key epoch in the directory: run the key ceremony")
        return
    reachable = 0
    for code, index in sorted(entry.custodians.items(), key=lambda kv: kv[1]):

        def ask(code: str = code, index: int = index) -> str:
            address = d.bureau(code).address
            if not address:
                raise BlindmatchError(f"{code} has no address in the directory")
            with grpc.secure_channel(address, credentials) as channel:
                info = custodian_pb2_grpc.CustodianStub(channel).GetKeyInfo(
                    custodian_pb2.GetKeyInfoRequest(epoch=entry.epoch), timeout=5
                )
            if info.share_index != index or info.group_public_key != entry.commitments[0]:
                raise BlindmatchError(f"{code} serves share {info.share_index} of another key")
            return f"{address}: share {index} of epoch {entry.epoch}"

        result = _check(f"custodian {code}", ask)
        reachable += result.status == "ok"
        yield result
    status = "ok" if reachable >= entry.threshold else "failed"
    yield Check(
        "threshold",
        status,
        f"{reachable} of {len(entry.custodians)} custodians answer; {entry.threshold} needed",
    )
