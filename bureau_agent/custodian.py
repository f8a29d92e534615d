"""The custodian service: a thin gRPC shell around `psi.threshold.partial_evaluate`
(or `unproven_partial_evaluate` when the caller checks the batch itself).

Rules it enforces before any scalar multiplication:
* the caller is a bureau of the signed directory (identity from its certificate);
* the request's epoch is one this custodian holds a share of (0: the newest
  it holds); FAILED_PRECONDITION naming the epoch otherwise.  During a key
  transition a custodian holds the old and the new epoch's shares and
  serves both;
* the participant set contains this custodian, only indices of the epoch, no
  repeats, and at least t of them (INVALID_ARGUMENT);
* 1 to `max_batch` blinded elements, each a canonical non-identity encoding
  (INVALID_ARGUMENT naming the index);
* the caller's quota of elements (a token bucket per bureau): excess gets
  RESOURCE_EXHAUSTED with a `retry-after-ms` trailer, and is logged and
  counted (`blindmatch_custodian_quota_refusals_total`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

import grpc

from blindmatch.v1 import audit_pb2, custodian_pb2, custodian_pb2_grpc
from bureau_agent import pki, rpc, work
from bureau_agent.audit_check import AuditChecker, head_from_proto, head_to_proto
from bureau_agent.ceremony import CustodianShare
from bureau_agent.metrics import AgentMetrics
from bureau_agent.quota import TokenBuckets

__all__ = ["CustodianService"]

log = logging.getLogger("blindmatch.custodian")


class CustodianService(custodian_pb2_grpc.CustodianServicer):
    """Serves a custodian's shares, one per key epoch it holds."""

    def __init__(
        self,
        shares: Sequence[CustodianShare],
        directory: Callable[[], pki.Directory],
        executor: Executor,
        *,
        max_batch: int = 4096,
        witness: AuditChecker | None = None,
        quota: TokenBuckets | None = None,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self._quota = quota
        self._metrics = metrics
        self._witness = witness
        if not shares:
            raise ValueError("a custodian service needs at least one share")
        self._shares = {s.epoch.epoch: s for s in sorted(shares, key=lambda s: s.epoch.epoch)}
        if len(self._shares) != len(shares):
            raise ValueError("two shares of one epoch")
        self._custodian = shares[0].custodian
        self._directory = directory
        self._executor = executor
        self._max_batch = max_batch

    async def GetKeyInfo(
        self, request: custodian_pb2.GetKeyInfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> custodian_pb2.KeyInfo:
        try:
            rpc.caller_identity(context, self._directory())
            share = self._share_of(request.epoch)
        except Exception as exc:
            await rpc.abort_for(context, exc)
        return custodian_pb2.KeyInfo(
            epoch=share.epoch.epoch,
            share_index=share.share.index,
            threshold=share.epoch.threshold,
            custodians=len(share.epoch.custodians),
            public_share=share.commitments.public_share(share.share.index),
            group_public_key=share.commitments.group_public_key,
            commitments=list(share.commitments.points),
            custodian=share.custodian,
        )

    async def Evaluate(
        self, request: custodian_pb2.EvaluateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> custodian_pb2.EvaluateResponse:
        try:
            caller = rpc.caller_identity(context, self._directory())
            held = self._share_of(request.epoch)
            participants = self._check_participants(held, list(request.participants))
            blinded = self._check_blinded(list(request.blinded_elements))
        except Exception as exc:
            await rpc.abort_for(context, exc)
        if self._quota is not None:
            refused = self._quota.take(caller.code, len(blinded))
            if refused is not None:
                if self._metrics is not None:
                    self._metrics.quota_refusals.labels(caller.code).inc()
                log.warning(
                    "quota refusal",
                    extra={
                        "caller": caller.code,
                        "elements": len(blinded),
                        "operation": "evaluate",
                    },
                )
                context.set_trailing_metadata(
                    (("retry-after-ms", str(int(min(refused.retry_after, 86400) * 1000))),)
                )
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, refused.message("blinded elements")
                )
        share = held.share
        try:
            evaluated, proof = await work.run_job(
                self._executor,
                len(blinded),
                work.custodian_evaluate,
                share.index,
                share.value,
                participants,
                blinded,
                not request.unproven,
            )
        except Exception as exc:
            await rpc.abort_for(context, exc)
        if self._metrics is not None:
            self._metrics.evaluated_elements.labels(caller.code).inc(len(blinded))
        log.info(
            "evaluated batch",
            extra={
                "caller": caller.code,
                "elements": len(blinded),
                "epoch": held.epoch.epoch,
                "proven": not request.unproven,
            },
        )
        return custodian_pb2.EvaluateResponse(
            epoch=held.epoch.epoch,
            share_index=share.index,
            evaluated_elements=evaluated,
            proof=proof,
        )

    def attach_witness(self, witness: AuditChecker) -> None:
        """Serve this agent's audit checker as a gossip witness."""
        self._witness = witness

    async def ExchangeTreeHead(
        self, request: audit_pb2.SignedTreeHead, context: grpc.aio.ServicerContext[Any, Any]
    ) -> audit_pb2.SignedTreeHead:
        try:
            rpc.caller_identity(context, self._directory())
        except Exception as exc:
            await rpc.abort_for(context, exc)
        if self._witness is None:
            return audit_pb2.SignedTreeHead()
        ours = await self._witness.witness(head_from_proto(request))
        return head_to_proto(ours) if ours is not None else audit_pb2.SignedTreeHead()

    @property
    def epochs(self) -> list[int]:
        """The key epochs this custodian holds a share of, oldest first."""
        return list(self._shares)

    def _share_of(self, epoch: int) -> CustodianShare:
        """The share of `epoch` (0: the newest held)."""
        if epoch == 0:
            return self._shares[max(self._shares)]
        share = self._shares.get(epoch)
        if share is None:
            held = self.epochs
            holds = (
                f"a share of epoch {held[0]}"
                if len(held) == 1
                else f"shares of epochs {', '.join(map(str, held))}"
            )
            raise rpc.RpcAbort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"custodian {self._custodian} holds {holds}, not of epoch {epoch}",
            )
        return share

    def _check_participants(self, held: CustodianShare, participants: list[int]) -> list[int]:
        entry = held.epoch
        valid = set(entry.custodians.values())
        own = held.share.index
        if own not in participants:
            raise rpc.RpcAbort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"participants {participants} do not include this custodian's index {own}",
            )
        if len(set(participants)) != len(participants) or not set(participants) <= valid:
            raise rpc.RpcAbort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"participants {participants} must be distinct indices of epoch "
                f"{entry.epoch} ({sorted(valid)})",
            )
        if len(participants) < entry.threshold:
            raise rpc.RpcAbort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{len(participants)} participants is fewer than the threshold {entry.threshold}",
            )
        return participants

    def _check_blinded(self, blinded: list[bytes]) -> list[bytes]:
        if not 1 <= len(blinded) <= self._max_batch:
            raise rpc.RpcAbort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"blinded_elements has {len(blinded)} elements; "
                f"send between 1 and {self._max_batch}",
            )
        # Each element's encoding is checked by partial_evaluate in the worker,
        # which names the bad index; doing it here too would cost twice.
        return blinded
