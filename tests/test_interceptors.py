"""`bureau_agent.interceptors` on a real grpc.aio server (loopback): each
method's handler is wrapped once and kept, and the kept handler still counts
every call with its own outcome and refuses every undecodable request."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from bureau_agent.interceptors import DecodeGuard, MetricsInterceptor

SERVICE = "test.Echo"


async def _echo(request: health_pb2.HealthCheckRequest, context: Any) -> Any:
    if request.service == "fail":
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "asked to fail")
    return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


async def _count(request: health_pb2.HealthCheckRequest, context: Any) -> Any:
    for _ in range(int(request.service or "0")):
        yield health_pb2.HealthCheckResponse()


def _handlers() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                _echo,
                request_deserializer=health_pb2.HealthCheckRequest.FromString,
                response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
            ),
            "Count": grpc.unary_stream_rpc_method_handler(
                _count,
                request_deserializer=health_pb2.HealthCheckRequest.FromString,
                response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
            ),
        },
    )


def test_kept_handlers_count_and_guard_every_call() -> None:
    recorded: list[tuple[str, str, str]] = []
    metrics = MetricsInterceptor(lambda svc, method, code, _s: recorded.append((svc, method, code)))
    guard = DecodeGuard()

    async def main() -> list[tuple[str, Any]]:
        server = grpc.aio.server(interceptors=[metrics, guard])
        server.add_generic_rpc_handlers((_handlers(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        outcomes: list[tuple[str, Any]] = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                echo: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                    f"/{SERVICE}/Echo"
                )
                count: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
                    f"/{SERVICE}/Count"
                )
                unknown: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                    f"/{SERVICE}/Nothing"
                )
                good = health_pb2.HealthCheckRequest(service="x").SerializeToString()
                fail = health_pb2.HealthCheckRequest(service="fail").SerializeToString()
                three = health_pb2.HealthCheckRequest(service="3").SerializeToString()
                garbage = b"\xff\xff\xff"
                for name, call in [
                    ("echo", lambda: echo(good, timeout=5)),
                    ("garbage", lambda: echo(garbage, timeout=5)),
                    ("echo again", lambda: echo(good, timeout=5)),
                    ("fail", lambda: echo(fail, timeout=5)),
                    ("unknown", lambda: unknown(good, timeout=5)),
                    ("unknown again", lambda: unknown(good, timeout=5)),
                    ("garbage again", lambda: echo(garbage, timeout=5)),
                ]:
                    try:
                        await call()
                        outcomes.append((name, grpc.StatusCode.OK))
                    except grpc.aio.AioRpcError as exc:
                        outcomes.append((name, (exc.code(), exc.details())))
                streamed = [r async for r in count(three, timeout=5)]
                outcomes.append(("count", len(streamed)))
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    _ = [r async for r in count(garbage, timeout=5)]
                outcomes.append(("count garbage", caught.value.code()))
        finally:
            await server.stop(None)
        return outcomes

    outcomes = dict(asyncio.run(main()))
    assert outcomes["echo"] is grpc.StatusCode.OK
    assert outcomes["echo again"] is grpc.StatusCode.OK
    for name in ("garbage", "garbage again"):
        code, details = outcomes[name]
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid protobuf message" in details
    assert outcomes["fail"] == (grpc.StatusCode.FAILED_PRECONDITION, "asked to fail")
    for name in ("unknown", "unknown again"):
        assert outcomes[name][0] is grpc.StatusCode.UNIMPLEMENTED
    assert outcomes["count"] == 3
    assert outcomes["count garbage"] is grpc.StatusCode.INVALID_ARGUMENT
    # Every call to a known method counted once, with its own code; unknown
    # methods never reach the interceptors' handlers.
    assert recorded == [
        (SERVICE, "Echo", "OK"),
        (SERVICE, "Echo", "INVALID_ARGUMENT"),
        (SERVICE, "Echo", "OK"),
        (SERVICE, "Echo", "FAILED_PRECONDITION"),
        (SERVICE, "Echo", "INVALID_ARGUMENT"),
        (SERVICE, "Count", "OK"),
        (SERVICE, "Count", "INVALID_ARGUMENT"),
    ]
