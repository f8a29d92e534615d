"""Custodian servers and the threshold tagger over real gRPC with mutual TLS,
in one event loop: argument checks, failover, and a dishonest custodian."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from blindmatch.v1 import custodian_pb2, custodian_pb2_grpc
from bureau_agent import ceremony, pki
from bureau_agent.custodian import CustodianService
from bureau_agent.quota import TokenBuckets
from bureau_agent.tagging import CustodiansUnavailable, ThresholdTagger
from psi import group, oprf, tags, threshold
from psi.oprf import Mode

CODES = ["FRA", "DEU", "BRA"]


@pytest.fixture
def federation(tmp_path: Path) -> Path:
    pki.init_federation(tmp_path, "test")
    for code in [*CODES, "USA"]:
        pki.issue_bureau(tmp_path, code)
    ceremony.run_ceremony(tmp_path, epoch=1, threshold_t=2, custodians=CODES)
    return tmp_path


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


class Federation:
    """Three custodian servers on 127.0.0.1:0 and a USA tagger."""

    def __init__(self, root: Path, executor: ThreadPoolExecutor) -> None:
        self.root = root
        self.executor = executor
        self.servers: dict[str, grpc.aio.Server] = {}
        self.cache = pki.DirectoryCache(root / "directory.json", root / "ca" / "ca.crt")

    async def start(
        self,
        code: str,
        *,
        share: threshold.KeyShare | None = None,
        quota: TokenBuckets | None = None,
        epochs: tuple[int, ...] = (1,),
        service: type[CustodianService] = CustodianService,
    ) -> CustodianService:
        held = ceremony.load_shares(
            [ceremony.share_path(self.root, e, code) for e in epochs], self.cache.get(), code
        )
        loaded = list(held.values())
        if share is not None:  # a dishonest custodian answers with another key
            first = loaded[0]
            loaded[0] = ceremony.CustodianShare(code, first.epoch, share, first.commitments)
        server = grpc.aio.server()
        servicer = service(loaded, self.cache.get, self.executor, max_batch=64, quota=quota)
        custodian_pb2_grpc.add_CustodianServicer_to_server(servicer, server)
        tls = pki.TlsFiles.in_folder(self.root / "bureaus" / code)
        port = server.add_secure_port("127.0.0.1:0", tls.server_credentials())
        await server.start()
        self.servers[code] = server
        address = f"127.0.0.1:{port}"

        pki.set_address(self.root, code, address)
        return servicer

    async def stop(self, code: str) -> None:
        await self.servers.pop(code).stop(None)

    def tagger(self) -> ThresholdTagger:
        tls = pki.TlsFiles.in_folder(self.root / "bureaus" / "USA")
        return ThresholdTagger(self.cache, tls, self.executor, rpc_timeout=5.0)

    async def tag(self, inputs: list[bytes]) -> tuple[list[bytes], dict[str, str]]:
        """USA's tags for `inputs` with a fresh tagger, and the custodian errors it saw."""
        tagger = self.tagger()
        try:
            return await tagger.tag(inputs), dict(tagger.stats.custodian_errors)
        finally:
            await tagger.close()

    async def close(self) -> None:
        for server in self.servers.values():
            await server.stop(None)


def expected_tags(root: Path, inputs: list[bytes], epoch: int = 1) -> list[bytes]:
    d = pki.load_directory(root / "directory.json", root / "ca" / "ca.crt")
    shares = [
        ceremony.load_share(ceremony.share_path(root, epoch, c), d, c).share for c in CODES[:2]
    ]
    key = threshold.recover_key(shares)
    return [tags.tag_from_output(oprf.evaluate(key, x, Mode.VOPRF)) for x in inputs]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


INPUTS = [f"blindmatch/v1|passport|FRA|{i:09d}".encode() for i in range(10)]


def test_any_two_custodians_give_the_single_key_tags(
    federation: Path, executor: ThreadPoolExecutor
) -> None:
    async def main() -> list[list[bytes]]:
        fed = Federation(federation, executor)
        results = []
        try:
            for code in CODES:
                await fed.start(code)
            tagger = fed.tagger()
            results.append(await tagger.tag(INPUTS))
            await fed.stop("FRA")  # DEU + BRA remain
            results.append(await tagger.tag(INPUTS))
            assert tagger.stats.custodian_errors.keys() == {"FRA"}
            await tagger.close()
        finally:
            await fed.close()
        return results

    first, after_failover = run(main())
    assert first == after_failover == expected_tags(federation, INPUTS)


def test_a_custodian_bureau_applies_its_own_share_without_asking_itself(
    federation: Path, executor: ThreadPoolExecutor
) -> None:
    """FRA tags with its own share (its custodian server is not even
    running) and DEU's verified answer: the single-key tags; nothing failed."""

    async def main() -> tuple[list[bytes], dict[str, str]]:
        fed = Federation(federation, executor)
        try:
            await fed.start("DEU")
            await fed.start("BRA", share=threshold.KeyShare(3, group.random_scalar()))
            own = ceremony.load_share(
                ceremony.share_path(federation, 1, "FRA"), fed.cache.get(), "FRA"
            )
            tls = pki.TlsFiles.in_folder(federation / "bureaus" / "FRA")
            tagger = ThresholdTagger(
                fed.cache, tls, executor, rpc_timeout=5.0, own_shares={1: own.share}
            )
            tagged = await tagger.tag(INPUTS)
            errors = dict(tagger.stats.custodian_errors)
            await tagger.close()
        finally:
            await fed.close()
        return tagged, errors

    tagged, errors = run(main())
    assert tagged == expected_tags(federation, INPUTS)
    assert errors == {}  # FRA (own) and DEU were chosen; dishonest BRA never asked


def test_dishonest_custodian_is_named_and_skipped(
    federation: Path, executor: ThreadPoolExecutor
) -> None:
    async def main() -> tuple[list[bytes], dict[str, str]]:
        fed = Federation(federation, executor)
        try:
            await fed.start("FRA", share=threshold.KeyShare(1, group.random_scalar()))
            await fed.start("DEU")
            await fed.start("BRA")
            tagger = fed.tagger()
            out = await tagger.tag(INPUTS)
            await tagger.close()
            return out, tagger.stats.custodian_errors
        finally:
            await fed.close()

    out, errors = run(main())
    assert out == expected_tags(federation, INPUTS)  # nothing wrong was produced
    assert "FRA" in errors and "invalid answer" in errors["FRA"]


class Recording(CustodianService):
    """An honest custodian that remembers the requests it was asked to prove."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.proven_requests: list[list[bytes]] = []

    async def Evaluate(
        self, request: custodian_pb2.EvaluateRequest, context: Any
    ) -> custodian_pb2.EvaluateResponse:
        if not request.unproven:
            self.proven_requests.append(list(request.blinded_elements))
        return await super().Evaluate(request, context)


class LiesInTheBatch(CustodianService):
    """Honest about the check's combination, wrong about one element of a batch."""

    async def Evaluate(
        self, request: custodian_pb2.EvaluateRequest, context: Any
    ) -> custodian_pb2.EvaluateResponse:
        reply = await super().Evaluate(request, context)
        if request.unproven:
            reply.evaluated_elements[-1] = group.scalar_mult_base(group.random_scalar())
        return reply


def test_a_batch_asked_again_after_a_failed_check_gets_a_fresh_combination(
    federation: Path, executor: ThreadPoolExecutor
) -> None:
    """FRA lies about one element; FRA and DEU are asked first, the check
    fails and the per-custodian combinations name FRA; DEU and BRA are then
    asked with another combination, never the one FRA has seen."""

    async def main() -> tuple[list[bytes], dict[str, str], Recording, Recording]:
        fed = Federation(federation, executor)
        try:
            await fed.start("FRA", service=LiesInTheBatch)
            deu = await fed.start("DEU", service=Recording)
            bra = await fed.start("BRA", service=Recording)
            out, errors = await fed.tag(INPUTS)
        finally:
            await fed.close()
        assert isinstance(deu, Recording) and isinstance(bra, Recording)
        return out, errors, deu, bra

    out, errors, deu, bra = run(main())
    assert out == expected_tags(federation, INPUTS)
    assert set(errors) == {"FRA"}
    assert "do not match its proven evaluation" in errors["FRA"], errors
    first, second = deu.proven_requests  # one element each: the combinations
    assert len(first) == len(second) == 1 and first != second
    assert bra.proven_requests == [second]


class FailsTheCheck(CustodianService):
    """Answers batches, but refuses the proven evaluation of a combination."""

    async def Evaluate(
        self, request: custodian_pb2.EvaluateRequest, context: Any
    ) -> custodian_pb2.EvaluateResponse:
        if not request.unproven:
            await context.abort(grpc.StatusCode.INTERNAL, "no proofs today")
        return await super().Evaluate(request, context)


def test_a_custodian_failing_only_the_check_is_replaced(
    federation: Path, executor: ThreadPoolExecutor
) -> None:
    """FRA answers the batch, then fails its proof of the combination: the
    batch is asked again of DEU and BRA, and FRA's error is on record."""

    async def main() -> tuple[list[bytes], dict[str, str], Recording]:
        fed = Federation(federation, executor)
        try:
            await fed.start("FRA", service=FailsTheCheck)
            await fed.start("DEU")
            bra = await fed.start("BRA", service=Recording)
            out, errors = await fed.tag(INPUTS)
        finally:
            await fed.close()
        assert isinstance(bra, Recording)
        return out, errors, bra

    out, errors, bra = run(main())
    assert out == expected_tags(federation, INPUTS)
    assert set(errors) == {"FRA"} and "no proofs today" in errors["FRA"], errors
    assert len(bra.proven_requests) == 1  # BRA took part in the second round only


def test_too_few_custodians_fails_naming_each(
    federation: Path, executor: ThreadPoolExecutor
) -> None:
    async def main() -> str:
        fed = Federation(federation, executor)
        try:
            await fed.start("FRA")
            await fed.start("DEU", share=threshold.KeyShare(2, group.random_scalar()))
            # BRA never starts: it has no address.
            tagger = fed.tagger()
            with pytest.raises(CustodiansUnavailable) as info:
                await tagger.tag(INPUTS)
            await tagger.close()
            return str(info.value)
        finally:
            await fed.close()

    message = run(main())
    assert "only 1 of the 2 custodians" in message
    assert "DEU: invalid answer" in message and "BRA" in message


def test_custodian_refuses_bad_arguments(federation: Path, executor: ThreadPoolExecutor) -> None:
    async def main() -> dict[str, tuple[grpc.StatusCode, str]]:
        fed = Federation(federation, executor)
        seen: dict[str, tuple[grpc.StatusCode, str]] = {}
        try:
            await fed.start("FRA")
            address = fed.cache.get().bureau("FRA").address
            creds = pki.TlsFiles.in_folder(federation / "bureaus" / "USA").channel_credentials()
            _, element = oprf.blind(b"x", Mode.VOPRF)
            cases = {
                "epoch": custodian_pb2.EvaluateRequest(
                    epoch=2, participants=[1, 2], blinded_elements=[element]
                ),
                "not_member": custodian_pb2.EvaluateRequest(
                    epoch=1, participants=[2, 3], blinded_elements=[element]
                ),
                "below_t": custodian_pb2.EvaluateRequest(
                    epoch=1, participants=[1], blinded_elements=[element]
                ),
                "oversized": custodian_pb2.EvaluateRequest(
                    epoch=1, participants=[1, 2], blinded_elements=[element] * 65
                ),
                "identity": custodian_pb2.EvaluateRequest(
                    epoch=1, participants=[1, 2], blinded_elements=[element, bytes(32)]
                ),
            }
            async with grpc.aio.secure_channel(address, creds) as channel:
                stub = custodian_pb2_grpc.CustodianStub(channel)
                for name, request in cases.items():
                    try:
                        await stub.Evaluate(request, timeout=5)
                    except grpc.aio.AioRpcError as exc:
                        seen[name] = (exc.code(), exc.details() or "")
                info = await stub.GetKeyInfo(custodian_pb2.GetKeyInfoRequest(), timeout=5)
                assert info.share_index == 1 and info.threshold == 2 and info.custodian == "FRA"
        finally:
            await fed.close()
        return seen

    seen = run(main())
    assert seen["epoch"][0] is grpc.StatusCode.FAILED_PRECONDITION
    assert "epoch 1, not of epoch 2" in seen["epoch"][1]
    assert seen["not_member"][0] is grpc.StatusCode.INVALID_ARGUMENT
    assert "index 1" in seen["not_member"][1]
    assert seen["below_t"][0] is grpc.StatusCode.INVALID_ARGUMENT
    assert seen["oversized"] == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "blinded_elements has 65 elements; send between 1 and 64",
    )
    assert seen["identity"][0] is grpc.StatusCode.INVALID_ARGUMENT
    assert "blinded_element[1] is the identity" in seen["identity"][1]


def test_an_unproven_answer_is_the_proven_one_without_its_proof(
    federation: Path, executor: ThreadPoolExecutor
) -> None:
    """`unproven` drops the proof and nothing else."""

    async def main() -> tuple[Any, Any, Any]:
        fed = Federation(federation, executor)
        try:
            await fed.start("FRA")
            address = fed.cache.get().bureau("FRA").address
            creds = pki.TlsFiles.in_folder(federation / "bureaus" / "USA").channel_credentials()
            _, blinded = oprf.blind_batch([b"x", b"y", b"z"], Mode.VOPRF)
            async with grpc.aio.secure_channel(address, creds) as channel:
                stub = custodian_pb2_grpc.CustodianStub(channel)
                ask = functools.partial(custodian_pb2.EvaluateRequest, epoch=1, participants=[1, 3])
                proven = await stub.Evaluate(ask(blinded_elements=blinded), timeout=5)
                unproven = await stub.Evaluate(
                    ask(blinded_elements=blinded, unproven=True), timeout=5
                )
        finally:
            await fed.close()
        return blinded, proven, unproven

    blinded, proven, unproven = run(main())
    assert len(proven.proof) == oprf.PROOF_LENGTH and unproven.proof == b""
    assert list(unproven.evaluated_elements) == list(proven.evaluated_elements)
    assert (unproven.share_index, unproven.epoch) == (1, 1)
    d = pki.load_directory(federation / "directory.json", federation / "ca" / "ca.crt")
    public = threshold.FeldmanCommitments(d.epochs[1].commitments).public_share(1)
    threshold.verify_partial(
        threshold.PartialEvaluation(1, tuple(proven.evaluated_elements), proven.proof),
        public,
        (1, 3),
        blinded,
    )


def test_caller_outside_the_directory_is_refused(
    federation: Path, executor: ThreadPoolExecutor, tmp_path_factory: pytest.TempPathFactory
) -> None:
    async def main() -> grpc.StatusCode:
        fed = Federation(federation, executor)
        try:
            await fed.start("FRA")
            # Revoke USA's certificate in the directory.
            serial = pki.certificate_serial(
                (federation / "bureaus" / "USA" / "tls.crt").read_bytes()
            )
            pki.update_directory(
                federation, lambda d: d.replace(revoked_serials=frozenset({serial}))
            )
            address = fed.cache.get().bureau("FRA").address
            creds = pki.TlsFiles.in_folder(federation / "bureaus" / "USA").channel_credentials()
            async with grpc.aio.secure_channel(address, creds) as channel:
                try:
                    await custodian_pb2_grpc.CustodianStub(channel).GetKeyInfo(
                        custodian_pb2.GetKeyInfoRequest(), timeout=5
                    )
                except grpc.aio.AioRpcError as exc:
                    assert "revoked" in (exc.details() or "")
                    return exc.code()
            return grpc.StatusCode.OK
        finally:
            await fed.close()

    assert run(main()) is grpc.StatusCode.PERMISSION_DENIED


def test_quota_refuses_a_fishing_bureau_with_a_retry_hint(
    federation: Path, executor: ThreadPoolExecutor
) -> None:
    async def main() -> tuple[grpc.StatusCode, str, dict[str, str]]:
        fed = Federation(federation, executor)
        try:
            await fed.start("FRA", quota=TokenBuckets(rate=1, burst=15))
            address = fed.cache.get().bureau("FRA").address
            creds = pki.TlsFiles.in_folder(federation / "bureaus" / "USA").channel_credentials()
            _, blinded = oprf.blind_batch(INPUTS, Mode.VOPRF)
            request = custodian_pb2.EvaluateRequest(
                epoch=1, participants=[1, 2], blinded_elements=blinded
            )
            async with grpc.aio.secure_channel(address, creds) as channel:
                stub = custodian_pb2_grpc.CustodianStub(channel)
                await stub.Evaluate(request, timeout=5)  # 10 of 15 tokens
                call = stub.Evaluate(request, timeout=5)
                try:
                    await call
                except grpc.aio.AioRpcError as exc:
                    trailers = {k: str(v) for k, v in (exc.trailing_metadata() or ())}
                    return exc.code(), exc.details() or "", trailers
            raise AssertionError("the second batch was served")
        finally:
            await fed.close()

    code, details, trailers = run(main())
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "quota exceeded for USA: 10 blinded elements" in details
    assert 4000 <= int(trailers["retry-after-ms"]) <= 5100


def test_custodians_serve_every_epoch_they_hold(
    federation: Path, executor: ThreadPoolExecutor
) -> None:
    """During a key transition custodians hold the old and the new epoch's
    shares: the tagger can tag under either, the default is the newest, and an
    epoch no custodian holds is refused with FAILED_PRECONDITION naming it."""
    ceremony.run_ceremony(federation, epoch=2, threshold_t=2, custodians=CODES)

    async def main() -> dict[object, Any]:
        fed = Federation(federation, executor)
        out: dict[object, Any] = {}
        try:
            for code in CODES:
                await fed.start(code, epochs=(1, 2))
            tagger = fed.tagger()
            out["default"] = await tagger.tag(INPUTS)
            out[1] = await tagger.tag(INPUTS, 1)
            out[2] = await tagger.tag(INPUTS, 2)
            await tagger.close()
            address = fed.cache.get().bureau("DEU").address
            creds = pki.TlsFiles.in_folder(federation / "bureaus" / "USA").channel_credentials()
            async with grpc.aio.secure_channel(address, creds) as channel:
                stub = custodian_pb2_grpc.CustodianStub(channel)
                for epoch in (0, 1, 2):
                    info = await stub.GetKeyInfo(
                        custodian_pb2.GetKeyInfoRequest(epoch=epoch), timeout=5
                    )
                    out[f"info {epoch}"] = (info.epoch, info.group_public_key)
                _, element = oprf.blind(b"x", Mode.VOPRF)
                with pytest.raises(grpc.aio.AioRpcError) as info_error:
                    await stub.Evaluate(
                        custodian_pb2.EvaluateRequest(
                            epoch=3, participants=[1, 2], blinded_elements=[element]
                        ),
                        timeout=5,
                    )
                out["epoch 3"] = (info_error.value.code(), info_error.value.details())
        finally:
            await fed.close()
        return out

    out = run(main())
    assert out[1] == expected_tags(federation, INPUTS, 1)
    assert out[2] == out["default"] == expected_tags(federation, INPUTS, 2)
    assert out[1] != out[2]
    d = pki.load_directory(federation / "directory.json", federation / "ca" / "ca.crt")
    assert out["info 1"] == (1, d.epochs[1].commitments[0])
    assert out["info 2"] == out["info 0"] == (2, d.epochs[2].commitments[0])
    code, details = out["epoch 3"]
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert details == "custodian DEU holds shares of epochs 1, 2, not of epoch 3"
