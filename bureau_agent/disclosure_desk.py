"""The agent's side of consent-gated disclosure.

Requester: sign a request for a match this bureau received and send it
through the hub; later verify the owner's signed decision against the
directory and open the sealed record with this bureau's hybrid HPKE key.

Owner: verify each incoming request's signature, resolve the matched handle
to the local record (the hub never has it), and on the officer's approval
seal the chosen fields to the requester's directory key (ML-KEM-768 +
X25519) and sign the decision; on a denial sign the reason.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from blindmatch.v1 import agent_pb2, disclosure_pb2, disclosure_pb2_grpc
from bureau_agent import pki
from bureau_agent.keytypes import key_type_from_proto
from bureau_agent.records import RecordStore
from bureau_agent.rpc import RpcAbort
from psi import disclosure
from psi.errors import DeserializeError, InvalidInputError, VerifyError
from psi.identifiers import KeyType

__all__ = ["DEFAULT_TTL_DAYS", "DisclosureDesk"]

DEFAULT_TTL_DAYS = 30
_DAY_MS = 86_400_000
_STATUS = {
    disclosure_pb2.DISCLOSURE_STATUS_PENDING: "pending",
    disclosure_pb2.DISCLOSURE_STATUS_APPROVED: "approved",
    disclosure_pb2.DISCLOSURE_STATUS_DENIED: "denied",
    disclosure_pb2.DISCLOSURE_STATUS_EXPIRED: "expired",
}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _request_id(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != disclosure.ID_LENGTH:
        raise InvalidInputError(f"{text!r} is not a request id (32 hex digits)", field="request_id")
    return raw


class DisclosureDesk:
    """Requests, decisions and sealed records for one bureau."""

    def __init__(
        self,
        bureau: str,
        store: RecordStore,
        directory: pki.DirectoryCache,
        signing_key: Any,
        hpke_key: disclosure.HpkePrivateKey,
        hub_channel: Callable[[], grpc.aio.Channel],
        *,
        timeout: float = 30.0,
        suite: disclosure.Suite = disclosure.Suite.MLKEM768_X25519,
    ) -> None:
        self._bureau = bureau
        self._store = store
        self._directory = directory
        self._signing_key = signing_key
        self._hpke_key = hpke_key
        self._hub_channel = hub_channel
        self._timeout = timeout
        self._suite = suite

    def _stub(self) -> disclosure_pb2_grpc.DisclosureAsyncStub:
        stub: disclosure_pb2_grpc.DisclosureAsyncStub = disclosure_pb2_grpc.DisclosureStub(
            self._hub_channel()
        )
        return stub

    def _signing_public(self, code: str) -> bytes:
        return self._directory.get().bureau(code).signing_key

    # -- requester ---------------------------------------------------------

    async def request(
        self, match_id: str, purpose: str, legal_basis: str, ttl_days: int
    ) -> tuple[
        agent_pb2.LocalDisclosure, disclosure_pb2.DisclosureTicket, disclosure.DisclosureRequest
    ]:
        try:
            match = bytes.fromhex(match_id)
        except ValueError:
            match = b""
        if len(match) != disclosure.ID_LENGTH:
            raise InvalidInputError(
                f"{match_id!r} is not a match id (32 hex digits)", field="match_id"
            )
        days = ttl_days or DEFAULT_TTL_DAYS
        now = _now_ms()
        request = disclosure.DisclosureRequest(
            request_id=disclosure.new_request_id(),
            match_id=match,
            requester=self._bureau,
            purpose=purpose,
            legal_basis=legal_basis,
            created_ms=now,
            expires_ms=now + days * _DAY_MS,
        )
        signature = disclosure.sign_request(self._signing_key, request)
        ticket = await self._stub().Request(
            disclosure_pb2.SignedDisclosureRequest(request=request.encode(), signature=signature),
            timeout=self._timeout,
        )
        case = await self._stub().Get(
            disclosure_pb2.GetDisclosureRequest(request_id=request.request_id),
            timeout=self._timeout,
        )
        return self.describe(case), ticket, request

    # -- both sides --------------------------------------------------------

    async def get(self, request_id: str) -> disclosure_pb2.DisclosureCase:
        case: disclosure_pb2.DisclosureCase = await self._stub().Get(
            disclosure_pb2.GetDisclosureRequest(request_id=_request_id(request_id)),
            timeout=self._timeout,
        )
        return case

    def list_stream(
        self, incoming: bool, outgoing: bool, follow: bool, *, after_sequence: int = 0
    ) -> Any:
        """Cases changed after `after_sequence`.  Without `follow` the listing has
        a deadline; with it none, as it waits for changes (keepalive notices a
        dead connection; the caller reconnects)."""
        direction = disclosure_pb2.ListDisclosuresRequest.DIRECTION_BOTH
        if incoming and not outgoing:
            direction = disclosure_pb2.ListDisclosuresRequest.DIRECTION_INCOMING
        elif outgoing and not incoming:
            direction = disclosure_pb2.ListDisclosuresRequest.DIRECTION_OUTGOING
        return self._stub().List(
            disclosure_pb2.ListDisclosuresRequest(
                direction=direction, follow=follow, after_sequence=after_sequence
            ),
            timeout=None if follow else self._timeout,
        )

    def describe(self, case: disclosure_pb2.DisclosureCase) -> agent_pb2.LocalDisclosure:
        """A case as the officer sees it, every signature checked and, for an
        approved outgoing request, the record opened."""
        out = agent_pb2.LocalDisclosure(
            request_id=case.request_id.hex(),
            requester=case.requester,
            owner=case.owner if case.HasField("owner") else "",
            status=_STATUS.get(case.status, "unknown"),
            created_unix_ms=case.created_unix_ms,
            expires_unix_ms=case.expires_unix_ms,
            record_removed=case.record_removed,
        )
        try:
            request = disclosure.DisclosureRequest.decode(case.request)
            disclosure.verify_request(
                self._signing_public(request.requester), request, case.request_signature
            )
            if request.request_id != case.request_id or request.requester != case.requester:
                raise VerifyError("the hub's case does not match the signed request")
        except (VerifyError, DeserializeError, pki.PkiError) as exc:
            out.verified = False
            out.reason = f"request rejected: {exc}"
            return out
        out.match_id = request.match_id.hex()
        out.purpose = request.purpose
        out.legal_basis = request.legal_basis
        if case.requester == self._bureau:
            out.direction = "outgoing"
            out.verified = True
            self._open_outgoing(case, request, out)
        else:
            out.direction = "incoming"
            out.verified = True
            out.dataset = case.dataset
            if case.key_type:
                out.matched_on = key_type_from_proto(case.key_type).value
            local = self._store.record_for_handle(case.handle) if case.handle else None
            if local is None:
                out.record_removed = True
            else:
                _, record_id, key_type, fields = local
                out.record_id = record_id
                out.matched_on = out.matched_on or KeyType(key_type).value
                out.record.update(fields)
            if case.decision:
                with contextlib.suppress(DeserializeError):
                    out.reason = disclosure.DisclosureDecision.decode(case.decision).reason
        return out

    def _open_outgoing(
        self,
        case: disclosure_pb2.DisclosureCase,
        request: disclosure.DisclosureRequest,
        out: agent_pb2.LocalDisclosure,
    ) -> None:
        if case.denial_reason and not case.decision:
            out.reason = case.denial_reason  # the owner stays hidden: no signed decision
            return
        if not case.decision:
            return
        try:
            decision = disclosure.DisclosureDecision.decode(case.decision)
            disclosure.verify_decision(
                self._signing_public(decision.owner),
                decision,
                case.decision_signature,
                request=request,
                sealed=case.sealed or None,
            )
        except (VerifyError, DeserializeError, pki.PkiError) as exc:
            out.verified = False
            out.reason = f"decision rejected: {exc}"
            return
        out.owner = decision.owner
        out.reason = decision.reason
        if decision.outcome is disclosure.Outcome.APPROVED:
            try:
                fields = disclosure.open_record(
                    case.sealed,
                    self._hpke_key,
                    request_id=request.request_id,
                    requester=self._bureau,
                    owner=decision.owner,
                    suite=self._suite,
                    fields=decision.fields,
                )
            except (VerifyError, DeserializeError) as exc:
                out.verified = False
                out.reason = f"sealed record rejected: {exc}"
                return
            out.record.update(fields)

    # -- owner ---------------------------------------------------------------

    async def _pending_incoming(
        self, request_id: str
    ) -> tuple[disclosure_pb2.DisclosureCase, disclosure.DisclosureRequest]:
        case = await self.get(request_id)
        if case.requester == self._bureau:
            raise RpcAbort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"request {request_id} is your own; only its owner can decide it",
            )
        if case.status != disclosure_pb2.DISCLOSURE_STATUS_PENDING:
            status = _STATUS.get(case.status, "unknown")
            raise RpcAbort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"request {request_id} is {status}; it can no longer be decided",
            )
        request = disclosure.DisclosureRequest.decode(case.request)
        disclosure.verify_request(
            self._signing_public(request.requester), request, case.request_signature
        )
        return case, request

    async def approve(
        self, request_id: str, fields: Sequence[str]
    ) -> tuple[disclosure_pb2.DecisionReceipt, disclosure.DisclosureDecision]:
        case, request = await self._pending_incoming(request_id)
        local = self._store.record_for_handle(case.handle)
        if local is None or case.record_removed:
            raise RpcAbort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the record behind request {request_id} was removed since the match; deny it",
            )
        _, _, _, record = local
        chosen = list(fields) or sorted(record)
        unknown = [f for f in chosen if f not in record]
        if unknown:
            raise InvalidInputError(
                f"the record has no field(s) {unknown}; it has {sorted(record)}", field="fields"
            )
        requester = self._directory.get().bureau(request.requester)
        sealed = disclosure.seal_record(
            {f: record[f] for f in chosen},
            (requester.hpke_mlkem768, requester.hpke_x25519),
            request_id=request.request_id,
            requester=request.requester,
            owner=self._bureau,
            suite=self._suite,
        )
        decision = disclosure.DisclosureDecision.approve(
            request, owner=self._bureau, fields=chosen, sealed=sealed, decided_ms=_now_ms()
        )
        return await self._decide(decision, sealed), decision

    async def deny(
        self, request_id: str, reason: str
    ) -> tuple[disclosure_pb2.DecisionReceipt, disclosure.DisclosureDecision]:
        if not reason.strip():
            raise InvalidInputError("a denial needs a reason", field="reason")
        _, request = await self._pending_incoming(request_id)
        decision = disclosure.DisclosureDecision.deny(
            request, owner=self._bureau, reason=reason, decided_ms=_now_ms()
        )
        return await self._decide(decision, b""), decision

    async def _decide(
        self, decision: disclosure.DisclosureDecision, sealed: bytes
    ) -> disclosure_pb2.DecisionReceipt:
        signature = disclosure.sign_decision(self._signing_key, decision)
        receipt: disclosure_pb2.DecisionReceipt = await self._stub().Decide(
            disclosure_pb2.SignedDecision(
                decision=decision.encode(), signature=signature, sealed=sealed
            ),
            timeout=self._timeout,
        )
        return receipt
