"""gRPC plumbing shared by the agent's servers and clients: one table from
domain errors to status codes, the caller's identity, channel options."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

from bureau_agent import pki
from psi.errors import (
    BlindmatchError,
    DeserializeError,
    InvalidInputError,
    LocalError,
    PeerError,
    VerifyError,
)

__all__ = [
    "CHANNEL_OPTIONS",
    "RpcAbort",
    "abort_for",
    "caller_identity",
    "status_for",
]

# Batches of 65,535 elements of 32 bytes plus framing fit well within this.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
]


class RpcAbort(BlindmatchError):
    """Raised by servicer logic to end an RPC with a specific status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


# The one table.  More specific classes first.
_STATUS: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (pki.IdentityError, grpc.StatusCode.UNAUTHENTICATED),
    (DeserializeError, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (VerifyError, grpc.StatusCode.INVALID_ARGUMENT),
    (PeerError, grpc.StatusCode.INVALID_ARGUMENT),
    (pki.PkiError, grpc.StatusCode.FAILED_PRECONDITION),
    (LocalError, grpc.StatusCode.INVALID_ARGUMENT),
)


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The status code for a domain error (INTERNAL for anything unexpected)."""
    if isinstance(exc, RpcAbort):
        return exc.code
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


async def abort_for(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> NoReturn:
    """End the RPC with the status the table gives for `exc`."""
    code = status_for(exc)
    message = (
        str(exc) if code is not grpc.StatusCode.INTERNAL else "internal error; see the server log"
    )
    await context.abort(code, message)
    raise AssertionError("unreachable")  # context.abort always raises


def caller_identity(
    context: grpc.aio.ServicerContext[Any, Any], directory: pki.Directory | None = None
) -> pki.Identity:
    """The caller's identity from its verified TLS certificate.  With a directory,
    the caller must be a bureau it lists, and its certificate must not be revoked."""
    auth = context.auth_context()
    identity = pki.identity_from_auth_context(auth)
    if directory is None:
        return identity
    if identity.role != "bureau" or identity.code not in directory.bureaus:
        raise RpcAbort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{identity} is not a bureau of this federation's directory",
        )
    serial = pki.certificate_serial(next(iter(auth["x509_pem_cert"])))
    if serial in directory.revoked_serials:
        raise RpcAbort(
            grpc.StatusCode.PERMISSION_DENIED, f"{identity}'s certificate {serial:x} is revoked"
        )
    return identity
