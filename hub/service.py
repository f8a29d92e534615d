"""The hub's gRPC servicers (Hub, AuditLog, Disclosure): thin shells.

Each handler reads the caller's bureau code from its verified TLS
certificate (never from a message field), turns protobuf into domain types
(`hub.policy`, `hub.disclosure`, `psi.disclosure`), calls the store, masks
answers by policy and turns the result back into protobuf.  Domain errors
become status codes in one table, `_STATUS`; anything else is INTERNAL with
a reference to the server log.

Notices and disclosure cases are kept after they are read: an agent resumes
after the last sequence it stored, and may read them all again from 0.

Disclosure signatures are checked against the federation directory's keys
when the hub has one (`federation` in its configuration); without it they
are stored unchecked, for the other party's agent to verify.

Quotas: with a `quota` (token buckets per bureau, `hub.quota_config`), each
Query and each BulkMatch batch spends one token per tag; a lookup the bucket
cannot pay for is refused with RESOURCE_EXHAUSTED and a `retry-after-ms`
trailer, logged, counted and appended to the audit log as a quota refusal.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NoReturn

import grpc
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from blindmatch.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    common_pb2,
    disclosure_pb2,
    disclosure_pb2_grpc,
    hub_pb2,
    hub_pb2_grpc,
)
from bureau_agent import pki
from bureau_agent.quota import TokenBuckets
from hub import audit, disclosure, policy
from hub.audit import TreeHeadSigner
from hub.columns import (
    KeyColumns,
    QueryColumns,
    key_columns,
    make_key_columns,
    make_query_columns,
    query_columns,
)
from hub.errors import (
    AlreadyExistsError,
    ConcurrentEnrollmentError,
    FailedPreconditionError,
    NotFoundError,
    PermissionDeniedError,
    StorageError,
)
from hub.metrics import HubMetrics
from hub.policy import HANDLE_LENGTH, KEY_TYPE_CODES
from hub.store import AuditStore, DisclosureStore, Enrollment, TagStore
from psi.disclosure import (
    ID_LENGTH,
    DisclosureDecision,
    DisclosureRequest,
    verify_decision,
    verify_request,
)
from psi.errors import BlindmatchError, InvalidInputError, PeerError
from psi.identifiers import KeyType, Strength
from psi.merkle import leaf_hash

__all__ = ["AuditLogService", "DisclosureService", "HubService", "authenticate", "status_for"]

log = logging.getLogger("blindmatch.hub")

Context = grpc.aio.ServicerContext[Any, Any]


class QuotaRefusal(BlindmatchError):
    """A bureau asked for more lookups than its quota allows right now."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# The one table from domain errors to status codes.  More specific first.
_STATUS: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (pki.IdentityError, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (ConcurrentEnrollmentError, grpc.StatusCode.ABORTED),
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),  # LimitExceededError too
    (PeerError, grpc.StatusCode.INVALID_ARGUMENT),
    (StorageError, grpc.StatusCode.UNAVAILABLE),
    (QuotaRefusal, grpc.StatusCode.RESOURCE_EXHAUSTED),
)

_STRENGTHS = {
    Strength.EXACT: common_pb2.STRENGTH_EXACT,
    Strength.CANDIDATE: common_pb2.STRENGTH_CANDIDATE,
}
_NOTICE_PAGE = 500
_CASE_PAGE = 200

try:
    _VERSION = importlib.metadata.version("blindmatch")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    _VERSION = "unknown"


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The status code for a domain error (INTERNAL for anything unexpected)."""
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


async def _abort(context: Context, exc: BaseException, where: str = "") -> NoReturn:
    code = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        reference = secrets.token_hex(4)
        log.error("internal error %s", reference, exc_info=exc)
        message = f"internal error (reference {reference}); see the hub's log"
    else:
        message = f"{where}{exc}"
    if isinstance(exc, QuotaRefusal):
        retry_ms = int(min(exc.retry_after, 86_400) * 1000)
        context.set_trailing_metadata((("retry-after-ms", str(retry_ms)),))
    await context.abort(code, message)
    raise AssertionError("unreachable")  # context.abort always raises


DirectorySource = Callable[[], pki.Directory]


def authenticate(context: Context, directory: DirectorySource | None) -> str:
    """The caller's bureau code, from its verified TLS certificate; with a
    directory, only bureaus it lists and whose certificates it does not revoke."""
    auth = context.auth_context()
    identity = pki.identity_from_auth_context(auth)
    if identity.role != "bureau":
        raise PermissionDeniedError(f"{identity} is not a bureau; only bureaus call the hub")
    if directory is not None:
        current = directory()
        if identity.code not in current.bureaus:
            raise PermissionDeniedError(
                f"bureau {identity.code} is not in the federation directory"
            )
        serial = pki.certificate_serial(next(iter(auth["x509_pem_cert"])))
        if serial in current.revoked_serials:
            raise PermissionDeniedError(
                f"the certificate of {identity.code} (serial {serial:x}) is revoked"
            )
    return identity.code


# BulkMatch batches in flight on one stream beyond the store's lookups.
_BULK_STAGES = 3
# A BulkMatch batch's id, whether it asked for columns, and its lookup.
_Started = tuple[int, bool, asyncio.Task[policy.QueryResult]]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@functools.lru_cache(maxsize=4096)
def _shown_fields(
    policy_: policy.DatasetPolicy, owner: str, category: str, key_type: KeyType
) -> Mapping[str, Any]:
    """The `Match` fields, beyond its index and id, of a hit on a dataset of
    `owner` and `category` under `policy_`: `policy.answer` decides them,
    here once per kind of hit rather than once per hit (a bulk match sends
    tens of thousands).  Proto3 optional: a field left out is "not revealed"."""
    shown = policy.answer(policy.Hit(0, "", key_type, owner, category, policy_))
    fields: dict[str, Any] = {
        "key_type": KEY_TYPE_CODES[shown.key_type],
        "strength": _STRENGTHS[shown.strength],
    }
    if shown.category is not None:
        fields["category"] = shown.category
    if shown.owner is not None:
        fields["owner"] = shown.owner
    return MappingProxyType(fields)


def add_matches(
    into: RepeatedCompositeFieldContainer[common_pb2.Match], hits: Iterable[policy.Hit]
) -> None:
    """Append each hit to a response's `matches` as the requester may see it."""
    add = into.add
    for hit in hits:
        add(
            query_index=hit.query_index,
            match_id=hit.match_id,
            **_shown_fields(hit.policy, hit.owner, hit.category, hit.key_type),
        )


def add_match_columns(into: hub_pb2.MatchColumns, hits: Iterable[policy.Hit]) -> None:
    """`add_matches` in columns: each kind of hit (what `_shown_fields`
    shows) once in `kinds`, every hit as an index, an id and its kind."""
    kinds: dict[tuple[policy.DatasetPolicy, str, str, KeyType], int] = {}
    indices: list[int] = []
    ids: list[str] = []
    kind_of: list[int] = []
    for hit in hits:
        key = (hit.policy, hit.owner, hit.category, hit.key_type)
        kind = kinds.get(key)
        if kind is None:
            kind = kinds[key] = len(kinds)
            into.kinds.add(**_shown_fields(*key))
        indices.append(hit.query_index)
        ids.append(hit.match_id)
        kind_of.append(kind)
    into.query_indices.extend(indices)
    into.match_ids = bytes.fromhex("".join(ids))
    into.kind_of.extend(kind_of)


class HubService(hub_pb2_grpc.HubServicer):
    """Serves one `TagStore` to the federation's bureaus."""

    def __init__(
        self,
        store: TagStore,
        *,
        max_tags_per_request: int = 10_000,
        directory: DirectorySource | None = None,
        quota: TokenBuckets | None = None,
        audit: AuditStore | None = None,
        metrics: HubMetrics | None = None,
    ) -> None:
        if quota is not None and audit is None:
            raise ValueError("a hub quota needs the audit store: every refusal is audited")
        self._store = store
        self._max_tags = max_tags_per_request
        self._directory = directory
        self._quota = quota
        self._audit = audit
        self._metrics = metrics

    async def _spend(self, caller: str, tags: int, operation: str) -> None:
        """Take `tags` tokens of the caller's bucket, or refuse (logged, audited)."""
        if self._quota is None:
            return
        refused = self._quota.take(caller, tags)
        if refused is None:
            return
        assert self._audit is not None  # noqa: S101 - checked in __init__
        try:
            index: int | str = await self._audit.record_quota_refusal(caller, operation)
        except StorageError as exc:  # still refuse: a quota must not fail open
            index = "not recorded"
            log.error("quota refusal of %s could not be audited: %s", caller, exc)
        if self._metrics is not None:
            self._metrics.quota_refusals.labels(caller, operation).inc()
        log.warning(
            "quota refusal: %s asked %d tags (%s); retry after %.1f s; audit leaf %s",
            caller,
            tags,
            operation,
            refused.retry_after,
            index,
        )
        raise QuotaRefusal(refused.message("tags"), refused.retry_after)

    # -- who is calling ---------------------------------------------------------

    def _caller(self, context: Context) -> str:
        return authenticate(context, self._directory)

    # -- conversions --------------------------------------------------------------

    def _keys(self, keys: Sequence[common_pb2.TaggedKey], field: str) -> list[policy.TaggedKey]:
        policy.check_request_size(len(keys), self._max_tags, field=field)
        return policy.make_tagged_keys(((k.tag, k.handle, k.key_type) for k in keys), field=field)

    def _query_tags(
        self, tags: Sequence[common_pb2.QueryTag], field: str = "tags"
    ) -> list[policy.QueryTag]:
        policy.check_request_size(len(tags), self._max_tags, field=field)
        return policy.make_query_tags(((t.tag, t.key_type) for t in tags), field=field)

    def _batch_keys(self, batch: hub_pb2.TagBatch, field: str) -> KeyColumns:
        """A TagBatch's keys, from either of its forms."""
        if not batch.HasField("columns"):
            return key_columns(self._keys(batch.keys, f"{field}: keys"))
        if batch.keys:
            raise InvalidInputError("carries both keys and columns; send one of them", field=field)
        columns = batch.columns
        policy.check_request_size(
            len(columns.tags) // policy.TAG_LENGTH, self._max_tags, field=f"{field}: columns"
        )
        return make_key_columns(
            columns.tags, columns.handles, columns.key_types, field=f"{field}: columns"
        )

    def _bulk_tags(self, request: hub_pb2.BulkMatchRequest) -> QueryColumns:
        """A BulkMatchRequest's tags, from either of its forms."""
        if not request.HasField("columns"):
            return query_columns(self._query_tags(request.tags))
        if request.tags:
            raise InvalidInputError("carries both tags and columns; send one of them", field="tags")
        columns = request.columns
        policy.check_request_size(
            len(columns.tags) // policy.TAG_LENGTH, self._max_tags, field="columns"
        )
        return make_query_columns(columns.tags, columns.key_types, field="columns")

    @staticmethod
    def _spec(owner: str, header: hub_pb2.EnrollHeader) -> policy.EnrollSpec:
        return policy.EnrollSpec(
            name=policy.resolve_dataset(owner, header.dataset),
            epoch=policy.check_epoch(header.epoch),
            policy=policy.DatasetPolicy(
                reveal_owner=header.policy.reveal_owner,
                reveal_category=header.policy.reveal_category,
                linkable=header.policy.linkable,
            ),
            category=policy.check_category(header.category),
            replace=header.replace,
        )

    @staticmethod
    def _notice(notice: policy.Notice) -> common_pb2.Notice:
        message = common_pb2.Notice(
            sequence=notice.sequence,
            match_id=notice.match_id,
            dataset=notice.dataset,
            handle=notice.handle,
            key_type=KEY_TYPE_CODES[notice.key_type],  # type: ignore[arg-type]
            strength=_STRENGTHS[notice.strength],
            created_unix_ms=notice.created_ms,
        )
        if notice.other_owner is not None:
            message.other_owner = notice.other_owner
        if notice.other_category is not None:
            message.other_category = notice.other_category
        return message

    # -- RPCs -------------------------------------------------------------------------

    async def Enroll(
        self, request_iterator: AsyncIterator[hub_pb2.EnrollRequest], context: Context
    ) -> hub_pb2.EnrollResponse:
        """Header, batches, trailer; the response follows the commit."""
        enrollment: Enrollment | None = None
        try:
            owner = self._caller(context)
            first = await anext(aiter(request_iterator), None)
            if first is None or first.WhichOneof("part") != "header":
                raise InvalidInputError("an Enroll stream must start with a header", field="header")
            enrollment = await self._store.begin_enrollment(owner, self._spec(owner, first.header))
            batches = 0
            async for message in request_iterator:
                part = message.WhichOneof("part")
                if part == "batch":
                    await enrollment.add(self._batch_keys(message.batch, f"batch {batches}"))
                    batches += 1
                elif part == "trailer":
                    result = await enrollment.commit(
                        message.trailer.tag_count, message.trailer.digest
                    )
                    if self._metrics is not None:
                        self._metrics.enrolled_tags.inc(result.tag_count)
                    return hub_pb2.EnrollResponse(
                        dataset=result.dataset,
                        version=result.version,
                        tag_count=result.tag_count,
                        new_notices=result.new_notices,
                        audit_index=result.audit_index,
                    )
                else:
                    raise InvalidInputError(
                        "an Enroll stream has exactly one header, first", field="header"
                    )
            raise InvalidInputError(
                "the stream ended without a trailer; nothing was committed", field="trailer"
            )
        except Exception as exc:
            await _abort(context, exc)
        finally:
            if enrollment is not None:
                # No-op after a commit.  Shielded: a cancelled stream (client
                # gone, deadline) must still drop its staged rows.
                await asyncio.shield(enrollment.abort())

    async def UpdateDataset(
        self, request: hub_pb2.UpdateDatasetRequest, context: Context
    ) -> hub_pb2.UpdateDatasetResponse:
        """Add keys to and remove handles from the caller's live dataset."""
        try:
            owner = self._caller(context)
            name = policy.resolve_dataset(owner, request.dataset)
            epoch = policy.check_epoch(request.epoch)
            policy.check_request_size(
                len(request.add) + len(request.remove_handles),
                self._max_tags,
                field="add + remove_handles",
            )
            add = self._keys(request.add, "add")
            for i, handle in enumerate(request.remove_handles):
                if len(handle) != HANDLE_LENGTH:
                    raise InvalidInputError(
                        f"must be exactly {HANDLE_LENGTH} bytes, got {len(handle)}",
                        field=f"remove_handles[{i}]",
                    )
            result = await self._store.update_dataset(
                owner, name, epoch, add, [bytes(h) for h in request.remove_handles]
            )
            if self._metrics is not None:
                self._metrics.enrolled_tags.inc(result.added)
        except Exception as exc:
            await _abort(context, exc)
        return hub_pb2.UpdateDatasetResponse(
            dataset=result.dataset,
            version=result.version,
            added=result.added,
            removed=result.removed,
            tag_count=result.tag_count,
            new_notices=result.new_notices,
            audit_index=result.audit_index,
        )

    async def _lookup(
        self,
        requester: str,
        epoch: int,
        tags: list[policy.QueryTag] | QueryColumns,
        include_own: bool,
        operation: str,
    ) -> policy.QueryResult:
        """Spend the caller's quota on validated `tags` and look them up."""
        await self._spend(requester, len(tags), operation)
        if self._metrics is not None:
            self._metrics.queried_tags.inc(len(tags))
        return await self._store.query(requester, epoch, tags, include_own=include_own)

    async def _bulk_lookup(
        self, requester: str, request: hub_pb2.BulkMatchRequest
    ) -> policy.QueryResult:
        # Validated here, inside the batch's task: an error is that batch's answer.
        return await self._lookup(
            requester,
            policy.check_epoch(request.epoch),
            self._bulk_tags(request),
            request.include_own,
            "bulk_match",
        )

    async def Query(self, request: hub_pb2.QueryRequest, context: Context) -> hub_pb2.QueryResponse:
        """Look up one batch of tags."""
        try:
            requester = self._caller(context)
            result = await self._lookup(
                requester,
                policy.check_epoch(request.epoch),
                self._query_tags(request.tags),
                request.include_own,
                "query",
            )
        except Exception as exc:
            await _abort(context, exc)
        response = hub_pb2.QueryResponse(
            datasets_searched=result.datasets_searched, audit_index=result.audit_index
        )
        add_matches(response.matches, result.hits)
        return response

    async def BulkMatch(
        self, request_iterator: AsyncIterator[hub_pb2.BulkMatchRequest], context: Context
    ) -> AsyncIterator[hub_pb2.BulkMatchResponse]:
        """Answer each batch, in order, with its batch_id.  A few batches are
        in flight at once (received, looked up, recorded, answered: the store
        bounds how many it looks up together); each answer is sent as soon as
        it and those before it are ready, so a client that waits for each
        answer before sending more is served.  Each batch gets its own audit
        leaf, in the order the lookups finish."""
        try:
            requester = self._caller(context)
        except Exception as exc:
            await _abort(context, exc)
        # While one batch is looked up, the one before is recorded and the one
        # before that sent: a few more than the store's lookups keep each stage busy.
        slots = asyncio.Semaphore(self._store.bulk_lookups_in_flight + _BULK_STAGES)
        started: asyncio.Queue[_Started | None] = asyncio.Queue()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await slots.acquire()
                    lookup = self._bulk_lookup(requester, request)
                    started.put_nowait(
                        (request.batch_id, request.answer_in_columns, asyncio.create_task(lookup))
                    )
            finally:
                started.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await started.get()) is not None:
                try:
                    yield await self._bulk_answer(context, *item)
                finally:
                    slots.release()
            await reader  # a broken request stream ends the call with its error
        finally:
            reader.cancel()
            while not started.empty():
                if (left := started.get_nowait()) is not None:
                    left[2].cancel()

    @staticmethod
    async def _bulk_answer(
        context: Context, batch_id: int, in_columns: bool, lookup: asyncio.Task[policy.QueryResult]
    ) -> hub_pb2.BulkMatchResponse:
        try:
            result = await lookup
        except Exception as exc:
            await _abort(context, exc, where=f"batch_id {batch_id}: ")
        response = hub_pb2.BulkMatchResponse(batch_id=batch_id, audit_index=result.audit_index)
        if in_columns:
            add_match_columns(response.match_columns, result.hits)
        else:
            add_matches(response.matches, result.hits)
        return response

    async def WatchNotices(
        self, request: hub_pb2.WatchNoticesRequest, context: Context
    ) -> AsyncIterator[common_pb2.Notice]:
        """Stored notices after `after_sequence`; with `follow`, new ones as they commit."""
        try:
            recipient = self._caller(context)
            after = request.after_sequence
        except Exception as exc:
            await _abort(context, exc)
        while True:
            try:
                notices = await self._store.read_notices(recipient, after, _NOTICE_PAGE)
            except Exception as exc:
                await _abort(context, exc)
            for notice in notices:
                yield self._notice(notice)
                after = notice.sequence
            if len(notices) == _NOTICE_PAGE:
                continue
            if not request.follow or not await self._store.wait_for_notices(recipient, after):
                return

    async def ListDatasets(
        self, request: hub_pb2.ListDatasetsRequest, context: Context
    ) -> hub_pb2.ListDatasetsResponse:
        """The caller's datasets."""
        try:
            owner = self._caller(context)
            datasets = await self._store.list_datasets(owner)
        except Exception as exc:
            await _abort(context, exc)
        return hub_pb2.ListDatasetsResponse(
            datasets=[
                common_pb2.DatasetInfo(
                    name=d.name,
                    owner=d.owner,
                    epoch=d.epoch,
                    version=d.version,
                    tag_count=d.tag_count,
                    policy=common_pb2.DatasetPolicy(
                        reveal_owner=d.policy.reveal_owner,
                        reveal_category=d.policy.reveal_category,
                        linkable=d.policy.linkable,
                    ),
                    category=d.category,
                    updated_unix_ms=d.updated_ms,
                )
                for d in datasets
            ]
        )

    async def GetStatus(
        self, request: hub_pb2.GetStatusRequest, context: Context
    ) -> hub_pb2.HubStatus:
        """Totals, epochs in use and who the hub thinks the caller is."""
        try:
            caller = self._caller(context)
            stats = await self._store.stats()
        except Exception as exc:
            await _abort(context, exc)
        return hub_pb2.HubStatus(
            version=_VERSION,
            datasets=stats.datasets,
            tags=stats.tags,
            epochs=list(stats.epochs),
            caller=caller,
            server_time_unix_ms=int(time.time() * 1000),
        )


class AuditLogService(audit_pb2_grpc.AuditLogServicer):
    """Serves the audit log to any authenticated bureau: heads, proofs and
    every leaf hash to all; an entry in full only to the bureau that acted
    (`hub.audit.readable_by`)."""

    def __init__(
        self,
        store: AuditStore,
        signer: TreeHeadSigner,
        *,
        directory: DirectorySource | None = None,
    ) -> None:
        self._store = store
        self._signer = signer
        self._directory = directory

    async def GetTreeHead(
        self, request: audit_pb2.GetTreeHeadRequest, context: Context
    ) -> audit_pb2.SignedTreeHead:
        """The latest tree head, signed with the hub's audit key."""
        try:
            authenticate(context, self._directory)
            size, root = await self._store.audit_head()
            signed = self._signer.sign(size, root)
        except Exception as exc:
            await _abort(context, exc)
        return audit_pb2.SignedTreeHead(
            size=signed.head.size,
            root=signed.head.root,
            timestamp_ms=signed.head.timestamp_ms,
            signature=signed.signature,
        )

    async def GetEntries(
        self, request: audit_pb2.GetEntriesRequest, context: Context
    ) -> audit_pb2.GetEntriesResponse:
        """Entries [start, end), at most 1,000; full only where the caller acted."""
        try:
            caller = authenticate(context, self._directory)
            entries = await self._store.audit_entries(request.start, request.end)
        except Exception as exc:
            await _abort(context, exc)
        return audit_pb2.GetEntriesResponse(
            entries=[e if audit.readable_by(e, caller) else b"" for e in entries],
            leaf_hashes=[leaf_hash(e) for e in entries],
        )

    async def GetInclusionProof(
        self, request: audit_pb2.GetInclusionProofRequest, context: Context
    ) -> audit_pb2.AuditProof:
        """RFC 9162 §2.1.3 inclusion proof."""
        try:
            authenticate(context, self._directory)
            hashes = await self._store.audit_inclusion_proof(request.leaf_index, request.tree_size)
        except Exception as exc:
            await _abort(context, exc)
        return audit_pb2.AuditProof(hashes=hashes)

    async def GetConsistencyProof(
        self, request: audit_pb2.GetConsistencyProofRequest, context: Context
    ) -> audit_pb2.AuditProof:
        """RFC 9162 §2.1.4 consistency proof."""
        try:
            authenticate(context, self._directory)
            hashes = await self._store.audit_consistency_proof(request.old_size, request.new_size)
        except Exception as exc:
            await _abort(context, exc)
        return audit_pb2.AuditProof(hashes=hashes)


_CASE_STATUS: dict[disclosure.Status, disclosure_pb2.DisclosureStatus.ValueType] = {
    disclosure.Status.PENDING: disclosure_pb2.DISCLOSURE_STATUS_PENDING,
    disclosure.Status.APPROVED: disclosure_pb2.DISCLOSURE_STATUS_APPROVED,
    disclosure.Status.DENIED: disclosure_pb2.DISCLOSURE_STATUS_DENIED,
    disclosure.Status.EXPIRED: disclosure_pb2.DISCLOSURE_STATUS_EXPIRED,
}


def _request_id(value: bytes) -> bytes:
    if len(value) != ID_LENGTH:
        raise InvalidInputError(
            f"must be exactly {ID_LENGTH} bytes, got {len(value)}", field="request_id"
        )
    return bytes(value)


class DisclosureService(disclosure_pb2_grpc.DisclosureServicer):
    """Routes disclosure requests and decisions (`hub.disclosure`)."""

    def __init__(
        self,
        store: DisclosureStore,
        *,
        directory: DirectorySource | None = None,
        max_lifetime_days: int = 90,
    ) -> None:
        self._store = store
        self._directory = directory
        self._max_lifetime_ms = max_lifetime_days * disclosure.DAY_MS

    def _signing_key(self, code: str) -> bytes | None:
        """`code`'s Ed25519 key from the directory; None without a directory."""
        if self._directory is None:
            return None
        return self._directory().bureau(code).signing_key

    @staticmethod
    def _case(shown: disclosure.CaseView) -> disclosure_pb2.DisclosureCase:
        message = disclosure_pb2.DisclosureCase(
            sequence=shown.sequence,
            request_id=shown.request_id,
            request=shown.request,
            request_signature=shown.request_signature,
            requester=shown.requester,
            dataset=shown.dataset,
            handle=shown.handle,
            status=_CASE_STATUS[shown.status],
            record_removed=shown.record_removed,
            decision=shown.decision,
            decision_signature=shown.decision_signature,
            sealed=shown.sealed,
            denial_reason=shown.denial_reason,
            created_unix_ms=shown.created_ms,
            expires_unix_ms=shown.expires_ms,
            audit_index=shown.audit_index,
        )
        if shown.owner is not None:  # proto3 optional: unset means "not revealed"
            message.owner = shown.owner
        if shown.key_type is not None:
            message.key_type = KEY_TYPE_CODES[shown.key_type]  # type: ignore[assignment]
        return message

    async def Request(
        self, request: disclosure_pb2.SignedDisclosureRequest, context: Context
    ) -> disclosure_pb2.DisclosureTicket:
        """Check, store and route a signed request to the match's owner."""
        try:
            requester = authenticate(context, self._directory)
            decoded = DisclosureRequest.decode(request.request)
            disclosure.check_request(
                decoded, requester, now_ms=_now_ms(), max_lifetime_ms=self._max_lifetime_ms
            )
            key = self._signing_key(requester)
            if key is not None:
                verify_request(key, decoded, request.signature)
            ticket = await self._store.request_disclosure(
                requester, decoded, bytes(request.signature)
            )
        except Exception as exc:
            await _abort(context, exc)
        return disclosure_pb2.DisclosureTicket(
            request_id=ticket.request_id,
            expires_unix_ms=ticket.expires_ms,
            audit_index=ticket.audit_index,
            record_removed=ticket.record_removed,
        )

    async def List(
        self, request: disclosure_pb2.ListDisclosuresRequest, context: Context
    ) -> AsyncIterator[disclosure_pb2.DisclosureCase]:
        """Cases that changed after `after_sequence`; with `follow`, changes as they commit."""
        try:
            caller = authenticate(context, self._directory)
            try:
                direction = disclosure.Direction(request.direction)
            except ValueError:
                raise InvalidInputError(
                    f"{request.direction} is not a direction (0 both, 1 incoming, 2 outgoing)",
                    field="direction",
                ) from None
            after = request.after_sequence
        except Exception as exc:
            await _abort(context, exc)
        while True:
            try:
                page = await self._store.list_disclosures(caller, direction, after, _CASE_PAGE)
            except Exception as exc:
                await _abort(context, exc)
            for case in page.cases:
                yield self._case(disclosure.view(case, caller))
            after = page.resume_after
            if len(page.cases) == _CASE_PAGE:
                continue
            if not request.follow or not await self._store.wait_for_disclosures(caller, after):
                return

    async def Get(
        self, request: disclosure_pb2.GetDisclosureRequest, context: Context
    ) -> disclosure_pb2.DisclosureCase:
        """One case, as the caller may see it."""
        try:
            caller = authenticate(context, self._directory)
            case = await self._store.disclosure_case(caller, _request_id(request.request_id))
        except Exception as exc:
            await _abort(context, exc)
        return self._case(disclosure.view(case, caller))

    async def Decide(
        self, request: disclosure_pb2.SignedDecision, context: Context
    ) -> disclosure_pb2.DecisionReceipt:
        """Check and store the owner's signed decision (and sealed record)."""
        try:
            owner = authenticate(context, self._directory)
            decision = DisclosureDecision.decode(request.decision)
            sealed = bytes(request.sealed)
            case = await self._store.disclosure_case(owner, decision.request_id)
            disclosure.check_decision(case, owner, decision, sealed)
            key = self._signing_key(owner)
            if key is not None:
                verify_decision(
                    key,
                    decision,
                    request.signature,
                    request=DisclosureRequest.decode(case.request),
                    sealed=sealed or None,
                )
            receipt = await self._store.decide_disclosure(
                owner, decision, bytes(request.signature), sealed
            )
        except Exception as exc:
            await _abort(context, exc)
        return disclosure_pb2.DecisionReceipt(
            request_id=receipt.request_id,
            status=_CASE_STATUS[receipt.status],
            audit_index=receipt.audit_index,
        )
