"""Tags: what a bureau enrolls at the hub for each match key."""

from __future__ import annotations

from psi import oprf
from psi.errors import InvalidInputError

__all__ = ["TAG_LENGTH", "tag_from_output"]

TAG_LENGTH = 16
"""A tag is the first 16 bytes of the RFC 9497 Finalize output (128 bits: a
collision among 10^9 tags has probability about 2^-68)."""


def tag_from_output(output: bytes) -> bytes:
    """Truncate a 64-byte OPRF output to a tag."""
    if len(output) != oprf.OUTPUT_LENGTH:
        raise InvalidInputError(
            f"OPRF output must be {oprf.OUTPUT_LENGTH} bytes, got {len(output)}"
        )
    return output[:TAG_LENGTH]
