"""The agent's local API (Unix socket): enrollment, query, bulk match, notices.

The servicer is a thin shell: files are read by `ingest`, identifiers become
match keys in `psi.identifiers`, tags come from `ThresholdTagger`, and the
hub is reached through its generated stub.  Data flows one way:
file -> normalize -> blind -> evaluate -> finalize -> hub.

Deadlines of the calls to the hub:
* unary calls: `rpc_timeout`;
* the Enroll and BulkMatch streams have no overall deadline (a file may hold
  millions of records) but an inactivity one: each message must be accepted,
  and each bulk batch answered, within `rpc_timeout`; the hub's final answer
  to an enrollment (its commit) within `COMMIT_TIMEOUT_FACTOR * rpc_timeout`;
* listings of notices and disclosure cases: `rpc_timeout` without --follow;
  with --follow none, as waiting for the next item is the point: a dead
  connection is noticed by HTTP/2 keepalive, and the stream reconnects.

Follow streams survive a hub restart (or a move: the address is re-read from
the directory on each attempt): on UNAVAILABLE, or when the hub ends the
stream because it shuts down, the agent reconnects with exponential backoff
and resumes after the last sequence it delivered, so no notice or case is
lost or repeated.  Hub reads are retried the same way (`bureau_agent.retry`);
enrollments, updates, queries and disclosure decisions are not.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from blindmatch.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
    custodian_pb2,
    custodian_pb2_grpc,
    hub_pb2,
    hub_pb2_grpc,
)
from bureau_agent import ingest, pki, retry, rpc
from bureau_agent.audit_check import AuditChecker
from bureau_agent.config import AgentConfig
from bureau_agent.disclosure_desk import DisclosureDesk
from bureau_agent.keytypes import key_type_to_proto
from bureau_agent.metrics import AgentMetrics
from bureau_agent.records import EnrollmentWriter, RecordStore
from bureau_agent.tagging import CustodiansUnavailable, ThresholdTagger
from psi import audit
from psi.errors import BlindmatchError, InvalidInputError, PeerError
from psi.identifiers import InvalidRecordError, MatchKey, Record, match_keys
from psi.sequence_ids import ID_LENGTH  # a match id: one AES block of its number

__all__ = ["AgentService", "bulk_answer_matches"]

log = logging.getLogger("blindmatch.agent")

IN_FLIGHT = 4  # OPRF batches tagged concurrently per enrollment (keeps both cores busy)
COMMIT_TIMEOUT_FACTOR = 10  # the hub's commit of a large version takes longer than one message
# A follow stream reconnects after these (and after the hub ends it to shut down).
_RECONNECT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})

T = TypeVar("T")
_BYTE = [bytes([i]) for i in range(256)]


@dataclass
class _Batch:
    """One OPRF batch of keys read from a file, with where each key came from."""

    keys: list[MatchKey]
    handles: list[bytes]
    rows: list[tuple[str, int]]  # (record_id, line) per key
    rejections: list[ingest.Rejection]
    rows_read: int
    bytes_read: int


class AgentService(agent_pb2_grpc.AgentServicer):
    """The local API of one bureau's agent."""

    def __init__(
        self,
        config: AgentConfig,
        directory: pki.DirectoryCache,
        tagger: ThresholdTagger,
        store: RecordStore,
        *,
        metrics: AgentMetrics | None = None,
        backoff: retry.Backoff = retry.DEFAULT_BACKOFF,
    ) -> None:
        self._config = config
        self._metrics = metrics or AgentMetrics()
        self._backoff = backoff
        self._directory = directory
        self._tagger = tagger
        self._store = store
        self._store_lock = asyncio.Lock()
        self._hub_channel: grpc.aio.Channel | None = None
        self._hub_address = ""
        self._background: set[asyncio.Future[Any]] = set()
        self.audit = AuditChecker(
            config.bureau,
            store,
            directory,
            self.hub_channel,
            config.tls,
            timeout=config.rpc_timeout,
        )
        self._desk: DisclosureDesk | None = None

    def attach_desk(self, desk: DisclosureDesk) -> None:
        """Give the service its disclosure desk (made by the daemon with the keys)."""
        self._desk = desk

    @property
    def desk(self) -> DisclosureDesk:
        if self._desk is None:
            raise rpc.RpcAbort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this agent has no signing and HPKE keys configured for disclosure",
            )
        return self._desk

    # -- plumbing ---------------------------------------------------------

    def hub_channel(self) -> grpc.aio.Channel:
        """The (lazily opened) mutual-TLS channel to the hub."""
        self._hub()
        assert self._hub_channel is not None  # noqa: S101 - set by _hub()
        return self._hub_channel

    def _audit_event(self, index: int, kind: audit.EntryKind, **expected: object) -> None:
        """Remember an own audited event, then check the log head in the background."""
        self.audit.record_event(index, kind, **expected)
        task = asyncio.create_task(self.audit.on_contact())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _hub(self) -> hub_pb2_grpc.HubAsyncStub:
        address = self._config.hub or self._directory.get().hub_address
        if not address:
            raise rpc.RpcAbort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "no hub address: set `hub` in the agent configuration or in the directory",
            )
        if self._hub_channel is None or address != self._hub_address:
            # A new address in the directory (the hub moved or restarted elsewhere).
            if self._hub_channel is not None:
                task = asyncio.ensure_future(self._hub_channel.close())
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            self._hub_channel = grpc.aio.secure_channel(
                address,
                self._config.tls.channel_credentials(),
                options=[*rpc.CHANNEL_OPTIONS, *retry.RECONNECT_OPTIONS],
            )
            self._hub_address = address
        return hub_pb2_grpc.HubStub(self._hub_channel)

    async def close(self) -> None:
        if self._hub_channel is not None:
            await self._hub_channel.close()
        await self._tagger.close()

    @property
    def _timeout(self) -> float:
        return self._config.rpc_timeout

    async def _within(self, seconds: float, what: str, work: Awaitable[T]) -> T:
        """`work`, or DEADLINE_EXCEEDED naming `what` after `seconds` without an answer."""
        try:
            async with asyncio.timeout(seconds):
                return await work
        except TimeoutError:
            raise rpc.RpcAbort(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"hub: {what} within {seconds:g} s"
            ) from None

    async def _resumable(
        self, open_stream: Callable[[int], Any], after: int, follow: bool, what: str
    ) -> AsyncIterator[Any]:
        """Items (with a `sequence`) of a hub stream opened by `open_stream(after)`.
        Without `follow`, one pass.  With `follow`, reconnect with backoff
        whenever the stream breaks or the hub ends it, after the last sequence
        delivered, until the caller goes away."""
        delays: Iterator[float] | None = None
        while True:
            opened = time.monotonic()
            try:
                async for item in open_stream(after):
                    if item.sequence <= after:
                        continue  # delivered before a reconnect
                    after = item.sequence
                    delays = None
                    yield item
                if not follow:
                    return
                reason = "the hub ended the stream"
            except grpc.aio.AioRpcError as exc:
                if not follow or exc.code() not in _RECONNECT:
                    raise
                reason = f"{exc.code().name}: {exc.details()}"
            if delays is None or time.monotonic() - opened > self._backoff.maximum:
                delays = self._backoff.delays()
            delay = next(delays)
            log.warning(
                "hub stream interrupted; resuming",
                extra={
                    "stream": what,
                    "after_sequence": after,
                    "reason": reason,
                    "retry_in_s": round(delay, 3),
                },
            )
            await asyncio.sleep(delay)

    async def _guard(
        self, context: grpc.aio.ServicerContext[Any, Any], work: Awaitable[Any]
    ) -> Any:
        try:
            return await work
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), f"hub: {exc.details()}")
        except CustodiansUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except (BlindmatchError, OSError) as exc:
            await rpc.abort_for(
                context, exc if isinstance(exc, BlindmatchError) else InvalidInputError(str(exc))
            )

    # -- enrollment -------------------------------------------------------

    async def Enroll(
        self, request: agent_pb2.LocalEnrollRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[agent_pb2.LocalEnrollEvent]:
        try:
            schema = ingest.Schema.load(request.schema_path)
            if not request.dataset:
                raise InvalidInputError("a dataset name is required", field="dataset")
            if request.strict:
                rejections = await asyncio.to_thread(_all_rejections, request.path, schema)
                if rejections:
                    for r in rejections[:1000]:
                        yield agent_pb2.LocalEnrollEvent(rejection=_rejection(r))
                    raise rpc.RpcAbort(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"--strict: {len(rejections)} rejected field(s) in {request.path}; "
                        "nothing was sent",
                    )
            async with self._store_lock:
                async for event in self._enroll(request, schema):
                    yield event
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), f"hub: {exc.details()}")
        except CustodiansUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except BlindmatchError as exc:
            await rpc.abort_for(context, exc)

    async def _send(self, call: Any, message: Any) -> None:
        await self._within(
            self._timeout, "did not accept the next message of the stream", _write(call, message)
        )

    async def _enroll(
        self, request: agent_pb2.LocalEnrollRequest, schema: ingest.Schema
    ) -> AsyncIterator[agent_pb2.LocalEnrollEvent]:
        started = time.monotonic()
        epoch = self._tagger.epoch.epoch
        policy = {
            "reveal_owner": request.policy.reveal_owner,
            "reveal_category": request.policy.reveal_category,
            "linkable": request.policy.linkable,
        }
        total_bytes = os.path.getsize(request.path) if os.path.exists(request.path) else 0
        summary = ingest.Summary(file=request.path)
        digest = hashlib.sha256()
        tag_count = 0
        hub = self._hub()
        call = hub.Enroll(timeout=None)  # no overall deadline: see the module's notes
        await self._send(
            call,
            hub_pb2.EnrollRequest(
                header=hub_pb2.EnrollHeader(
                    dataset=request.dataset,
                    epoch=epoch,
                    policy=request.policy,
                    category=request.category,
                    replace=request.replace,
                )
            ),
        )
        with self._store.enrollment(
            request.dataset, epoch=epoch, category=request.category, policy=policy
        ) as writer:
            batches = _read_batches(request.path, schema, writer, summary, self._config.batch_size)
            try:
                async for batch, by_epoch in self._tagged(batches, [epoch]):
                    tags = by_epoch[epoch]
                    types = [key_type_to_proto(k.type) for k in batch.keys]
                    digest.update(
                        b"".join(
                            t + h + _BYTE[kt]
                            for t, h, kt in zip(tags, batch.handles, types, strict=True)
                        )
                    )
                    tag_count += len(tags)
                    if tags:
                        columns = common_pb2.TaggedKeyColumns(
                            tags=b"".join(tags), handles=b"".join(batch.handles), key_types=types
                        )
                        await self._send(
                            call, hub_pb2.EnrollRequest(batch=hub_pb2.TagBatch(columns=columns))
                        )
                    for r in batch.rejections:
                        yield agent_pb2.LocalEnrollEvent(rejection=_rejection(r))
                    yield agent_pb2.LocalEnrollEvent(
                        progress=agent_pb2.Progress(
                            rows=summary.rows,
                            keys=summary.keys,
                            tags=tag_count,
                            bytes_read=batch.bytes_read,
                            bytes_total=total_bytes,
                        )
                    )
                await self._send(
                    call,
                    hub_pb2.EnrollRequest(
                        trailer=hub_pb2.EnrollTrailer(tag_count=tag_count, digest=digest.digest())
                    ),
                )
                await call.done_writing()
                commit_timeout = COMMIT_TIMEOUT_FACTOR * self._timeout
                response: hub_pb2.EnrollResponse = await self._within(
                    commit_timeout,
                    "did not acknowledge the enrollment (it may still commit: check "
                    "`blindmatch datasets` before enrolling again with --replace)",
                    _response(call),
                )
            except BaseException:
                call.cancel()
                raise
            await asyncio.to_thread(writer.commit, response.version)
            self._metrics.enrolled_tags.inc(response.tag_count)
            self._audit_event(
                response.audit_index,
                audit.EntryKind.ENROLLMENT,
                bureau=self._config.bureau,
                dataset=request.dataset,
                version=response.version,
                digest=digest.digest(),
            )
        yield agent_pb2.LocalEnrollEvent(
            summary=agent_pb2.EnrollSummary(
                dataset=request.dataset,
                version=response.version,
                rows=summary.rows,
                accepted=summary.accepted,
                rejected=summary.rejected,
                keys=summary.keys,
                keys_by_type={t.value: n for t, n in summary.keys_by_type.items()},
                seconds=time.monotonic() - started,
                new_notices=response.new_notices,
            )
        )

    async def _tagged(
        self, batches: Iterator[_Batch], epochs: Sequence[int]
    ) -> AsyncIterator[tuple[_Batch, dict[int, list[bytes]]]]:
        """Tag a file's batches in order under each of `epochs` (newest first),
        IN_FLIGHT batches at a time: reading the next batch (in a thread) and
        tagging (custodians, worker processes) overlap.  Pending work is cancelled
        when the consumer stops early or fails."""
        pending: list[tuple[_Batch, dict[int, asyncio.Task[list[bytes]]]]] = []
        exhausted = False
        try:
            while pending or not exhausted:
                while not exhausted and len(pending) < IN_FLIGHT:
                    batch = await asyncio.to_thread(next, batches, None)
                    if batch is None:
                        exhausted = True
                        break
                    inputs = [k.oprf_input for k in batch.keys]
                    tasks = {
                        e: asyncio.create_task(self._tag_under(inputs, e, epochs[0]))
                        for e in epochs
                    }
                    pending.append((batch, tasks))
                if pending:
                    batch, tasks = pending.pop(0)
                    yield batch, await _all(tasks)
        finally:
            for _, tasks in pending:
                _settle(tasks)

    async def _tag_under(self, inputs: list[bytes], epoch: int, newest: int) -> list[bytes]:
        """Tags under `epoch`.  A query never skips an epoch whose
        datasets it should search (a silent "no hit" would mislead): when the
        custodians no longer serve an older epoch, it fails and says why."""
        try:
            return await self._tagger.tag(inputs, epoch)
        except CustodiansUnavailable as exc:
            if epoch == newest:
                raise
            raise CustodiansUnavailable(
                f"the hub still holds datasets enrolled under key epoch {epoch}, which "
                f"cannot be searched: {exc}.  Their owners must re-enroll them (they then "
                f"move to epoch {newest}), or the custodians must keep serving epoch {epoch} "
                "until then"
            ) from None

    async def _query_epochs(self) -> list[int]:
        """The key epochs a query must be evaluated under, newest first: the
        directory's current epoch (new enrollments go there), then every older
        epoch of the directory under which the hub still holds live datasets
        (during a key transition, datasets not yet re-enrolled).  The hub
        matches tags only within an epoch, so each epoch's tags go to it
        separately."""
        newest = self._tagger.epoch.epoch
        known = set(self._tagger.known_epochs())
        if known <= {newest}:
            return [newest]  # one key epoch in the federation: no need to ask the hub
        # Not retried: it is part of a query, and queries are not.
        status: hub_pb2.HubStatus = await self._hub().GetStatus(
            hub_pb2.GetStatusRequest(), timeout=self._timeout
        )
        unknown = sorted(set(status.epochs) - known)
        if unknown:
            log.warning(
                "the hub holds datasets of epochs the directory does not list",
                extra={"epochs": ",".join(map(str, unknown))},
            )
        older = sorted((e for e in set(status.epochs) & known if e < newest), reverse=True)
        return [newest, *older]

    # -- removal ----------------------------------------------------------

    async def Remove(
        self, request: agent_pb2.LocalRemoveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.LocalRemoveResponse:
        result: agent_pb2.LocalRemoveResponse = await self._guard(context, self._remove(request))
        return result

    async def _remove(self, request: agent_pb2.LocalRemoveRequest) -> agent_pb2.LocalRemoveResponse:
        async with self._store_lock:
            local = self._store.dataset(request.dataset)
            if local is None:
                raise rpc.RpcAbort(
                    grpc.StatusCode.NOT_FOUND, f"this agent has no dataset {request.dataset!r}"
                )
            unknown: list[str] = []
            handles: list[bytes] = []
            for text in request.handles:
                try:
                    raw = bytes.fromhex(text)
                except ValueError:
                    raise InvalidInputError(
                        f"{text!r} is not a hex handle", field="handles"
                    ) from None
                if self._store.known_handles(request.dataset, [raw]):
                    handles.append(raw)
                else:
                    unknown.append(text)
            by_record = self._store.handles_for(request.dataset, request.record_ids)
            unknown.extend(r for r in request.record_ids if r not in by_record)
            for record_handles in by_record.values():
                handles.extend(record_handles)
            if not handles:
                return agent_pb2.LocalRemoveResponse(
                    removed_keys=0, version=local.hub_version, unknown=unknown
                )
            reply: hub_pb2.UpdateDatasetResponse = await self._hub().UpdateDataset(
                hub_pb2.UpdateDatasetRequest(
                    dataset=request.dataset, epoch=local.epoch, remove_handles=handles
                ),
                timeout=self._timeout,
            )
            self._store.mark_removed(handles, reply.version, request.dataset)
            self._audit_event(
                reply.audit_index,
                audit.EntryKind.REMOVAL,
                bureau=self._config.bureau,
                dataset=request.dataset,
                version=reply.version,
            )
            return agent_pb2.LocalRemoveResponse(
                removed_keys=len(handles), version=reply.version, unknown=unknown
            )

    # -- query ------------------------------------------------------------

    async def Query(
        self, request: agent_pb2.LocalQueryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.LocalQueryResponse:
        result: agent_pb2.LocalQueryResponse = await self._guard(context, self._query(request))
        return result

    async def _query(self, request: agent_pb2.LocalQueryRequest) -> agent_pb2.LocalQueryResponse:
        ids = request.identifiers
        record = Record(
            record_id="query",
            **{f: (getattr(ids, f) or None) for f in ingest.FIELDS},
        )
        try:
            keys = match_keys(record, phone_region=self._config.phone_region or None)
        except InvalidRecordError as exc:
            raise InvalidInputError(str(exc)) from None
        inputs = [k.oprf_input for k in keys]
        newest = self._tagger.epoch.epoch
        # The newest epoch is always queried: tag under it while the hub says
        # which older epochs are still in use.
        tagging = {newest: asyncio.ensure_future(self._tag_under(inputs, newest, newest))}
        try:
            for epoch in await self._query_epochs():
                if epoch not in tagging:
                    tagging[epoch] = asyncio.ensure_future(self._tag_under(inputs, epoch, newest))
        except BaseException:
            _settle(tagging)
            raise
        tags_by_epoch = await _all(tagging)

        async def ask(epoch: int, tags: list[bytes]) -> hub_pb2.QueryResponse:
            reply: hub_pb2.QueryResponse = await self._hub().Query(
                hub_pb2.QueryRequest(
                    epoch=epoch,
                    tags=[
                        common_pb2.QueryTag(tag=t, key_type=key_type_to_proto(k.type))
                        for t, k in zip(tags, keys, strict=True)
                    ],
                    include_own=request.include_own,
                ),
                timeout=self._timeout,
            )
            self._metrics.queried_tags.inc(len(tags))
            self._audit_event(
                reply.audit_index,
                audit.EntryKind.QUERY,
                requester=self._config.bureau,
                tags=len(tags),
            )
            return reply

        replies = await asyncio.gather(*(ask(e, t) for e, t in tags_by_epoch.items()))
        return agent_pb2.LocalQueryResponse(
            matches=[m for reply in replies for m in reply.matches],
            keys_queried=[k.type.value for k in keys],
        )

    # -- bulk match -------------------------------------------------------

    async def MatchFile(
        self, request: agent_pb2.LocalMatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[agent_pb2.LocalMatchEvent]:
        try:
            schema = ingest.Schema.load(request.schema_path)
            async for event in self._match_file(request, schema):
                yield event
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), f"hub: {exc.details()}")
        except CustodiansUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except BlindmatchError as exc:
            await rpc.abort_for(context, exc)

    async def _match_file(
        self, request: agent_pb2.LocalMatchRequest, schema: ingest.Schema
    ) -> AsyncIterator[agent_pb2.LocalMatchEvent]:
        started = time.monotonic()
        epochs = await self._query_epochs()
        total_bytes = os.path.getsize(request.path) if os.path.exists(request.path) else 0
        summary = ingest.Summary(file=request.path)
        batches = _read_batches(request.path, schema, None, summary, self._config.batch_size)
        call = self._hub().BulkMatch(timeout=None)  # no overall deadline: see the module's notes
        batch_id = 0
        try:
            async for batch, by_epoch in self._tagged(batches, epochs):
                for r in batch.rejections:
                    yield agent_pb2.LocalMatchEvent(rejection=_rejection(r))
                for epoch, tags in by_epoch.items():
                    if not tags:
                        continue
                    batch_id += 1
                    self._metrics.queried_tags.inc(len(tags))
                    await self._send(
                        call,
                        hub_pb2.BulkMatchRequest(
                            batch_id=batch_id,
                            epoch=epoch,
                            columns=common_pb2.QueryTagColumns(
                                tags=b"".join(tags),
                                key_types=[key_type_to_proto(k.type) for k in batch.keys],
                            ),
                            include_own=request.include_own,
                            answer_in_columns=True,
                        ),
                    )
                    answer = await self._within(
                        self._timeout, f"did not answer bulk batch {batch_id}", call.read()
                    )
                    if not isinstance(answer, hub_pb2.BulkMatchResponse) or (
                        answer.batch_id != batch_id
                    ):
                        raise PeerError("hub answered bulk batches out of order")
                    self._audit_event(
                        answer.audit_index,
                        audit.EntryKind.QUERY,
                        requester=self._config.bureau,
                        tags=len(tags),
                    )
                    for match in bulk_answer_matches(answer, len(tags)):
                        record_id, line = batch.rows[match.query_index]
                        yield agent_pb2.LocalMatchEvent(
                            hit=agent_pb2.FileHit(record_id=record_id, line=line, match=match)
                        )
                yield agent_pb2.LocalMatchEvent(
                    progress=agent_pb2.Progress(
                        rows=summary.rows,
                        keys=summary.keys,
                        tags=summary.keys,
                        bytes_read=batch.bytes_read,
                        bytes_total=total_bytes,
                    )
                )
            await call.done_writing()
        except BaseException:
            call.cancel()
            raise
        yield agent_pb2.LocalMatchEvent(
            summary=agent_pb2.EnrollSummary(
                rows=summary.rows,
                accepted=summary.accepted,
                rejected=summary.rejected,
                keys=summary.keys,
                keys_by_type={t.value: n for t, n in summary.keys_by_type.items()},
                seconds=time.monotonic() - started,
            )
        )

    # -- notices, datasets, status ---------------------------------------

    async def Hits(
        self, request: agent_pb2.LocalHitsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[common_pb2.Notice]:
        cursor = 0 if request.all else int(self._store.get_state("notice_cursor", "0"))

        def open_stream(after: int) -> Any:
            return self._hub().WatchNotices(
                hub_pb2.WatchNoticesRequest(after_sequence=after, follow=request.follow),
                timeout=None if request.follow else self._timeout,
            )

        try:
            async for notice in self._resumable(open_stream, cursor, request.follow, "notices"):
                yield notice
                if notice.sequence > int(self._store.get_state("notice_cursor", "0")):
                    self._store.set_state("notice_cursor", str(notice.sequence))
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), f"hub: {exc.details()}")
        except BlindmatchError as exc:
            await rpc.abort_for(context, exc)

    async def ListDatasets(
        self,
        request: agent_pb2.LocalListDatasetsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> agent_pb2.LocalListDatasetsResponse:
        reply: hub_pb2.ListDatasetsResponse = await self._guard(
            context,
            retry.call_idempotent(
                lambda: self._hub().ListDatasets(
                    hub_pb2.ListDatasetsRequest(), timeout=self._timeout
                ),
                what="ListDatasets",
                backoff=self._backoff,
            ),
        )
        return agent_pb2.LocalListDatasetsResponse(datasets=list(reply.datasets))

    async def GetStatus(
        self, request: agent_pb2.LocalStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.AgentStatus:
        directory = self._directory.get()
        status = agent_pb2.AgentStatus(bureau=self._config.bureau)
        entry = directory.current_epoch
        if entry is not None:
            status.epoch = entry.epoch
            status.share_index = entry.custodians.get(self._config.bureau, 0)
            status.custodian = self._config.custodian is not None
        status.hub = self._config.hub or directory.hub_address
        try:
            await self._hub().GetStatus(hub_pb2.GetStatusRequest(), timeout=min(5.0, self._timeout))
            status.hub_reachable = True
        except (grpc.aio.AioRpcError, rpc.RpcAbort):
            status.hub_reachable = False
        if entry is not None:
            credentials = self._config.tls.channel_credentials()
            for code, index in sorted(entry.custodians.items(), key=lambda kv: kv[1]):
                address = directory.bureaus[code].address if code in directory.bureaus else ""
                item = agent_pb2.CustodianStatus(bureau=code, share_index=index, address=address)
                if address:
                    async with grpc.aio.secure_channel(address, credentials) as channel:
                        try:
                            info = await custodian_pb2_grpc.CustodianStub(channel).GetKeyInfo(
                                custodian_pb2.GetKeyInfoRequest(epoch=entry.epoch), timeout=5.0
                            )
                            item.reachable = info.share_index == index
                            if not item.reachable:
                                item.error = (
                                    f"serves share {info.share_index}, directory says {index}"
                                )
                        except grpc.aio.AioRpcError as exc:
                            item.error = f"{exc.code().name}: {exc.details()}"
                else:
                    item.error = "no address in the directory"
                status.custodians.append(item)
        return status

    # -- disclosure ---------------------------------------------------------

    async def RequestDisclosure(
        self, request: agent_pb2.LocalDisclosureRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.LocalDisclosure:
        async def work() -> agent_pb2.LocalDisclosure:
            shown, ticket, signed = await self.desk.request(
                request.match_id, request.purpose, request.legal_basis, request.ttl_days
            )
            self._audit_event(
                ticket.audit_index,
                audit.EntryKind.DISCLOSURE_REQUEST,
                request_id=signed.request_id,
                requester=self._config.bureau,
                request_digest=signed.digest(),
            )
            return shown

        result: agent_pb2.LocalDisclosure = await self._guard(context, work())
        return result

    async def ListDisclosures(
        self,
        request: agent_pb2.LocalListDisclosuresRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[agent_pb2.LocalDisclosure]:
        try:
            desk = self.desk

            def open_stream(after: int) -> Any:
                return desk.list_stream(
                    request.incoming, request.outgoing, request.follow, after_sequence=after
                )

            async for case in self._resumable(open_stream, 0, request.follow, "disclosures"):
                yield desk.describe(case)
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), f"hub: {exc.details()}")
        except BlindmatchError as exc:
            await rpc.abort_for(context, exc)

    async def ShowDisclosure(
        self,
        request: agent_pb2.LocalShowDisclosureRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> agent_pb2.LocalDisclosure:
        async def work() -> agent_pb2.LocalDisclosure:
            desk = self.desk
            case = await retry.call_idempotent(
                lambda: desk.get(request.request_id), what="disclosure Get", backoff=self._backoff
            )
            return desk.describe(case)

        result: agent_pb2.LocalDisclosure = await self._guard(context, work())
        return result

    async def ApproveDisclosure(
        self, request: agent_pb2.LocalApproveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.LocalDisclosure:
        async def work() -> agent_pb2.LocalDisclosure:
            receipt, decision = await self.desk.approve(request.request_id, list(request.fields))
            self._decided(receipt.audit_index, decision)
            return self.desk.describe(await self.desk.get(request.request_id))

        result: agent_pb2.LocalDisclosure = await self._guard(context, work())
        return result

    async def DenyDisclosure(
        self, request: agent_pb2.LocalDenyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.LocalDisclosure:
        async def work() -> agent_pb2.LocalDisclosure:
            receipt, decision = await self.desk.deny(request.request_id, request.reason)
            self._decided(receipt.audit_index, decision)
            return self.desk.describe(await self.desk.get(request.request_id))

        result: agent_pb2.LocalDisclosure = await self._guard(context, work())
        return result

    def _decided(self, index: int, decision: Any) -> None:
        self._audit_event(
            index,
            audit.EntryKind.DISCLOSURE_DECISION,
            request_id=decision.request_id,
            owner=self._config.bureau,
            outcome=decision.outcome.value,
            decision_digest=hashlib.sha256(decision.encode()).digest(),
        )

    # -- audit --------------------------------------------------------------

    async def VerifyAudit(
        self,
        request: agent_pb2.LocalVerifyAuditRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> agent_pb2.AuditReport:
        result = await self._guard(context, self.audit.verify())
        report = agent_pb2.AuditReport(
            ok=result.ok,
            previous_size=result.previous_size,
            consistent_with_previous=result.consistent_with_previous,
            own_events=result.own_events,
            own_events_verified=result.own_events_verified,
            problems=result.problems,
            witnesses=result.witnesses,
        )
        if result.head is not None:
            report.tree_size = result.head.head.size
            report.root = result.head.head.root
            report.head_timestamp_ms = result.head.head.timestamp_ms
        return report


async def _all(tasks: Mapping[int, asyncio.Future[T]]) -> dict[int, T]:
    """The result of every task, by key; on the first failure the others are
    cancelled and that failure is raised."""
    try:
        return {key: await task for key, task in tasks.items()}
    finally:
        _settle(tasks)


def bulk_answer_matches(
    answer: hub_pb2.BulkMatchResponse, batch_size: int
) -> list[common_pb2.Match]:
    """The matches of a bulk batch's answer, from `match_columns` or
    `matches` (whichever the hub set), each checked to name a tag of the
    batch; a malformed answer raises `PeerError` naming the batch and field."""
    batch = answer.batch_id
    if not answer.HasField("match_columns"):
        for i, match in enumerate(answer.matches):
            if match.query_index >= batch_size:
                raise PeerError(
                    f"hub answered batch {batch} with matches[{i}].query_index "
                    f"{match.query_index} for {batch_size} tags"
                )
        return list(answer.matches)
    columns = answer.match_columns
    count = len(columns.query_indices)
    if len(columns.match_ids) != ID_LENGTH * count or len(columns.kind_of) != count:
        raise PeerError(
            f"hub answered batch {batch} with match_columns of {count} query indices, "
            f"{len(columns.match_ids)} bytes of match ids and {len(columns.kind_of)} kinds; "
            f"want {ID_LENGTH} bytes and one kind per index"
        )
    matches = []
    for i, (index, kind) in enumerate(zip(columns.query_indices, columns.kind_of, strict=True)):
        if index >= batch_size or kind >= len(columns.kinds):
            raise PeerError(
                f"hub answered batch {batch} with match_columns[{i}]: query index {index} "
                f"of {batch_size} tags, kind {kind} of {len(columns.kinds)}"
            )
        match = common_pb2.Match()
        match.CopyFrom(columns.kinds[kind])
        match.query_index = index
        match.match_id = columns.match_ids[i * ID_LENGTH : (i + 1) * ID_LENGTH].hex()
        matches.append(match)
    return matches


def _settle(tasks: Mapping[int, asyncio.Future[Any]]) -> None:
    """Cancel unfinished tasks; mark the failures of finished ones as seen."""
    for task in tasks.values():
        if not task.done():
            task.cancel()
        elif not task.cancelled():
            task.exception()


async def _write(call: Any, message: Any) -> None:
    """Write to a client stream; if the server already ended the RPC, raise its status
    (e.g. ALREADY_EXISTS right after the header) rather than a bare state error."""
    try:
        await call.write(message)
    except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
        await call  # raises AioRpcError with the server's status and message
        raise


async def _response(call: Any) -> Any:
    """The final response of a client-streaming call."""
    return await call


def _rejection(r: ingest.Rejection) -> agent_pb2.RowRejection:
    return agent_pb2.RowRejection(file=r.file, line=r.line, field=r.field, reason=r.reason)


def _all_rejections(path: str, schema: ingest.Schema) -> list[ingest.Rejection]:
    out: list[ingest.Rejection] = []
    for row in ingest.read_rows(path, schema):
        if isinstance(row, ingest.Rejected):
            out.extend(row.rejections)
    return out


def _read_batches(
    path: str,
    schema: ingest.Schema,
    writer: EnrollmentWriter | None,
    summary: ingest.Summary,
    batch_size: int,
) -> Iterator[_Batch]:
    """Group a file's keys into OPRF batches; with a writer, store records and
    assign handles as they go.  Runs in a worker thread, one batch per call."""
    position = [0]
    rows = ingest.read_rows(path, schema, on_progress=lambda n: position.__setitem__(0, n))
    batch = _Batch([], [], [], [], 0, 0)
    records: list[tuple[str, int, dict[str, str], tuple[MatchKey, ...]]] = []

    def finish(batch: _Batch) -> _Batch:
        if writer is not None and records:
            batch.handles = writer.add_records(records)
            records.clear()
        batch.rows_read, batch.bytes_read = summary.rows, position[0]
        return batch

    for row in rows:
        summary.add(row)
        if isinstance(row, ingest.Rejected):
            batch.rejections.extend(row.rejections)
            continue
        if writer is not None:
            record = row.record
            fields = {f: v for f in ingest.FIELDS if (v := getattr(record, f))}
            records.append((row.record_id, row.line, fields, row.keys))
        batch.keys.extend(row.keys)
        batch.rows.extend((row.record_id, row.line) for _ in row.keys)
        if len(batch.keys) >= batch_size:
            yield finish(batch)
            batch = _Batch([], [], [], [], 0, 0)
    if batch.keys or batch.rejections:
        yield finish(batch)
