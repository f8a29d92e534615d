"""The agent's side of the audit log: keep the last signed tree head seen,
check that every new head is consistent with it, that this bureau's own
events are in the log unaltered, and that the heads other bureaus saw are
consistent with ours (a hub that shows bureaus different logs is caught).

What is checked, and what a failure means:

* signature: the head is signed by the hub's audit key in the signed
  directory; otherwise someone other than the hub made it;
* consistency: the new head extends the last head this agent accepted
  (RFC 9162 §2.1.4); otherwise the hub rewrote or dropped entries;
* inclusion: each own event (enrollment, removal, query, disclosure request,
  decision) is a leaf of the new tree and says what this agent recorded when
  the hub acknowledged it; otherwise the hub altered or removed that entry;
* witnesses: other agents (the custodians, over mutual TLS) hand over the
  latest head they accepted; two signed heads that no consistency proof
  joins are proof that the hub forked the log.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import grpc

from blindmatch.v1 import audit_pb2, audit_pb2_grpc, custodian_pb2_grpc
from bureau_agent import pki, rpc
from bureau_agent.records import RecordStore
from psi import audit, merkle
from psi.errors import BlindmatchError, DeserializeError, VerifyError

__all__ = ["AuditChecker", "AuditResult", "head_from_proto", "head_to_proto"]

log = logging.getLogger("blindmatch.audit")

_HEAD_STATE = "audit_tree_head"
# The fields of an own event that must read back exactly as recorded.
_CHECKED_FIELDS: Mapping[audit.EntryKind, tuple[str, ...]] = {
    audit.EntryKind.ENROLLMENT: ("bureau", "dataset", "version", "digest"),
    audit.EntryKind.REMOVAL: ("bureau", "dataset", "version"),
    audit.EntryKind.QUERY: ("requester", "tags"),
    audit.EntryKind.DISCLOSURE_REQUEST: ("request_id", "requester", "request_digest"),
    audit.EntryKind.DISCLOSURE_DECISION: ("request_id", "owner", "outcome", "decision_digest"),
}


@dataclass(frozen=True)
class SignedHead:
    """A tree head with the hub's signature."""

    head: merkle.TreeHead
    signature: bytes

    def to_json(self) -> str:
        return json.dumps(
            {
                "size": self.head.size,
                "root": self.head.root.hex(),
                "timestamp_ms": self.head.timestamp_ms,
                "signature": self.signature.hex(),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> SignedHead:
        data = json.loads(text)
        return cls(
            merkle.TreeHead(
                int(data["size"]), bytes.fromhex(data["root"]), int(data["timestamp_ms"])
            ),
            bytes.fromhex(data["signature"]),
        )


def head_from_proto(message: audit_pb2.SignedTreeHead) -> SignedHead:
    return SignedHead(
        merkle.TreeHead(message.size, message.root, message.timestamp_ms), message.signature
    )


def head_to_proto(signed: SignedHead) -> audit_pb2.SignedTreeHead:
    h = signed.head
    return audit_pb2.SignedTreeHead(
        size=h.size, root=h.root, timestamp_ms=h.timestamp_ms, signature=signed.signature
    )


@dataclass
class AuditResult:
    """What one verification checked and found."""

    head: SignedHead | None = None
    previous_size: int = 0
    consistent_with_previous: bool = True
    own_events: int = 0
    own_events_verified: int = 0
    witnesses: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class AuditChecker:
    """Checks the hub's log against what this agent saw and did."""

    def __init__(
        self,
        bureau: str,
        store: RecordStore,
        directory: pki.DirectoryCache,
        hub_channel: Callable[[], grpc.aio.Channel],
        tls: pki.TlsFiles,
        *,
        timeout: float = 10.0,
    ) -> None:
        self._bureau = bureau
        self._store = store
        self._directory = directory
        self._hub_channel = hub_channel
        self._tls = tls
        self._timeout = timeout

    # -- what the agent remembers ---------------------------------------

    def last_head(self) -> SignedHead | None:
        text = self._store.get_state(_HEAD_STATE)
        return SignedHead.from_json(text) if text else None

    def record_event(self, index: int, kind: audit.EntryKind, **expected: object) -> None:
        """Remember an own event the hub acknowledged at leaf `index`."""
        checked = {k: v for k, v in expected.items() if k in _CHECKED_FIELDS[kind]}
        self._store.record_audit_event(index, kind.value, json.dumps(checked, default=_hexify))

    # -- checks ----------------------------------------------------------

    def _verify_signature(self, signed: SignedHead, source: str) -> None:
        key = self._directory.get().hub_audit_key
        if not key:
            raise VerifyError("the federation directory holds no hub audit key")
        try:
            merkle.verify_tree_head(key, signed.head, signed.signature)
        except VerifyError as exc:
            raise VerifyError(
                f"{source}: tree head of size {signed.head.size} is not signed by the hub: {exc}"
            ) from None

    async def _stub(self) -> audit_pb2_grpc.AuditLogAsyncStub:
        stub: audit_pb2_grpc.AuditLogAsyncStub = audit_pb2_grpc.AuditLogStub(self._hub_channel())
        return stub

    async def _consistent(self, old: merkle.TreeHead, new: merkle.TreeHead) -> None:
        """Raise VerifyError unless `new` extends `old` (in either order of size)."""
        a, b = (old, new) if old.size <= new.size else (new, old)
        if a.size == b.size:
            if a.root != b.root:
                raise VerifyError(f"two different roots for the same size {a.size}")
            return
        if a.size == 0:
            return
        stub = await self._stub()
        proof = await stub.GetConsistencyProof(
            audit_pb2.GetConsistencyProofRequest(old_size=a.size, new_size=b.size),
            timeout=self._timeout,
        )
        merkle.verify_consistency(a.size, b.size, a.root, b.root, list(proof.hashes))

    async def on_contact(self) -> None:
        """The light check after every contact with the hub: new head, signed
        and consistent with the last one accepted; store it."""
        try:
            stub = await self._stub()
            signed = head_from_proto(
                await stub.GetTreeHead(audit_pb2.GetTreeHeadRequest(), timeout=self._timeout)
            )
            self._verify_signature(signed, "hub")
            previous = self.last_head()
            if previous is not None:
                await self._consistent(previous.head, signed.head)
                if signed.head.size < previous.head.size:
                    return  # an older head: keep the newer one we have
            self._store.set_state(_HEAD_STATE, signed.to_json())
        except (VerifyError, DeserializeError) as exc:
            self._store.set_state("audit_problem", str(exc))
            log.warning("audit log check failed", extra={"reason": str(exc)})
        except grpc.aio.AioRpcError as exc:
            log.info("audit head not fetched", extra={"reason": exc.code().name})

    async def verify(self) -> AuditResult:
        """The full check behind `blindmatch audit verify`."""
        result = AuditResult()
        stub = await self._stub()
        signed = head_from_proto(
            await stub.GetTreeHead(audit_pb2.GetTreeHeadRequest(), timeout=self._timeout)
        )
        result.head = signed
        try:
            self._verify_signature(signed, "hub")
        except VerifyError as exc:
            result.problems.append(str(exc))
            return result
        earlier = self._store.get_state("audit_problem")
        if earlier:
            result.problems.append(f"an earlier check failed: {earlier}")
        previous = self.last_head()
        if previous is not None:
            result.previous_size = previous.head.size
            try:
                if signed.head.size < previous.head.size:
                    raise VerifyError(
                        f"the log shrank from {previous.head.size} to {signed.head.size} entries"
                    )
                await self._consistent(previous.head, signed.head)
            except VerifyError as exc:
                result.consistent_with_previous = False
                result.problems.append(
                    f"the hub's log of size {signed.head.size} does not extend the head of size "
                    f"{previous.head.size} seen earlier (entries rewritten or dropped): {exc}"
                )
        await self._check_own_events(stub, signed.head, result)
        await self._check_witnesses(signed, result)
        if result.ok:
            self._store.set_state(_HEAD_STATE, signed.to_json())
        return result

    async def _check_own_events(
        self, stub: audit_pb2_grpc.AuditLogAsyncStub, head: merkle.TreeHead, result: AuditResult
    ) -> None:
        events = self._store.audit_events()
        result.own_events = len(events)
        for index, kind, expected_json in events:
            label = f"entry {index} ({kind} by {self._bureau})"
            if index >= head.size:
                result.problems.append(f"{label} is missing: the log has only {head.size} entries")
                continue
            try:
                reply = await stub.GetEntries(
                    audit_pb2.GetEntriesRequest(start=index, end=index + 1), timeout=self._timeout
                )
                if len(reply.entries) != 1:
                    raise VerifyError("the hub did not return it")
                raw = reply.entries[0]
                entry = audit.decode_entry(raw)
                if entry.kind.value != kind:
                    raise VerifyError(f"it now reads as a {entry.kind.value} entry")
                for name, value in json.loads(expected_json).items():
                    got = entry[name]
                    got_text = got.hex() if isinstance(got, bytes) else got
                    if got_text != value:
                        raise VerifyError(f"its {name} was {value!r} and is now {got_text!r}")
                proof = await stub.GetInclusionProof(
                    audit_pb2.GetInclusionProofRequest(leaf_index=index, tree_size=head.size),
                    timeout=self._timeout,
                )
                merkle.verify_inclusion(
                    merkle.leaf_hash(raw), index, head.size, list(proof.hashes), head.root
                )
                result.own_events_verified += 1
            except (VerifyError, DeserializeError, BlindmatchError) as exc:
                result.problems.append(f"{label} was altered or removed: {exc}")
            except grpc.aio.AioRpcError as exc:
                result.problems.append(
                    f"{label} could not be checked: {exc.code().name}: {exc.details()}"
                )

    async def _check_witnesses(self, signed: SignedHead, result: AuditResult) -> None:
        directory = self._directory.get()
        entry = directory.current_epoch
        witnesses = sorted(entry.custodians) if entry else []
        credentials = self._tls.channel_credentials()
        for code in witnesses:
            if code == self._bureau or code not in directory.bureaus:
                continue
            address = directory.bureaus[code].address
            if not address:
                continue
            try:
                async with grpc.aio.secure_channel(
                    address, credentials, options=rpc.CHANNEL_OPTIONS
                ) as channel:
                    theirs_msg = await custodian_pb2_grpc.CustodianStub(channel).ExchangeTreeHead(
                        head_to_proto(signed), timeout=self._timeout
                    )
            except grpc.aio.AioRpcError:
                continue  # an absent witness proves nothing either way
            if not theirs_msg.signature:
                result.witnesses.append(f"{code} (no head yet)")
                continue
            theirs = head_from_proto(theirs_msg)
            try:
                self._verify_signature(theirs, f"{code}'s head")
                await self._consistent(signed.head, theirs.head)
                result.witnesses.append(f"{code} (size {theirs.head.size})")
            except VerifyError as exc:
                result.problems.append(
                    f"the hub showed {code} a log (size {theirs.head.size}) that is not "
                    f"consistent with the one it showed {self._bureau} (size {signed.head.size}): "
                    f"the log is forked: {exc}"
                )

    async def witness(self, theirs: SignedHead) -> SignedHead | None:
        """Custodian side of the gossip: check the caller's head against ours
        (logging a fork) and return ours."""
        ours = self.last_head()
        try:
            self._verify_signature(theirs, "caller's head")
            if ours is not None:
                await self._consistent(ours.head, theirs.head)
        except VerifyError as exc:
            self._store.set_state("audit_problem", f"witnessed a forked log: {exc}")
            log.warning("witnessed an inconsistent tree head", extra={"reason": str(exc)})
        except grpc.aio.AioRpcError:
            pass
        return ours


def _hexify(value: object) -> str:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot record {type(value).__name__}")
