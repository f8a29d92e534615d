"""Disclosure cases as the hub routes them: the state machine, what each
party may see of a case, and the checks of requests and decisions.  Pure:
the store persists cases, the service speaks protobuf.

A case is one signed `psi.disclosure.DisclosureRequest` for the record
behind a match, routed by the hub to the bureau that owns that record.  The
hub stores the request, the owner's signed decision and, for an approval,
the record sealed (HPKE) to the requester; it never sees the record itself.

Who may ask.  A query match (a hit) may be asked about by the bureau that
queried; a standing match by either of its two owners, each asking the
other.  Anyone else gets PERMISSION_DENIED with the same message whether or
not the match exists.  A request for a record that has been removed since
the match (tombstoned, or its dataset replaced without it) is stored with
`record_removed` so that both sides know it can only be answered as such.

Case states (the state machine this module owns)
------------------------------------------------

    state      event                                  next state, effect
    ---------  -------------------------------------  --------------------------------------
    absent     Request, valid, match received by the   PENDING; audit leaf; both parties'
               caller, request id unused                sequences move; the owner is woken
    absent     Request, request id already used        ALREADY_EXISTS
    PENDING    Decide approve (sealed record), before   APPROVED; audit leaf; both sequences
               expires_ms                               move; the requester is woken
    PENDING    Decide deny, before expires_ms           DENIED; the same
    PENDING    the hub's clock reaches expires_ms       EXPIRED (a sweep, or the next read or
               (or a Decide arrives after it)           decision); both sequences move; a late
                                                        Decide gets FAILED_PRECONDITION
    APPROVED,  Decide                                   FAILED_PRECONDITION "already decided"
    DENIED
    EXPIRED    Decide                                   FAILED_PRECONDITION "expired"

Expiry is not audited (it follows from the audited request's expiry time).

Sequences.  Each bureau has one counter for the cases it takes part in.
Every change of a case (new, decided, expired) gives the case the next
value of each party's counter, so a follower that resumes after the last
sequence it saw gets the latest state of every case that changed, once.

What each party sees (`view`): the requester and the owner both see the
signed request, its status, times and `record_removed`.  Only the owner sees
which of its datasets and records (and the key type) matched.  The
requester sees the owner's code once the request is approved, or when the
owner's dataset policy reveals the owner; the sealed record once approved.
On a denial the requester gets the reason, and the signed decision only
when the owner is revealed (the decision names the owner).
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from hub.errors import FailedPreconditionError, LimitExceededError, PermissionDeniedError
from psi.disclosure import (
    MAX_RECORD_BYTES,
    DisclosureDecision,
    DisclosureRequest,
    Outcome,
    ciphertext_digest,
)
from psi.errors import InvalidInputError, VerifyError
from psi.identifiers import KeyType

__all__ = [
    "CLOCK_SKEW_MS",
    "DAY_MS",
    "MAX_SEALED_BYTES",
    "Case",
    "CaseView",
    "Direction",
    "DisclosurePage",
    "Event",
    "Receipt",
    "Role",
    "Status",
    "Ticket",
    "check_decision",
    "check_request",
    "denied_for",
    "next_status",
    "role_of",
    "view",
]

DAY_MS = 86_400_000
# How far ahead of the hub's clock a requester's created_ms may be.
CLOCK_SKEW_MS = 5 * 60 * 1000
# A sealed record: the plaintext limit plus HPKE's encapsulated key, tag and header.
MAX_SEALED_BYTES = MAX_RECORD_BYTES + 4096


class Status(enum.IntEnum):
    """A case's state; the values are the `DisclosureStatus` numbers and the disk codes."""

    PENDING = 1
    APPROVED = 2
    DENIED = 3
    EXPIRED = 4


class Event(enum.Enum):
    """What can happen to a case after it was requested."""

    APPROVE = "approve"
    DENY = "deny"
    EXPIRE = "expire"


# The transitions of the table above; a missing pair is refused by `next_status`.
_TRANSITIONS: Mapping[tuple[Status, Event], Status] = {
    (Status.PENDING, Event.APPROVE): Status.APPROVED,
    (Status.PENDING, Event.DENY): Status.DENIED,
    (Status.PENDING, Event.EXPIRE): Status.EXPIRED,
}


def next_status(status: Status, event: Event, request_id: bytes) -> Status:
    """The state after `event`; FAILED_PRECONDITION when the case cannot take it."""
    try:
        return _TRANSITIONS[(status, event)]
    except KeyError:
        pass
    rid = request_id.hex()
    if status is Status.EXPIRED:
        raise FailedPreconditionError(
            f"disclosure request {rid} has expired; the requester must send a new request"
        )
    raise FailedPreconditionError(
        f"disclosure request {rid} is already decided ({status.name.lower()}); "
        "a decision cannot be changed"
    )


class Role(enum.Enum):
    """The caller's part in a case."""

    REQUESTER = "requester"
    OWNER = "owner"


class Direction(enum.Enum):
    """Which cases a listing covers: where the caller is owner, requester, or both."""

    BOTH = 0
    INCOMING = 1
    OUTGOING = 2


@dataclass(frozen=True)
class Case:
    """A case as the hub stores it (never sent as is: see `view`)."""

    request_id: bytes
    match_id: bytes
    requester: str
    owner: str
    dataset: str
    handle: bytes
    key_type: KeyType
    reveal_owner: bool  # the owner's dataset policy, as it is now
    request: bytes
    request_signature: bytes
    status: Status
    record_removed: bool
    decision: bytes
    decision_signature: bytes
    sealed: bytes
    created_ms: int
    expires_ms: int
    request_audit_index: int
    decision_audit_index: int | None
    requester_sequence: int
    owner_sequence: int


@dataclass(frozen=True)
class CaseView:
    """A case as one party may see it (the fields of `DisclosureCase`)."""

    sequence: int
    request_id: bytes
    request: bytes
    request_signature: bytes
    requester: str
    owner: str | None
    dataset: str
    handle: bytes
    key_type: KeyType | None
    status: Status
    record_removed: bool
    decision: bytes
    decision_signature: bytes
    sealed: bytes
    denial_reason: str
    created_ms: int
    expires_ms: int
    audit_index: int


@dataclass(frozen=True)
class Ticket:
    """The answer to a stored request."""

    request_id: bytes
    expires_ms: int
    audit_index: int
    record_removed: bool


@dataclass(frozen=True)
class Receipt:
    """The answer to a stored decision."""

    request_id: bytes
    status: Status
    audit_index: int


@dataclass(frozen=True)
class DisclosurePage:
    """Cases of one listing, by sequence, and the sequence to resume after:
    every change up to `resume_after` that the listing covers is in `cases`
    or an earlier page."""

    cases: tuple[Case, ...]
    resume_after: int


def denied_for(caller: str, request_id: bytes) -> PermissionDeniedError:
    """The one answer for a case the caller is no party of, whether or not it exists."""
    return PermissionDeniedError(f"no disclosure case {request_id.hex()} for {caller}")


def role_of(case: Case, caller: str) -> Role:
    """The caller's part in `case`; PERMISSION_DENIED when it has none."""
    if caller == case.requester:
        return Role.REQUESTER
    if caller == case.owner:
        return Role.OWNER
    raise denied_for(caller, case.request_id)


def view(case: Case, caller: str) -> CaseView:
    """What `caller` may see of `case` (see the module text)."""
    role = role_of(case, caller)
    owner_sees = role is Role.OWNER
    owner_revealed = owner_sees or case.reveal_owner or case.status is Status.APPROVED
    denial_reason = ""
    if case.status is Status.DENIED and case.decision:
        denial_reason = DisclosureDecision.decode(case.decision).reason
    decision_shown = owner_sees or (
        case.status is Status.APPROVED or (case.status is Status.DENIED and owner_revealed)
    )
    audit_index = case.request_audit_index
    if decision_shown and case.decision_audit_index is not None:
        audit_index = case.decision_audit_index
    return CaseView(
        sequence=case.owner_sequence if owner_sees else case.requester_sequence,
        request_id=case.request_id,
        request=case.request,
        request_signature=case.request_signature,
        requester=case.requester,
        owner=case.owner if owner_revealed else None,
        dataset=case.dataset if owner_sees else "",
        handle=case.handle if owner_sees else b"",
        key_type=case.key_type if owner_sees else None,
        status=case.status,
        record_removed=case.record_removed,
        decision=case.decision if decision_shown else b"",
        decision_signature=case.decision_signature if decision_shown else b"",
        sealed=case.sealed if not owner_sees and case.status is Status.APPROVED else b"",
        denial_reason=denial_reason,
        created_ms=case.created_ms,
        expires_ms=case.expires_ms,
        audit_index=audit_index,
    )


def check_request(
    request: DisclosureRequest, caller: str, *, now_ms: int, max_lifetime_ms: int
) -> None:
    """A request the caller may send now: its own, and expiring in the future
    but not after the hub's maximum lifetime."""
    if request.requester != caller:
        raise PermissionDeniedError(
            f"the request names requester {request.requester}, but you are {caller}; "
            "a bureau can only request disclosure in its own name"
        )
    if request.created_ms > now_ms + CLOCK_SKEW_MS:
        raise InvalidInputError(
            f"is {request.created_ms - now_ms} ms ahead of the hub's clock; check your clock",
            field="created_ms",
        )
    if request.expires_ms <= now_ms:
        raise InvalidInputError(
            "is in the past by the hub's clock; sign a new request", field="expires_ms"
        )
    if request.expires_ms > now_ms + max_lifetime_ms:
        raise InvalidInputError(
            f"is more than {max_lifetime_ms // DAY_MS} days ahead; this hub keeps disclosure "
            "requests open for at most that long (max_disclosure_days)",
            field="expires_ms",
        )


def check_decision(case: Case, caller: str, decision: DisclosureDecision, sealed: bytes) -> None:
    """A decision the caller may make on `case`: it is the owner, the
    decision answers exactly the stored request, and an approval (only)
    carries the sealed record it signs.  The case's state is the store's to
    check, atomically with the change."""
    if role_of(case, caller) is not Role.OWNER:
        raise PermissionDeniedError(
            f"disclosure case {case.request_id.hex()} is addressed to its owner; "
            f"{caller} asked for it and cannot decide it"
        )
    if decision.owner != caller:
        raise PermissionDeniedError(
            f"the decision names owner {decision.owner}, but you are {caller}; "
            "a bureau can only decide in its own name"
        )
    rid = case.request_id.hex()
    stored = DisclosureRequest.decode(case.request)
    if not hmac.compare_digest(decision.request_digest, stored.digest()):
        raise VerifyError(f"the decision for request {rid} answers a different version of it")
    if decision.requester != case.requester:
        raise VerifyError(
            f"the decision for request {rid} names requester {decision.requester}, "
            f"but {case.requester} asked"
        )
    if decision.outcome is Outcome.APPROVED:
        if not sealed:
            raise InvalidInputError("an approval carries the sealed record", field="sealed")
        if len(sealed) > MAX_SEALED_BYTES:
            raise LimitExceededError(
                f"is {len(sealed)} bytes; at most {MAX_SEALED_BYTES}", field="sealed"
            )
        if not hmac.compare_digest(ciphertext_digest(sealed), decision.ciphertext_digest):
            raise InvalidInputError(
                "is not the record the decision approves (its SHA-256 differs from the "
                "decision's ciphertext digest)",
                field="sealed",
            )
    elif sealed:
        raise InvalidInputError("a denial carries no sealed record", field="sealed")
