"""One error tree for Blindmatch.

`LocalError` means the caller misused the API or gave bad input; `PeerError`
means a remote party (custodian, hub, bureau) broke the protocol.  The gRPC
shells map both to status codes in one table.
"""

from __future__ import annotations

__all__ = [
    "BlindmatchError",
    "DeserializeError",
    "InvalidInputError",
    "LocalError",
    "PeerError",
    "VerifyError",
]


class BlindmatchError(Exception):
    """Base of every error Blindmatch raises on purpose."""


class LocalError(BlindmatchError):
    """The caller misused an API or supplied bad input."""


class PeerError(BlindmatchError):
    """A remote party sent something the protocol does not allow."""


class InvalidInputError(LocalError):
    """An input value is not acceptable; `field` names which one when known."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message


class DeserializeError(PeerError):
    """A byte string is not a canonical encoding of a scalar or group element
    (RFC 9497 §2.1 DeserializeElement / DeserializeScalar), or is the identity."""


class VerifyError(PeerError):
    """A proof or signature did not verify (RFC 9497 §2.2.2 VerifyProof)."""
