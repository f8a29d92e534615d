"""The bureau's side of the threshold OPRF: blind once, ask t custodians in
parallel, check their answers, combine, unblind, finalize.

The check is per batch (`psi.threshold.batch_check`): the custodians answer
the batch without proofs; once all have answered, each is asked for a
proven evaluation of one secret random combination of the batch, and the
combined answers must agree with the sum of those (two multiplications per
element for the bureau however many custodians take part, one for each
custodian).  When they do not, each custodian's answers are checked against
its own proven element, which names the liar.

Failover: when a custodian is unreachable, answers with an error, or sends an
answer that fails the check, it is excluded for this batch and the batch is
re-asked of a new participant set (the Lagrange weights depend on the set,
so the remaining custodians are asked again too, with a fresh check once the
old one has been shown).  With n custodians the batch succeeds while at
least t of them are honest and reachable; otherwise `CustodiansUnavailable`
names every custodian and what went wrong with it.

A bureau that is itself a custodian of the epoch (`own_shares`) takes part
first and applies its own share in its worker pool: no call, and its part
is not checked.

Retries: Evaluate is idempotent, so when fewer than t custodians are left
and some of the excluded ones failed only transiently (UNAVAILABLE, or
RESOURCE_EXHAUSTED with a short `retry-after-ms`), they are asked again
after an exponential backoff, a few rounds at most.  A custodian whose
answer failed the check is never asked again for that batch, and a
deadline that passed is not retried (it already cost a whole deadline).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import grpc

from blindmatch.v1 import custodian_pb2, custodian_pb2_grpc
from bureau_agent import pki, retry, rpc, work
from psi import threshold
from psi.errors import BlindmatchError

__all__ = ["CustodiansUnavailable", "ThresholdTagger"]

log = logging.getLogger("blindmatch.tagging")


class CustodiansUnavailable(BlindmatchError):
    """Fewer than t custodians could evaluate a batch; the message names each failure."""


@dataclass
class _Custodian:
    """A custodian's share of one epoch, and how it has been answering."""

    code: str
    index: int
    address: str
    failures: int = 0
    last_error: str = ""
    retry_after: float = 0.0


@dataclass
class TaggingStats:
    """Counters for the summary and the status RPC."""

    batches: int = 0
    elements: int = 0
    retries: int = 0
    custodian_errors: dict[str, str] = field(default_factory=dict)


class ThresholdTagger:
    """Turns OPRF inputs into tags with the custodians of a key epoch of the directory:
    by default the current (newest) one, or the one a call names."""

    def __init__(
        self,
        directory: pki.DirectoryCache,
        tls: pki.TlsFiles,
        executor: Executor,
        *,
        rpc_timeout: float = 30.0,
        epoch: int | None = None,
        backoff: retry.Backoff = retry.DEFAULT_BACKOFF,
        retry_rounds: int = 3,
        own_shares: Mapping[int, threshold.KeyShare] | None = None,
    ) -> None:
        self._directory = directory
        self._own = dict(own_shares or {})  # epoch -> this bureau's verified share
        self._tls = tls
        self._executor = executor
        self._timeout = rpc_timeout
        self._epoch = epoch
        self._backoff = backoff
        self._retry_rounds = retry_rounds
        self._custodians: dict[tuple[int, str], _Custodian] = {}
        self._channels: dict[str, tuple[str, grpc.aio.Channel]] = {}  # code -> (address, channel)
        self._credentials: grpc.ChannelCredentials | None = None
        self._closing: set[asyncio.Future[None]] = set()
        self.stats = TaggingStats()

    @property
    def epoch(self) -> pki.EpochEntry:
        """The epoch tags are made under by default: the one given at construction,
        else the directory's current (newest) epoch."""
        return self.epoch_entry(self._epoch)

    def epoch_entry(self, epoch: int | None = None) -> pki.EpochEntry:
        """The directory's entry for `epoch` (None: the default epoch)."""
        if epoch is None:
            epoch = self._epoch
        d = self._directory.get()
        entry = d.epochs.get(epoch) if epoch is not None else d.current_epoch
        if entry is None:
            raise CustodiansUnavailable(
                "the federation directory has no key epoch"
                + (f" {epoch}" if epoch is not None else "")
                + "; run `blindmatch keys ceremony` first"
            )
        return entry

    def known_epochs(self) -> list[int]:
        """Every key epoch of the directory, oldest first."""
        return sorted(self._directory.get().epochs)

    def _refresh(self, entry: pki.EpochEntry) -> list[_Custodian]:
        d = self._directory.get()
        current: list[_Custodian] = []
        for code, index in sorted(entry.custodians.items(), key=lambda kv: kv[1]):
            address = d.bureaus[code].address if code in d.bureaus else ""
            known = self._custodians.get((entry.epoch, code))
            if known is None or known.address != address or known.index != index:
                known = _Custodian(code, index, address)
                self._custodians[(entry.epoch, code)] = known
            current.append(known)
        return current

    def _channel(self, custodian: _Custodian) -> grpc.aio.Channel:
        """One channel per custodian bureau, whatever the epoch; reopened when
        the directory gives it a new address."""
        open_ = self._channels.get(custodian.code)
        if open_ is not None and open_[0] == custodian.address:
            return open_[1]
        if open_ is not None:
            task = asyncio.ensure_future(open_[1].close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        if self._credentials is None:
            self._credentials = self._tls.channel_credentials()
        channel = grpc.aio.secure_channel(
            custodian.address,
            self._credentials,
            options=[*rpc.CHANNEL_OPTIONS, *retry.RECONNECT_OPTIONS],
        )
        self._channels[custodian.code] = (custodian.address, channel)
        return channel

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for _, channel in channels.values():
            await channel.close()

    async def _evaluate(
        self,
        custodian: _Custodian,
        epoch: int,
        participants: list[int],
        elements: list[bytes],
        proven: bool,
    ) -> work.Answer:
        own = self._own.get(epoch)
        if own is not None and own.index == custodian.index:
            evaluated, proof = await work.run_job(
                self._executor,
                len(elements),
                work.custodian_evaluate,
                own.index,
                own.value,
                participants,
                elements,
                False,
            )
            return custodian.index, evaluated, proof
        if not custodian.address:
            raise CustodiansUnavailable(f"{custodian.code} has no address in the directory")
        stub = custodian_pb2_grpc.CustodianStub(self._channel(custodian))
        reply = await stub.Evaluate(
            custodian_pb2.EvaluateRequest(
                epoch=epoch,
                participants=participants,
                blinded_elements=elements,
                unproven=not proven,
            ),
            timeout=self._timeout,
        )
        if reply.share_index != custodian.index or reply.epoch != epoch:
            raise CustodiansUnavailable(
                f"{custodian.code} answered as share {reply.share_index} of epoch {reply.epoch}"
            )
        return custodian.index, list(reply.evaluated_elements), reply.proof

    async def _ask(
        self,
        chosen: list[_Custodian],
        epoch: int,
        participants: list[int],
        elements: list[bytes],
        proven: bool,
        excluded: dict[str, str],
        transient: dict[str, float],
    ) -> list[work.Answer] | None:
        """Every chosen custodian's answer for `elements`, or None after
        noting each one that failed."""
        answers = await asyncio.gather(
            *(self._evaluate(c, epoch, participants, elements, proven) for c in chosen),
            return_exceptions=True,
        )
        ok: list[work.Answer] = []
        for custodian, answer in zip(chosen, answers, strict=True):
            if isinstance(answer, BaseException):
                self._fail(custodian, _describe(answer), excluded)
                wait = self._transient_wait(answer)
                if wait is not None:
                    transient[custodian.code] = wait
            else:
                ok.append(answer)
        return ok if len(ok) == len(chosen) else None

    def _choose(
        self, custodians: list[_Custodian], excluded: set[str], t: int, own: int | None
    ) -> list[_Custodian]:
        now = time.monotonic()
        usable = [c for c in custodians if c.code not in excluded]
        # This bureau's own share first; then custodians that have not failed
        # recently; fall back to any.
        usable.sort(key=lambda c: (c.index != own, c.retry_after > now, c.failures, c.index))
        return usable[:t]

    async def tag(self, inputs: Sequence[bytes], epoch: int | None = None) -> list[bytes]:
        """Tags for `inputs` (OPRF inputs, e.g. `MatchKey.oprf_input`), in order,
        under key epoch `epoch` (None: the default epoch, see `epoch`)."""
        if not inputs:
            return []
        entry = self.epoch_entry(epoch)
        # A query-sized batch is checked by a proof per answer: one round trip
        # instead of two, for the same work at that size.
        per_batch = len(inputs) > work.INLINE_ELEMENTS
        batch = await work.run_job(
            self._executor, len(inputs), work.blind_chunk, list(inputs), per_batch
        )
        check, shown = batch.check, False
        custodians = self._refresh(entry)
        public = _public_shares(entry)
        own_share = self._own.get(entry.epoch)
        own = None if own_share is None else own_share.index
        excluded: dict[str, str] = {}
        transient: dict[str, float] = {}  # code -> the wait it asked for (0: none)
        delays = self._backoff.delays()
        rounds = 0
        while True:
            chosen = self._choose(custodians, set(excluded), entry.threshold, own)
            if len(chosen) < entry.threshold and transient and rounds < self._retry_rounds:
                rounds += 1
                delay = max(next(delays), *transient.values())
                log.info(
                    "retrying custodians after transient errors",
                    extra={
                        "custodians": ",".join(sorted(transient)),
                        "round": rounds,
                        "retry_in_s": round(delay, 3),
                    },
                )
                await asyncio.sleep(delay)
                for code in transient:
                    excluded.pop(code, None)
                transient.clear()
                self.stats.retries += 1
                continue
            if len(chosen) < entry.threshold:
                details = "; ".join(f"{code}: {why}" for code, why in sorted(excluded.items()))
                raise CustodiansUnavailable(
                    f"only {len(chosen)} of the {entry.threshold} custodians needed for epoch "
                    f"{entry.epoch} could evaluate ({details})"
                )
            if shown:  # custodians have seen this combination: draw another
                check = await work.run_job(
                    self._executor, len(inputs), threshold.batch_check, batch.blinded
                )
                shown = False
            participants = sorted(c.index for c in chosen)
            ask = functools.partial(
                self._ask, chosen, entry.epoch, participants, excluded=excluded, transient=transient
            )
            partials = await ask(batch.blinded, proven=check is None)
            proven: list[work.Answer] | None = []
            if partials is not None and check is not None:
                # Only now, with every answer in, may the combination be shown.
                shown = True
                proven = await ask([check.composite], proven=True)
            if partials is not None and proven is not None:
                finished = await work.run_job(
                    self._executor,
                    len(inputs),
                    work.finish_batch,
                    list(inputs),
                    batch.blinds,
                    batch.blinded,
                    partials,
                    public,
                    own,
                    check,
                    proven,
                )
                if not finished.bad:
                    for custodian in chosen:
                        custodian.failures = 0
                    self.stats.batches += 1
                    self.stats.elements += len(inputs)
                    return finished.tags
                by_index = {c.index: c for c in chosen}
                for index, why in finished.bad.items():
                    self._fail(by_index[index], f"invalid answer: {why}", excluded)
            self.stats.retries += 1

    def _transient_wait(self, exc: BaseException) -> float | None:
        """How long to wait before asking again after `exc`, or None when
        asking again would not help."""
        if not isinstance(exc, grpc.aio.AioRpcError) or exc.code() not in retry.TRANSIENT:
            return None
        hinted = retry.retry_after(exc)
        if hinted is not None and hinted > self._backoff.maximum:
            return None
        return hinted or 0.0

    def _fail(self, custodian: _Custodian, why: str, excluded: dict[str, str]) -> None:
        excluded[custodian.code] = why
        custodian.failures += 1
        custodian.last_error = why
        custodian.retry_after = time.monotonic() + min(60.0, 2.0**custodian.failures)
        self.stats.custodian_errors[custodian.code] = why
        log.warning("custodian failed", extra={"custodian": custodian.code, "reason": why})


@functools.cache
def _public_shares_of(
    commitment_points: tuple[bytes, ...], indices: tuple[int, ...]
) -> dict[int, bytes]:
    commitments = threshold.FeldmanCommitments.decode(commitment_points)
    return {index: commitments.public_share(index) for index in indices}


def _public_shares(entry: pki.EpochEntry) -> dict[int, bytes]:
    return _public_shares_of(entry.commitments, tuple(sorted(entry.custodians.values())))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"
