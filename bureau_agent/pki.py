"""The federation's PKI: a CA, TLS certificates for the hub and each bureau,
and the signed federation directory.

Layout of a federation folder (made by `blindmatch pki init` / `pki issue`):

    ca/ca.key  ca/ca.crt               the federation CA (ECDSA P-256)
    directory.json                     the signed federation directory
    hub/tls.key tls.crt ca.crt audit-signing.key
    bureaus/<CODE>/tls.key tls.crt ca.crt signing.key hpke-mlkem768.key hpke-x25519.key

Identity: a certificate names its holder in a URI subject alternative name,
`blindmatch:bureau:<CODE>` or `blindmatch:hub`.  Servers read the caller's
identity from the verified TLS peer certificate, never from a message field.

The directory lists, for each bureau, its agent address, its Ed25519 signing
key and its hybrid HPKE public key (ML-KEM-768 + X25519), plus the hub's
audit key, key epochs (Feldman commitments and custodian indices) and
revoked certificate serials.  It is signed by the CA key (ECDSA P-256,
SHA-256) over its canonical JSON encoding; every reader verifies it.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import functools
import ipaddress
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mlkem, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from psi.errors import LocalError, VerifyError

__all__ = [
    "BUREAU_CODE",
    "BureauEntry",
    "Directory",
    "DirectoryCache",
    "EpochEntry",
    "Identity",
    "IdentityError",
    "PkiError",
    "TlsFiles",
    "certificate_serial",
    "identity_from_auth_context",
    "identity_from_pem",
    "init_federation",
    "issue_bureau",
    "issue_hub",
    "load_directory",
    "save_directory",
    "set_address",
    "update_directory",
    "write_private_file",
]

BUREAU_CODE = re.compile(r"^[A-Z]{3}$")
_URI_PREFIX = "blindmatch:"
DEFAULT_HOSTS = ("localhost", "127.0.0.1")


class PkiError(LocalError):
    """A PKI file is missing, malformed or inconsistent."""


class IdentityError(PkiError):
    """A peer presented no certificate this federation accepts."""


@dataclass(frozen=True)
class Identity:
    """Who a TLS peer is: role "bureau" (with its code) or "hub"."""

    role: str
    code: str

    def __str__(self) -> str:
        return self.code if self.role == "bureau" else self.role


# -- files -------------------------------------------------------------------


def write_private_file(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only (created 0600, never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # readers never see a half-written file


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"{what} not found at {path}") from None


def _pem_private(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_ec_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(_read(path, "private key"), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path} is not an ECDSA private key")
    return key


def load_ed25519_key(path: Path) -> ed25519.Ed25519PrivateKey:
    key = serialization.load_pem_private_key(_read(path, "signing key"), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise PkiError(f"{path} is not an Ed25519 private key")
    return key


def load_certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(_read(path, "certificate"))


# -- certificates ------------------------------------------------------------


def _name(common_name: str, unit: str, federation: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(hosts: Iterable[str], uri: str) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _issue_certificate(
    root: Path,
    subject: x509.Name,
    uri: str,
    hosts: Sequence[str],
    valid_days: int,
    *,
    not_before: dt.datetime | None = None,
) -> tuple[bytes, bytes]:
    ca_key = load_ec_key(root / "ca" / "ca.key")
    ca_cert = load_certificate(root / "ca" / "ca.crt")
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(_san(hosts, uri), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_private(key)


def init_federation(root: Path, name: str, *, valid_days: int = 3650) -> None:
    """Create the federation CA and an empty signed directory under `root`."""
    if (root / "ca" / "ca.key").exists():
        raise PkiError(f"{root} already holds a federation CA; refusing to overwrite it")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(f"{name} federation CA", "ca", name)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private_file(root / "ca" / "ca.key", _pem_private(key))
    _write_public(root / "ca" / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))
    save_directory(root, Directory(federation=name, version=0))


def _federation_name(root: Path) -> str:
    cert = load_certificate(root / "ca" / "ca.crt")
    attrs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(attrs[0].value) if attrs else "blindmatch"


def issue_hub(
    root: Path,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    address: str = "",
    valid_days: int = 365,
) -> Path:
    """Certificate, key and audit signing key for the hub; records its audit key
    (and address, when given) in the directory.  Returns the hub's folder."""
    folder = root / "hub"
    cert, key = _issue_certificate(
        root, _name("hub", "hub", _federation_name(root)), f"{_URI_PREFIX}hub", hosts, valid_days
    )
    write_private_file(folder / "tls.key", key)
    _write_public(folder / "tls.crt", cert)
    _write_public(folder / "ca.crt", _read(root / "ca" / "ca.crt", "CA certificate"))
    audit_path = folder / "audit-signing.key"
    if not audit_path.exists():
        write_private_file(audit_path, _pem_private(ed25519.Ed25519PrivateKey.generate()))
    audit_public = load_ed25519_key(audit_path).public_key().public_bytes_raw()

    def change(d: Directory) -> Directory:
        return d.replace(hub_address=address or d.hub_address, hub_audit_key=audit_public)

    update_directory(root, change)
    return folder


def issue_bureau(
    root: Path,
    code: str,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    address: str = "",
    valid_days: int = 365,
    not_before: dt.datetime | None = None,
) -> Path:
    """TLS certificate and key, Ed25519 signing key and hybrid HPKE keys for a
    bureau; adds (or refreshes) its directory entry.  Returns its folder.

    In production a bureau keeps its private keys at home; here the CA host
    makes them and the folder is handed over once, over a secure channel.
    """
    if not BUREAU_CODE.match(code):
        raise PkiError(f"bureau code {code!r} must be three capital letters (ISO 3166 alpha-3)")
    folder = root / "bureaus" / code
    cert, key = _issue_certificate(
        root,
        _name(code, "bureau", _federation_name(root)),
        f"{_URI_PREFIX}bureau:{code}",
        hosts,
        valid_days,
        not_before=not_before,
    )
    write_private_file(folder / "tls.key", key)
    _write_public(folder / "tls.crt", cert)
    _write_public(folder / "ca.crt", _read(root / "ca" / "ca.crt", "CA certificate"))
    # Long-term keys survive a certificate renewal: only make them once.
    if not (folder / "signing.key").exists():
        write_private_file(
            folder / "signing.key", _pem_private(ed25519.Ed25519PrivateKey.generate())
        )
    if not (folder / "hpke-mlkem768.key").exists():
        write_private_file(
            folder / "hpke-mlkem768.key", mlkem.MLKEM768PrivateKey.generate().private_bytes_raw()
        )
        write_private_file(
            folder / "hpke-x25519.key", x25519.X25519PrivateKey.generate().private_bytes_raw()
        )
    signing = load_ed25519_key(folder / "signing.key").public_key().public_bytes_raw()
    kem = mlkem.MLKEM768PrivateKey.from_seed_bytes(_read(folder / "hpke-mlkem768.key", "HPKE key"))
    dh = x25519.X25519PrivateKey.from_private_bytes(_read(folder / "hpke-x25519.key", "HPKE key"))

    def change(d: Directory) -> Directory:
        old = d.bureaus.get(code)
        entry = BureauEntry(
            code=code,
            address=address or (old.address if old else ""),
            signing_key=signing,
            hpke_mlkem768=kem.public_key().public_bytes_raw(),
            hpke_x25519=dh.public_key().public_bytes_raw(),
        )
        return d.replace(bureaus={**d.bureaus, code: entry})

    update_directory(root, change)
    return folder


@dataclass(frozen=True)
class TlsFiles:
    """The three PEM files of a TLS endpoint."""

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def in_folder(cls, folder: Path) -> TlsFiles:
        return cls(folder / "tls.crt", folder / "tls.key", folder / "ca.crt")

    def server_credentials(self) -> grpc.ServerCredentials:
        """Server side of mutual TLS: a client certificate from the CA is required."""
        return grpc.ssl_server_credentials(
            [(_read(self.key, "TLS key"), _read(self.cert, "TLS certificate"))],
            root_certificates=_read(self.ca, "CA certificate"),
            require_client_auth=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Client side of mutual TLS."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "CA certificate"),
            private_key=_read(self.key, "TLS key"),
            certificate_chain=_read(self.cert, "TLS certificate"),
        )


# -- identity ----------------------------------------------------------------


@functools.lru_cache(maxsize=4096)  # every call of every bureau presents its certificate
def identity_from_pem(cert_pem: bytes) -> Identity:
    """The identity a (chain-verified) certificate names in its URI SAN."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound) as exc:
        raise IdentityError(f"peer certificate is unreadable or has no identity: {exc}") from None
    uris = [
        u
        for u in sans.get_values_for_type(x509.UniformResourceIdentifier)
        if u.startswith(_URI_PREFIX)
    ]
    if len(uris) != 1:
        raise IdentityError("peer certificate must name exactly one blindmatch identity")
    parts = uris[0][len(_URI_PREFIX) :].split(":")
    if parts == ["hub"]:
        return Identity("hub", "hub")
    if len(parts) == 2 and parts[0] == "bureau" and BUREAU_CODE.match(parts[1]):
        return Identity("bureau", parts[1])
    raise IdentityError(f"peer certificate names an unknown identity {uris[0]!r}")


def identity_from_auth_context(auth_context: Mapping[str, Iterable[bytes]]) -> Identity:
    """The identity of a gRPC caller, from `context.auth_context()` of a TLS server."""
    pems = list(auth_context.get("x509_pem_cert", []))
    if len(pems) != 1:
        raise IdentityError("the caller presented no client certificate")
    return identity_from_pem(pems[0])


@functools.lru_cache(maxsize=4096)
def certificate_serial(cert_pem: bytes) -> int:
    """The serial number of a PEM certificate (what the revocation list names)."""
    return x509.load_pem_x509_certificate(cert_pem).serial_number


# -- the directory -----------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise PkiError(f"directory field {what} is not base64") from None


@dataclass(frozen=True)
class BureauEntry:
    """A bureau's public material in the directory."""

    code: str
    address: str
    signing_key: bytes  # Ed25519, raw 32 bytes
    hpke_mlkem768: bytes  # ML-KEM-768 encapsulation key, raw
    hpke_x25519: bytes  # X25519 public key, raw

    def signing_public_key(self) -> ed25519.Ed25519PublicKey:
        return ed25519.Ed25519PublicKey.from_public_bytes(self.signing_key)


@dataclass(frozen=True)
class EpochEntry:
    """A key epoch: threshold, Feldman commitments and which bureau holds which share."""

    epoch: int
    threshold: int
    commitments: tuple[bytes, ...]
    custodians: Mapping[str, int]  # bureau code -> share index


@dataclass(frozen=True)
class Directory:
    """The signed federation directory (see the module docstring)."""

    federation: str
    version: int
    hub_address: str = ""
    hub_audit_key: bytes = b""
    bureaus: Mapping[str, BureauEntry] = field(default_factory=dict)
    epochs: Mapping[int, EpochEntry] = field(default_factory=dict)
    revoked_serials: frozenset[int] = frozenset()

    def replace(self, **changes: Any) -> Directory:
        values = {f: getattr(self, f) for f in self.__dataclass_fields__}
        values.update(changes)
        return Directory(**values)

    @property
    def current_epoch(self) -> EpochEntry | None:
        return self.epochs[max(self.epochs)] if self.epochs else None

    def bureau(self, code: str) -> BureauEntry:
        try:
            return self.bureaus[code]
        except KeyError:
            raise PkiError(f"bureau {code} is not in the federation directory") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "federation": self.federation,
            "version": self.version,
            "hub": {"address": self.hub_address, "audit_key": _b64(self.hub_audit_key)},
            "bureaus": [
                {
                    "code": b.code,
                    "address": b.address,
                    "signing_key": _b64(b.signing_key),
                    "hpke_mlkem768": _b64(b.hpke_mlkem768),
                    "hpke_x25519": _b64(b.hpke_x25519),
                }
                for b in sorted(self.bureaus.values(), key=lambda b: b.code)
            ],
            "epochs": [
                {
                    "epoch": e.epoch,
                    "threshold": e.threshold,
                    "commitments": [_b64(c) for c in e.commitments],
                    "custodians": dict(sorted(e.custodians.items())),
                }
                for e in sorted(self.epochs.values(), key=lambda e: e.epoch)
            ],
            "revoked_serials": [str(s) for s in sorted(self.revoked_serials)],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Directory:
        try:
            hub = data["hub"]
            bureaus = {
                b["code"]: BureauEntry(
                    code=b["code"],
                    address=b["address"],
                    signing_key=_unb64(b["signing_key"], f"bureaus.{b['code']}.signing_key"),
                    hpke_mlkem768=_unb64(b["hpke_mlkem768"], f"bureaus.{b['code']}.hpke_mlkem768"),
                    hpke_x25519=_unb64(b["hpke_x25519"], f"bureaus.{b['code']}.hpke_x25519"),
                )
                for b in data["bureaus"]
            }
            epochs = {
                int(e["epoch"]): EpochEntry(
                    epoch=int(e["epoch"]),
                    threshold=int(e["threshold"]),
                    commitments=tuple(_unb64(c, "epochs.commitments") for c in e["commitments"]),
                    custodians={str(k): int(v) for k, v in e["custodians"].items()},
                )
                for e in data["epochs"]
            }
            return cls(
                federation=str(data["federation"]),
                version=int(data["version"]),
                hub_address=str(hub["address"]),
                hub_audit_key=_unb64(hub["audit_key"], "hub.audit_key"),
                bureaus=bureaus,
                epochs=epochs,
                revoked_serials=frozenset(int(s) for s in data["revoked_serials"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PkiError(f"federation directory is malformed: {exc!r}") from None


def _canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def save_directory(root: Path, directory: Directory) -> None:
    """Sign `directory` with the CA key and write root/directory.json atomically."""
    ca_key = load_ec_key(root / "ca" / "ca.key")
    body = directory.to_json()
    signature = ca_key.sign(_canonical(body), ec.ECDSA(hashes.SHA256()))
    document = {"directory": body, "signature": _b64(signature)}
    _write_public(root / "directory.json", json.dumps(document, indent=2, sort_keys=True).encode())


def update_directory(root: Path, change: Callable[[Directory], Directory]) -> Directory:
    """Load, apply `change`, bump the version, re-sign."""
    current = load_directory(root / "directory.json", root / "ca" / "ca.crt")
    updated = change(current).replace(version=current.version + 1)
    save_directory(root, updated)
    return updated


def set_address(root: Path, who: str, address: str) -> Directory:
    """Publish `address` (host:port) for bureau `who`, or for the hub when
    `who` is "hub", and re-sign the directory."""

    def change(d: Directory) -> Directory:
        if who == "hub":
            return d.replace(hub_address=address)
        entry = d.bureau(who)
        return d.replace(bureaus={**d.bureaus, who: dataclasses.replace(entry, address=address)})

    return update_directory(root, change)


def load_directory(path: Path, ca_cert: Path) -> Directory:
    """Read and verify the directory; raises VerifyError on a bad signature."""
    try:
        document = json.loads(_read(path, "federation directory"))
        body, signature = document["directory"], _unb64(document["signature"], "signature")
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise PkiError(f"{path} is not a federation directory: {exc!r}") from None
    public_key = load_certificate(ca_cert).public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise PkiError(f"{ca_cert} does not hold an ECDSA key")
    try:
        public_key.verify(signature, _canonical(body), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise VerifyError(f"{path}: directory signature does not verify against the CA") from None
    return Directory.from_json(body)


class DirectoryCache:
    """The verified directory, re-read whenever its file changes on disk.

    Directory updates (a new bureau, a changed address, a new epoch, a
    revocation) reach a running daemon without a restart; a file that fails
    verification is refused and the last good directory stays in force.
    """

    def __init__(self, path: Path, ca_cert: Path) -> None:
        self._path = path
        self._ca_cert = ca_cert
        # The stamp before the read: a change in between is read again later
        # (taken after, it would mark the older content as current).
        self._stamp: tuple[int, int, int, int] | None = self._file_stamp()
        self._directory = load_directory(path, ca_cert)

    def _file_stamp(self) -> tuple[int, int, int, int]:
        # Every save replaces the file with a new one (`_write_public`), so its
        # inode changes even when two saves of equal size fall within one tick
        # of the file system's clock (two addresses published in a row).
        st = self._path.stat()
        return st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size

    def get(self) -> Directory:
        """The current directory (re-verified if the file changed)."""
        try:
            stamp = self._file_stamp()
        except FileNotFoundError:
            return self._directory
        if stamp != self._stamp:
            try:
                self._directory = load_directory(self._path, self._ca_cert)
            except (PkiError, VerifyError) as exc:
                logging.getLogger("blindmatch.pki").warning(
                    "directory update refused, keeping version %d: %s", self._directory.version, exc
                )
                return self._directory
            self._stamp = stamp
        return self._directory
