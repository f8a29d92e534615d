"""The ristretto255 prime-order group (RFC 9496) over libsodium, via `rbcl`.

This is the only module that touches the libsodium binding.  Scalars and
elements are 32-byte strings.  Scalars are little-endian integers in
[0, ORDER); elements are canonical ristretto255 encodings.

Two libsodium behaviours are handled here rather than left to callers:

* `crypto_core_ristretto255_is_valid_point` accepts the identity (32 zero
  bytes).  RFC 9497 §2.1 requires DeserializeElement to reject it, so
  `decode_element` checks for it explicitly.
* `crypto_scalarmult_ristretto255` silently clears the top bit of its scalar,
  so an unreduced scalar would be multiplied as a different number.  Every
  scalar passed to `scalar_mult` is checked to be canonical (< ORDER) first.
* The `_allow_scalar_zero` multiplication returns 32 zero bytes for an
  invalid point instead of failing; the plain one fails for an invalid point
  and for an identity result.  `decode_and_scalar_mult` uses the plain one,
  so a peer's element is decoded once, inside the multiplication, instead of
  once by `is_valid_point` and again by the multiplication.

Internal arithmetic may produce the identity (for example a composite sum of
zero terms); only data that crosses a trust boundary goes through the
`decode_*` functions, which reject it.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Sequence

import rbcl

from psi.errors import DeserializeError, InvalidInputError

__all__ = [
    "ELEMENT_LENGTH",
    "GENERATOR",
    "IDENTITY",
    "ORDER",
    "SCALAR_LENGTH",
    "decode_and_scalar_mult",
    "decode_element",
    "decode_scalar",
    "element_add",
    "element_sub",
    "elements_equal",
    "expand_message_xmd",
    "hash_to_group",
    "hash_to_scalar",
    "random_scalar",
    "reduce_wide",
    "scalar_add",
    "scalar_from_int",
    "scalar_invert",
    "scalar_invert_batch",
    "scalar_mul",
    "scalar_mult",
    "scalar_mult_base",
    "scalar_negate",
    "scalar_sub",
    "scalar_to_int",
]

ORDER = 2**252 + 27742317777372353535851937790883648493
"""The prime order L of the ristretto255 group."""

SCALAR_LENGTH = 32
ELEMENT_LENGTH = 32
IDENTITY = bytes(ELEMENT_LENGTH)
GENERATOR = bytes.fromhex("e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76")
"""The canonical encoding of the ristretto255 base point (RFC 9496 §4.4)."""

_ZERO_SCALAR = bytes(SCALAR_LENGTH)
_SHA512_BLOCK = 128
_SHA512_OUT = 64
_ZPAD_HASHER = hashlib.sha512(bytes(_SHA512_BLOCK))

# Bound once: these are on the hot path of every OPRF evaluation.
_scalarmult = rbcl.crypto_scalarmult_ristretto255_allow_scalar_zero
_scalarmult_strict = rbcl.crypto_scalarmult_ristretto255
_scalarmult_base = rbcl.crypto_scalarmult_ristretto255_base_allow_scalar_zero
_is_valid_point = rbcl.crypto_core_ristretto255_is_valid_point
_from_hash = rbcl.crypto_core_ristretto255_from_hash
_reduce = rbcl.crypto_core_ristretto255_scalar_reduce


# -- scalars -----------------------------------------------------------------


def scalar_to_int(scalar: bytes) -> int:
    """The integer a 32-byte little-endian scalar encodes."""
    return int.from_bytes(scalar, "little")


def scalar_from_int(value: int) -> bytes:
    """Encode an integer as a canonical scalar, reducing it modulo ORDER."""
    return (value % ORDER).to_bytes(SCALAR_LENGTH, "little")


def random_scalar() -> bytes:
    """A uniformly random non-zero scalar from libsodium's CSPRNG (RFC 9497 RandomScalar)."""
    while True:
        scalar: bytes = rbcl.crypto_core_ristretto255_scalar_random()
        if scalar != _ZERO_SCALAR:
            return scalar


def reduce_wide(data: bytes) -> bytes:
    """Reduce a 64-byte little-endian integer modulo ORDER."""
    if len(data) != 64:
        raise InvalidInputError(f"wide scalar must be 64 bytes, got {len(data)}")
    return bytes(_reduce(data))


def decode_scalar(data: bytes, *, name: str = "scalar") -> bytes:
    """RFC 9497 DeserializeScalar: accept only a canonical 32-byte encoding."""
    if not isinstance(data, bytes) or len(data) != SCALAR_LENGTH:
        raise DeserializeError(f"{name} must be {SCALAR_LENGTH} bytes")
    if scalar_to_int(data) >= ORDER:
        raise DeserializeError(f"{name} is not reduced modulo the group order")
    return data


def _check_scalar(scalar: bytes) -> None:
    # A top byte below 0x10 means the value is below 2^252 < ORDER: the common
    # case (blinds, weights, keys) decided without building an integer.
    if len(scalar) == SCALAR_LENGTH and scalar[-1] < 0x10:
        return
    if len(scalar) != SCALAR_LENGTH or scalar_to_int(scalar) >= ORDER:
        raise InvalidInputError("scalar must be a canonical 32-byte encoding below the group order")


def scalar_add(a: bytes, b: bytes) -> bytes:
    """(a + b) mod ORDER."""
    return bytes(rbcl.crypto_core_ristretto255_scalar_add(a, b))


def scalar_sub(a: bytes, b: bytes) -> bytes:
    """(a - b) mod ORDER."""
    return bytes(rbcl.crypto_core_ristretto255_scalar_sub(a, b))


def scalar_mul(a: bytes, b: bytes) -> bytes:
    """(a * b) mod ORDER."""
    return bytes(rbcl.crypto_core_ristretto255_scalar_mul(a, b))


def scalar_negate(a: bytes) -> bytes:
    """(-a) mod ORDER."""
    return bytes(rbcl.crypto_core_ristretto255_scalar_negate(a))


def scalar_invert(a: bytes) -> bytes:
    """a^-1 mod ORDER; the zero scalar has no inverse."""
    if a == _ZERO_SCALAR:
        raise InvalidInputError("the zero scalar has no inverse")
    return bytes(rbcl.crypto_core_ristretto255_scalar_invert(a))


def scalar_invert_batch(scalars: Sequence[bytes]) -> list[bytes]:
    """Invert many scalars with one inversion (Montgomery's trick).

    Costs one inversion and 3(n-1) multiplications instead of n inversions.
    """
    if not scalars:
        return []
    prefix: list[bytes] = [scalars[0]]
    for s in scalars[1:]:
        prefix.append(scalar_mul(prefix[-1], s))
    inverse = scalar_invert(prefix[-1])
    result: list[bytes] = [b""] * len(scalars)
    for i in range(len(scalars) - 1, 0, -1):
        result[i] = scalar_mul(inverse, prefix[i - 1])
        inverse = scalar_mul(inverse, scalars[i])
    result[0] = inverse
    return result


# -- elements ----------------------------------------------------------------


def decode_element(data: bytes, *, name: str = "element") -> bytes:
    """RFC 9497 DeserializeElement: a canonical, non-identity ristretto255 encoding."""
    if not isinstance(data, bytes) or len(data) != ELEMENT_LENGTH:
        raise DeserializeError(f"{name} must be {ELEMENT_LENGTH} bytes")
    if data == IDENTITY:
        raise DeserializeError(f"{name} is the identity element")
    if not _is_valid_point(data):
        raise DeserializeError(f"{name} is not a canonical ristretto255 encoding")
    return data


def scalar_mult(scalar: bytes, element: bytes) -> bytes:
    """scalar * element.  The scalar must be canonical (see the module docstring)."""
    _check_scalar(scalar)
    return bytes(_scalarmult(scalar, element))


def decode_and_scalar_mult(scalar: bytes, data: bytes, *, name: str = "element") -> bytes:
    """scalar * decode_element(data): a peer's element checked exactly as
    `decode_element` checks it (same errors), at the cost of the multiplication alone."""
    _check_scalar(scalar)
    if isinstance(data, bytes) and len(data) == ELEMENT_LENGTH and data != IDENTITY:
        try:
            return bytes(_scalarmult_strict(scalar, data))
        except RuntimeError:
            pass  # not canonical, or the scalar is zero: decode_element tells which
    decode_element(data, name=name)
    return bytes(_scalarmult(scalar, data))  # a valid element times the zero scalar


def scalar_mult_base(scalar: bytes) -> bytes:
    """scalar * GENERATOR (fixed-base, about three times faster than `scalar_mult`)."""
    _check_scalar(scalar)
    return bytes(_scalarmult_base(scalar))


def element_add(a: bytes, b: bytes) -> bytes:
    """a + b in the group."""
    return bytes(rbcl.crypto_core_ristretto255_add(a, b))


def element_sub(a: bytes, b: bytes) -> bytes:
    """a - b in the group."""
    return bytes(rbcl.crypto_core_ristretto255_sub(a, b))


def elements_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of two encodings."""
    return hmac.compare_digest(a, b)


# -- hashing (RFC 9380) ------------------------------------------------------


def expand_message_xmd(message: bytes, dst: bytes, length: int) -> bytes:
    """RFC 9380 §5.3.1 expand_message_xmd with SHA-512."""
    ell, suffix_0, suffix_1 = _xmd_parameters(dst, length)
    hasher = _ZPAD_HASHER.copy()  # Z_pad is one whole block: absorb it once per process
    hasher.update(message + suffix_0)
    b_0 = hasher.digest()
    b_i = hashlib.sha512(b_0 + suffix_1).digest()
    if ell == 1:  # every use in RFC 9497: 64 bytes, one SHA-512 block of output
        return b_i[:length]
    output = [b_i]
    dst_prime = suffix_1[1:]
    for i in range(2, ell + 1):
        mixed = bytes(x ^ y for x, y in zip(b_0, b_i, strict=True))
        b_i = hashlib.sha512(mixed + bytes([i]) + dst_prime).digest()
        output.append(b_i)
    return b"".join(output)[:length]


@functools.cache
def _xmd_parameters(dst: bytes, length: int) -> tuple[int, bytes, bytes]:
    """ell and the constant tails of b_0's and b_1's hash inputs, per (DST, length):
    I2OSP(len_in_bytes, 2) || I2OSP(0, 1) || DST_prime, and I2OSP(1, 1) || DST_prime."""
    if len(dst) > 255:
        raise InvalidInputError("domain separation tag longer than 255 bytes")
    ell = -(-length // _SHA512_OUT)
    if ell > 255 or length > 65535:
        raise InvalidInputError(f"cannot expand to {length} bytes")
    dst_prime = dst + bytes([len(dst)])
    return ell, length.to_bytes(2, "big") + b"\x00" + dst_prime, b"\x01" + dst_prime


def hash_to_group(message: bytes, dst: bytes) -> bytes:
    """RFC 9380 hash_to_ristretto255: expand to 64 bytes, then the one-way map (RFC 9496 §4.3.4)."""
    return bytes(_from_hash(expand_message_xmd(message, dst, 64)))


def hash_to_scalar(message: bytes, dst: bytes) -> bytes:
    """RFC 9497 §4.1 HashToScalar: 64 uniform bytes read little-endian, reduced mod ORDER."""
    return bytes(_reduce(expand_message_xmd(message, dst, 64)))
