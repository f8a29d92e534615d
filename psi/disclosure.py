"""Consent-gated disclosure: the signed request, the owner's signed decision,
and the record sealed end to end from the owner to the requester.

Flow (DESIGN.md): the requester signs a `DisclosureRequest` naming a match
id (it need not know the owner: the hub routes by match id) → the owner
verifies it, then approves (sealing chosen fields with `seal_record`) or
denies, and signs a `DisclosureDecision` bound to the exact request and, on
approval, to the exact ciphertext → the requester verifies the decision and
opens the record with `open_record`.  The hub stores and routes bytes; it
never holds a key that opens a record.

Encodings (wire format v1).  lp(x) = u32 big-endian length || x.  Text is
UTF-8; integers are u64 big-endian (8 bytes); ids are 16 bytes; bureau
codes are three ASCII capitals; digests are SHA-256 (32 bytes).  Every
encoding is a fixed sequence of lp() fields, the first one a label naming
type and version, so no two distinct values encode alike and no encoding of
one type parses as another.  Decoders accept exactly what the encoder
produces (no trailing bytes, canonical field order) and raise
`DeserializeError` otherwise.

    request  = lp("blindmatch/v1/disclosure-request") || lp(request_id)
               || lp(match_id) || lp(requester) || lp(purpose)
               || lp(legal_basis) || lp(u64 created_ms) || lp(u64 expires_ms)
    decision = lp("blindmatch/v1/disclosure-decision") || lp(request_id)
               || lp(request_digest) || lp(requester) || lp(owner)
               || lp("approved" | "denied") || lp(reason)
               || lp(u32 n || lp(field name)_1 .. lp(field name)_n)
               || lp(ciphertext_digest | "") || lp(u64 decided_ms)

request_digest = SHA-256(request encoding); ciphertext_digest =
SHA-256(sealed record).  Field names are sorted (by code point, which is
UTF-8 byte order) and unique.  An approval lists at least one field and a
ciphertext digest; a denial lists none, has an empty digest and a reason.
Signatures are Ed25519 (RFC 8032) over these encodings: the requester's
key signs requests, the owner's key signs decisions.

Sealed record (single-shot HPKE, RFC 9180 §6.1, Base mode):

    sealed    = 0x01 (format version) || suite id (1 byte) || enc || ct
    plaintext = u32 n || (lp(name) || lp(value))_1 .. _n   (names sorted, unique)
    info      = lp("blindmatch/v1/disclosure") || lp(suite id) || lp(request_id)
                || lp(requester) || lp(owner)

Suite 1 (the default): KEM ML-KEM-768 + X25519 hybrid (MLKEM768_X25519),
HKDF-SHA256, AES-256-GCM.  Suite 2 (a configured fallback): DHKEM(X25519,
HKDF-SHA256), HKDF-SHA256, AES-256-GCM.  The suite id is in the header and
in `info`, and the opener names the suite it requires, so rewriting the
header to the weaker suite (a downgrade) is refused.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from psi.errors import DeserializeError, InvalidInputError, VerifyError

__all__ = [
    "DECISION_LABEL",
    "HPKE_INFO_LABEL",
    "ID_LENGTH",
    "MAX_RECORD_BYTES",
    "MAX_TEXT_LENGTH",
    "REQUEST_LABEL",
    "DecryptError",
    "DisclosureDecision",
    "DisclosureRequest",
    "HpkePrivateKey",
    "HpkePublicKey",
    "Outcome",
    "Suite",
    "ciphertext_digest",
    "generate_hpke_key",
    "hpke_info",
    "hpke_private_key",
    "hpke_public_key",
    "new_request_id",
    "open_record",
    "seal_record",
    "sign_decision",
    "sign_request",
    "verify_decision",
    "verify_request",
]

REQUEST_LABEL = b"blindmatch/v1/disclosure-request"
DECISION_LABEL = b"blindmatch/v1/disclosure-decision"
HPKE_INFO_LABEL = b"blindmatch/v1/disclosure"
SEALED_VERSION = 1
ID_LENGTH = 16
DIGEST_LENGTH = 32
MAX_TEXT_LENGTH = 1000  # purpose, legal basis, reason (characters)
MAX_FIELD_NAME_LENGTH = 100
MAX_RECORD_BYTES = 1 << 20  # plaintext of one sealed record
_I64_MAX = (1 << 63) - 1  # timestamps also travel as protobuf int64
_BUREAU = re.compile(r"[A-Z]{3}")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class DecryptError(VerifyError):
    """A sealed record does not open: tampered, sealed to another key, for
    another request or pair of bureaus, or with another suite (a downgrade)."""


class Outcome(enum.Enum):
    """The owner's answer to a disclosure request."""

    APPROVED = "approved"
    DENIED = "denied"


class Suite(enum.IntEnum):
    """HPKE suites for sealed records (RFC 9180 §7); the value is the wire id."""

    MLKEM768_X25519 = 1
    X25519 = 2


_HPKE_SUITES = {
    Suite.MLKEM768_X25519: hpke.Suite(
        hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM
    ),
    Suite.X25519: hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
}


# -- canonical encoding helpers --------------------------------------------------


def _lp(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


class _Reader:
    """Reads lp() fields from an encoding; every failure is a `DeserializeError`."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = bytes(data)
        self._pos = 0
        self._what = what

    def fail(self, reason: str) -> DeserializeError:
        return DeserializeError(f"malformed {self._what}: {reason}")

    def field(self, name: str) -> bytes:
        if self._pos + 4 > len(self._data):
            raise self.fail(f"truncated before {name}")
        (length,) = _U32.unpack_from(self._data, self._pos)
        start = self._pos + 4
        if start + length > len(self._data):
            raise self.fail(f"{name} runs past the end")
        self._pos = start + length
        return self._data[start : self._pos]

    def u32(self, name: str) -> int:
        if self._pos + 4 > len(self._data):
            raise self.fail(f"truncated before {name}")
        (value,) = _U32.unpack_from(self._data, self._pos)
        self._pos += 4
        return int(value)

    def text(self, name: str) -> str:
        raw = self.field(name)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{name} is not UTF-8") from None

    def int64(self, name: str) -> int:
        raw = self.field(name)
        if len(raw) != _U64.size:
            raise self.fail(f"{name} is not an 8-byte integer")
        return int(_U64.unpack(raw)[0])

    def end(self) -> None:
        if self._pos != len(self._data):
            raise self.fail(f"{len(self._data) - self._pos} trailing bytes")


def _utf8(value: str, field: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError("is not valid Unicode text", field=field) from None


def _check_id(value: bytes, field: str) -> None:
    if not isinstance(value, bytes) or len(value) != ID_LENGTH:
        raise InvalidInputError(f"must be {ID_LENGTH} bytes", field=field)


def _check_bureau(code: str, field: str) -> None:
    if not isinstance(code, str) or not _BUREAU.fullmatch(code):
        raise InvalidInputError(f"must be a three-letter bureau code, got {code!r}", field=field)


def _check_text(value: str, field: str, *, allow_empty: bool = False) -> None:
    if not isinstance(value, str):
        raise InvalidInputError("must be text", field=field)
    if not value and not allow_empty:
        raise InvalidInputError("must not be empty", field=field)
    if len(value) > MAX_TEXT_LENGTH:
        raise InvalidInputError(
            f"is {len(value)} characters; at most {MAX_TEXT_LENGTH} allowed", field=field
        )
    if not value.isprintable() or value != value.strip():
        raise InvalidInputError(
            "must be printable, on one line, without leading or trailing spaces", field=field
        )


def _check_time(value: int, field: str) -> None:
    if not isinstance(value, int) or not 0 <= value <= _I64_MAX:
        raise InvalidInputError("must be a Unix time in milliseconds", field=field)


def _check_field_name(name: str, field: str = "fields") -> None:
    if not isinstance(name, str) or not name or len(name) > MAX_FIELD_NAME_LENGTH:
        raise InvalidInputError(
            f"a field name must be 1-{MAX_FIELD_NAME_LENGTH} characters, got {name!r}", field=field
        )
    if not name.isprintable() or name != name.strip():
        raise InvalidInputError(
            f"field name {name!r} must be printable, without leading or trailing spaces",
            field=field,
        )


def _hex(value: bytes) -> str:
    return value.hex()


# -- requests and decisions ------------------------------------------------------


def new_request_id() -> bytes:
    """A fresh random 16-byte request id (drawn by the requester, who signs it)."""
    return secrets.token_bytes(ID_LENGTH)


@dataclass(frozen=True)
class DisclosureRequest:
    """A requester's signed ask for the record behind a match.  It names no
    owner: the hub resolves `match_id` and routes the request."""

    request_id: bytes
    match_id: bytes
    requester: str
    purpose: str
    legal_basis: str
    created_ms: int
    expires_ms: int

    def __post_init__(self) -> None:
        _check_id(self.request_id, "request_id")
        _check_id(self.match_id, "match_id")
        _check_bureau(self.requester, "requester")
        _check_text(self.purpose, "purpose")
        _check_text(self.legal_basis, "legal_basis")
        _check_time(self.created_ms, "created_ms")
        _check_time(self.expires_ms, "expires_ms")
        if self.expires_ms <= self.created_ms:
            raise InvalidInputError("must be after created_ms", field="expires_ms")

    def encode(self) -> bytes:
        """The canonical v1 encoding (module docstring); what the requester signs."""
        return b"".join(
            _lp(part)
            for part in (
                REQUEST_LABEL,
                self.request_id,
                self.match_id,
                self.requester.encode("ascii"),
                _utf8(self.purpose, "purpose"),
                _utf8(self.legal_basis, "legal_basis"),
                _U64.pack(self.created_ms),
                _U64.pack(self.expires_ms),
            )
        )

    @classmethod
    def decode(cls, data: bytes) -> DisclosureRequest:
        """Parse `encode()`'s output; raise `DeserializeError` on anything else."""
        r = _Reader(data, "disclosure request")
        if r.field("label") != REQUEST_LABEL:
            raise r.fail("not a v1 disclosure request")
        request_id, match_id = r.field("request_id"), r.field("match_id")
        requester = r.text("requester")
        purpose, legal_basis = r.text("purpose"), r.text("legal_basis")
        created_ms, expires_ms = r.int64("created_ms"), r.int64("expires_ms")
        r.end()
        try:
            return cls(
                request_id=request_id,
                match_id=match_id,
                requester=requester,
                purpose=purpose,
                legal_basis=legal_basis,
                created_ms=created_ms,
                expires_ms=expires_ms,
            )
        except InvalidInputError as e:
            raise r.fail(str(e)) from None

    def digest(self) -> bytes:
        """SHA-256 of the encoding: what a decision binds to."""
        return hashlib.sha256(self.encode()).digest()

    def is_expired(self, now_ms: int) -> bool:
        """True once `now_ms` (the caller's clock) reaches `expires_ms`."""
        return now_ms >= self.expires_ms


@dataclass(frozen=True)
class DisclosureDecision:
    """The owner's signed answer: approved (with the disclosed field names and
    the digest of the sealed record) or denied (with a reason)."""

    request_id: bytes
    request_digest: bytes
    requester: str
    owner: str
    outcome: Outcome
    reason: str
    fields: tuple[str, ...]
    ciphertext_digest: bytes
    decided_ms: int

    def __post_init__(self) -> None:
        _check_id(self.request_id, "request_id")
        if not isinstance(self.request_digest, bytes) or len(self.request_digest) != DIGEST_LENGTH:
            raise InvalidInputError("must be a SHA-256 digest", field="request_digest")
        _check_bureau(self.requester, "requester")
        _check_bureau(self.owner, "owner")
        if not isinstance(self.outcome, Outcome):
            raise InvalidInputError("must be approved or denied", field="outcome")
        _check_text(self.reason, "reason", allow_empty=self.outcome is Outcome.APPROVED)
        if not isinstance(self.fields, tuple):
            raise InvalidInputError("must be a tuple of field names", field="fields")
        for name in self.fields:
            _check_field_name(name)
        if list(self.fields) != sorted(set(self.fields)):
            raise InvalidInputError("field names must be sorted and unique", field="fields")
        if self.outcome is Outcome.APPROVED:
            if not self.fields:
                raise InvalidInputError("an approval discloses at least one field", field="fields")
            if len(self.ciphertext_digest) != DIGEST_LENGTH:
                raise InvalidInputError(
                    "an approval carries the SHA-256 of the sealed record",
                    field="ciphertext_digest",
                )
        else:
            if self.fields:
                raise InvalidInputError("a denial discloses no fields", field="fields")
            if self.ciphertext_digest:
                raise InvalidInputError("a denial carries no ciphertext", field="ciphertext_digest")
        _check_time(self.decided_ms, "decided_ms")

    @classmethod
    def approve(
        cls,
        request: DisclosureRequest,
        *,
        owner: str,
        fields: Collection[str],
        sealed: bytes,
        decided_ms: int,
        note: str = "",
    ) -> DisclosureDecision:
        """An approval of `request` disclosing `fields`, sealed as `sealed`."""
        return cls(
            request_id=request.request_id,
            request_digest=request.digest(),
            requester=request.requester,
            owner=owner,
            outcome=Outcome.APPROVED,
            reason=note,
            fields=tuple(sorted(set(fields))),
            ciphertext_digest=ciphertext_digest(sealed),
            decided_ms=decided_ms,
        )

    @classmethod
    def deny(
        cls, request: DisclosureRequest, *, owner: str, reason: str, decided_ms: int
    ) -> DisclosureDecision:
        """A denial of `request` with a reason."""
        return cls(
            request_id=request.request_id,
            request_digest=request.digest(),
            requester=request.requester,
            owner=owner,
            outcome=Outcome.DENIED,
            reason=reason,
            fields=(),
            ciphertext_digest=b"",
            decided_ms=decided_ms,
        )

    def encode(self) -> bytes:
        """The canonical v1 encoding (module docstring); what the owner signs."""
        names = _U32.pack(len(self.fields)) + b"".join(
            _lp(_utf8(name, "fields")) for name in self.fields
        )
        return b"".join(
            _lp(part)
            for part in (
                DECISION_LABEL,
                self.request_id,
                self.request_digest,
                self.requester.encode("ascii"),
                self.owner.encode("ascii"),
                self.outcome.value.encode("ascii"),
                _utf8(self.reason, "reason"),
                names,
                self.ciphertext_digest,
                _U64.pack(self.decided_ms),
            )
        )

    @classmethod
    def decode(cls, data: bytes) -> DisclosureDecision:
        """Parse `encode()`'s output; raise `DeserializeError` on anything else."""
        r = _Reader(data, "disclosure decision")
        if r.field("label") != DECISION_LABEL:
            raise r.fail("not a v1 disclosure decision")
        request_id, request_digest = r.field("request_id"), r.field("request_digest")
        requester, owner = r.text("requester"), r.text("owner")
        outcome_text = r.text("outcome")
        reason = r.text("reason")
        names = _Reader(r.field("fields"), "disclosure decision field list")
        count = names.u32("count")
        if count > len(data):
            raise r.fail("impossible field count")
        fields = tuple(names.text("field name") for _ in range(count))
        names.end()
        digest = r.field("ciphertext_digest")
        decided_ms = r.int64("decided_ms")
        r.end()
        try:
            outcome = Outcome(outcome_text)
        except ValueError:
            raise r.fail(f"unknown outcome {outcome_text!r}") from None
        try:
            return cls(
                request_id=request_id,
                request_digest=request_digest,
                requester=requester,
                owner=owner,
                outcome=outcome,
                reason=reason,
                fields=fields,
                ciphertext_digest=digest,
                decided_ms=decided_ms,
            )
        except InvalidInputError as e:
            raise r.fail(str(e)) from None


# -- signatures ----------------------------------------------------------------


def _private(key: Ed25519PrivateKey | bytes) -> Ed25519PrivateKey:
    if isinstance(key, Ed25519PrivateKey):
        return key
    try:
        return Ed25519PrivateKey.from_private_bytes(key)
    except ValueError:
        raise InvalidInputError("must be a raw 32-byte Ed25519 key", field="signing_key") from None


def _public(key: Ed25519PublicKey | bytes, whose: str) -> Ed25519PublicKey:
    if isinstance(key, Ed25519PublicKey):
        return key
    try:
        return Ed25519PublicKey.from_public_bytes(key)
    except ValueError:
        raise VerifyError(f"{whose}'s signing key is not an Ed25519 public key") from None


def sign_request(key: Ed25519PrivateKey | bytes, request: DisclosureRequest) -> bytes:
    """The requester's Ed25519 signature (RFC 8032) over `request.encode()`."""
    return _private(key).sign(request.encode())


def verify_request(
    public_key: Ed25519PublicKey | bytes, request: DisclosureRequest, signature: bytes
) -> None:
    """Check that the requester named in `request` signed it with this key
    (the caller looks the key up by `request.requester`); raise `VerifyError`."""
    try:
        _public(public_key, request.requester).verify(signature, request.encode())
    except InvalidSignature:
        raise VerifyError(
            f"disclosure request {_hex(request.request_id)} is not signed by {request.requester}"
        ) from None


def sign_decision(key: Ed25519PrivateKey | bytes, decision: DisclosureDecision) -> bytes:
    """The owner's Ed25519 signature (RFC 8032) over `decision.encode()`."""
    return _private(key).sign(decision.encode())


def verify_decision(
    public_key: Ed25519PublicKey | bytes,
    decision: DisclosureDecision,
    signature: bytes,
    *,
    request: DisclosureRequest,
    sealed: bytes | None = None,
) -> None:
    """Check that `decision.owner` signed the decision with this key, that it
    answers exactly `request`, and (when given) that `sealed` is the record
    it approved; raise `VerifyError` naming what failed."""
    rid = _hex(decision.request_id)
    try:
        _public(public_key, decision.owner).verify(signature, decision.encode())
    except InvalidSignature:
        raise VerifyError(f"decision for request {rid} is not signed by {decision.owner}") from None
    if decision.request_id != request.request_id:
        raise VerifyError(
            f"decision is for request {rid}, not for request {_hex(request.request_id)}"
        )
    if not hmac.compare_digest(decision.request_digest, request.digest()):
        raise VerifyError(f"decision for request {rid} answers a different version of it")
    if decision.requester != request.requester:
        raise VerifyError(
            f"decision for request {rid} names requester {decision.requester}, "
            f"but {request.requester} asked"
        )
    if sealed is not None:
        if decision.outcome is not Outcome.APPROVED:
            raise VerifyError(f"request {rid} was denied, yet a sealed record came with it")
        if not hmac.compare_digest(ciphertext_digest(sealed), decision.ciphertext_digest):
            raise VerifyError(
                f"the sealed record for request {rid} is not the one {decision.owner} approved"
            )


# -- HPKE keys and sealing -------------------------------------------------------


@dataclass(frozen=True, eq=False)
class HpkePublicKey:
    """A bureau's hybrid HPKE public key: ML-KEM-768 and X25519 parts."""

    mlkem768: mlkem.MLKEM768PublicKey
    x25519: x25519.X25519PublicKey

    def raw(self) -> tuple[bytes, bytes]:
        """(ML-KEM-768 encapsulation key, 1184 bytes; X25519 key, 32 bytes)."""
        return self.mlkem768.public_bytes_raw(), self.x25519.public_bytes_raw()


@dataclass(frozen=True, eq=False, repr=False)
class HpkePrivateKey:
    """A bureau's hybrid HPKE private key: ML-KEM-768 and X25519 parts."""

    mlkem768: mlkem.MLKEM768PrivateKey
    x25519: x25519.X25519PrivateKey

    def public_key(self) -> HpkePublicKey:
        """The matching public key."""
        return HpkePublicKey(self.mlkem768.public_key(), self.x25519.public_key())

    def __repr__(self) -> str:  # never print the secret
        return "HpkePrivateKey(<redacted>)"


def hpke_public_key(mlkem_raw: bytes, x25519_raw: bytes) -> HpkePublicKey:
    """A public key from its raw parts, as the federation directory lists them."""
    try:
        kem = mlkem.MLKEM768PublicKey.from_public_bytes(mlkem_raw)
    except ValueError as e:
        raise InvalidInputError(str(e), field="hpke_mlkem768") from None
    try:
        dh = x25519.X25519PublicKey.from_public_bytes(x25519_raw)
    except ValueError as e:
        raise InvalidInputError(str(e), field="hpke_x25519") from None
    return HpkePublicKey(kem, dh)


def hpke_private_key(mlkem_seed: bytes, x25519_raw: bytes) -> HpkePrivateKey:
    """A private key from a 64-byte ML-KEM-768 seed (FIPS 203 (d, z)) and a raw
    32-byte X25519 key (the `hpke-mlkem768.key` / `hpke-x25519.key` files)."""
    try:
        kem = mlkem.MLKEM768PrivateKey.from_seed_bytes(mlkem_seed)
    except ValueError as e:
        raise InvalidInputError(str(e), field="hpke_mlkem768") from None
    try:
        dh = x25519.X25519PrivateKey.from_private_bytes(x25519_raw)
    except ValueError as e:
        raise InvalidInputError(str(e), field="hpke_x25519") from None
    return HpkePrivateKey(kem, dh)


def generate_hpke_key() -> HpkePrivateKey:
    """A fresh random hybrid key pair (tests and key generation)."""
    return HpkePrivateKey(mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate())


def ciphertext_digest(sealed: bytes) -> bytes:
    """SHA-256 of a sealed record: what an approval signs."""
    return hashlib.sha256(sealed).digest()


def hpke_info(suite: Suite, *, request_id: bytes, requester: str, owner: str) -> bytes:
    """The HPKE `info` (RFC 9180 §5.1) binding suite, request and both bureaus."""
    _check_id(request_id, "request_id")
    _check_bureau(requester, "requester")
    _check_bureau(owner, "owner")
    return b"".join(
        _lp(part)
        for part in (
            HPKE_INFO_LABEL,
            bytes([suite.value]),
            request_id,
            requester.encode("ascii"),
            owner.encode("ascii"),
        )
    )


def _encode_record(fields: Mapping[str, str]) -> bytes:
    if not fields:
        raise InvalidInputError("disclose at least one field", field="fields")
    parts = [_U32.pack(len(fields))]
    for name in sorted(fields):
        _check_field_name(name)
        value = fields[name]
        if not isinstance(value, str):
            raise InvalidInputError(f"the value of {name!r} must be text", field="fields")
        parts += [_lp(_utf8(name, "fields")), _lp(_utf8(value, name))]
    plaintext = b"".join(parts)
    if len(plaintext) > MAX_RECORD_BYTES:
        raise InvalidInputError(
            f"the record is {len(plaintext)} bytes; at most {MAX_RECORD_BYTES} allowed",
            field="fields",
        )
    return plaintext


def _decode_record(plaintext: bytes) -> dict[str, str]:
    r = _Reader(plaintext, "sealed record content")
    count = r.u32("count")
    if count > len(plaintext):
        raise r.fail("impossible field count")
    out: dict[str, str] = {}
    previous: str | None = None
    for _ in range(count):
        name, value = r.text("field name"), r.text("field value")
        if previous is not None and name <= previous:
            raise r.fail("field names are not sorted and unique")
        try:
            _check_field_name(name)
        except InvalidInputError as e:
            raise r.fail(str(e)) from None
        out[name] = value
        previous = name
    r.end()
    if not out:
        raise r.fail("no fields")
    return out


def seal_record(
    fields: Mapping[str, str],
    requester_public: HpkePublicKey | tuple[bytes, bytes],
    *,
    request_id: bytes,
    requester: str,
    owner: str,
    suite: Suite = Suite.MLKEM768_X25519,
) -> bytes:
    """Seal the disclosed fields to the requester with single-shot HPKE
    (RFC 9180 §6.1), `info` binding the suite, request id and both bureaus.
    The encapsulation randomness is drawn by HPKE itself."""
    if isinstance(requester_public, HpkePublicKey):
        key = requester_public
    else:
        key = hpke_public_key(*requester_public)
    info = hpke_info(suite, request_id=request_id, requester=requester, owner=owner)
    plaintext = _encode_record(fields)
    recipient: hpke.MLKEM768X25519PublicKey | x25519.X25519PublicKey
    if suite is Suite.MLKEM768_X25519:
        recipient = hpke.MLKEM768X25519PublicKey(key.mlkem768, key.x25519)
    else:
        recipient = key.x25519
    ciphertext = _HPKE_SUITES[suite].encrypt(plaintext, recipient, info=info)
    return bytes([SEALED_VERSION, suite.value]) + ciphertext


def open_record(
    sealed: bytes,
    requester_private: HpkePrivateKey,
    *,
    request_id: bytes,
    requester: str,
    owner: str,
    suite: Suite = Suite.MLKEM768_X25519,
    fields: Collection[str] | None = None,
) -> dict[str, str]:
    """Open a sealed record (RFC 9180 §6.1) for this request and these bureaus,
    requiring `suite`; with `fields`, also require exactly those field names
    (the approved decision's list).  Raise `DecryptError` on any mismatch."""
    info = hpke_info(suite, request_id=request_id, requester=requester, owner=owner)
    rid = _hex(request_id)
    if len(sealed) < 2 or sealed[0] != SEALED_VERSION:
        raise DecryptError(f"the record for request {rid} is not a v{SEALED_VERSION} sealed record")
    if sealed[1] != suite.value:
        try:
            got = Suite(sealed[1]).name
        except ValueError:
            got = f"#{sealed[1]}"
        raise DecryptError(
            f"the record for request {rid} is sealed with suite {got}, but {suite.name} "
            "is required: refusing a downgrade"
        )
    recipient: hpke.MLKEM768X25519PrivateKey | x25519.X25519PrivateKey
    if suite is Suite.MLKEM768_X25519:
        recipient = hpke.MLKEM768X25519PrivateKey(
            requester_private.mlkem768, requester_private.x25519
        )
    else:
        recipient = requester_private.x25519
    try:
        plaintext = _HPKE_SUITES[suite].decrypt(sealed[2:], recipient, info=info)
    except InvalidTag:
        raise DecryptError(
            f"the record for request {rid} does not open with {requester}'s key for a "
            f"disclosure from {owner}: it was tampered with, sealed to another key, or "
            "sealed for another request or pair of bureaus"
        ) from None
    try:
        record = _decode_record(plaintext)
    except DeserializeError as e:
        raise DecryptError(f"the record for request {rid} opened but is malformed: {e}") from None
    if fields is not None and set(record) != set(fields):
        raise DecryptError(
            f"the record for request {rid} discloses {sorted(record)}, "
            f"but the decision lists {sorted(fields)}"
        )
    return record
