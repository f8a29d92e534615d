"""Server interceptors shared by the hub's and the agents' grpc.aio servers.

* `DecodeGuard`: a request whose bytes are not a valid protobuf message
  (truncated, garbage) is refused with INVALID_ARGUMENT and a message that
  says so.  Left to itself, grpc.aio answers UNKNOWN with the Python
  exception's class in the details; the servicer is never reached either way.
* `MetricsInterceptor`: counts every RPC by service, method and final status
  code, and times it (`bureau_agent.metrics.RpcMetrics`).

Both rebuild the method handler around the servicer's behaviour, keeping its
(de)serializers, so they work for all four kinds of RPC.  Put the metrics
interceptor first: it then also counts what the guard refused.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from psi.errors import InvalidInputError

__all__ = ["DecodeGuard", "MetricsInterceptor", "UndecodableMessage", "split_method"]

if TYPE_CHECKING:  # the stubs' generics are not subscriptable at run time
    Continuation = Callable[
        [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
    ]
    Context = grpc.aio.ServicerContext[Any, Any]


class UndecodableMessage(InvalidInputError):
    """A message of a client stream that is not valid protobuf."""


class _Undecodable:
    """What the tolerant deserializer returns instead of raising."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def split_method(full: str) -> tuple[str, str]:
    """("blindmatch.v1.Hub", "Query") from "/blindmatch.v1.Hub/Query"."""
    service, _, method = full.lstrip("/").rpartition("/")
    return service or "unknown", method or "unknown"


def _rebuild(
    handler: grpc.RpcMethodHandler[Any, Any],
    behaviour: Callable[..., Any],
    request_deserializer: Callable[[bytes], Any] | None,
) -> grpc.RpcMethodHandler[Any, Any]:
    serializer = handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(behaviour, request_deserializer, serializer)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(behaviour, request_deserializer, serializer)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(behaviour, request_deserializer, serializer)
    return grpc.unary_unary_rpc_method_handler(behaviour, request_deserializer, serializer)


def _inner(handler: grpc.RpcMethodHandler[Any, Any]) -> Callable[..., Any]:
    behaviour = (
        handler.stream_stream or handler.stream_unary or handler.unary_stream or handler.unary_unary
    )
    assert behaviour is not None  # noqa: S101 - a handler always has one
    return behaviour


async def _stream_of(result: Any) -> AsyncIterator[Any]:
    """Responses of a response-streaming behaviour: an async generator, or a
    coroutine that writes with `context.write` and yields nothing here."""
    if inspect.isasyncgen(result):
        async for response in result:
            yield response
    else:
        await result


class _PerMethod(grpc.aio.ServerInterceptor):
    """An interceptor that wraps each method's handler once: the wrapped
    handler keeps no per-call state, so it is kept by method name instead of
    rebuilt on every call.  Unknown methods (no handler) are not kept."""

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return None
            wrapped = self._wrapped[method] = self._wrap(handler, method)
        return wrapped

    def _wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        raise NotImplementedError


class DecodeGuard(_PerMethod):
    """Refuse undecodable requests with INVALID_ARGUMENT instead of UNKNOWN."""

    def _wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        if handler.request_deserializer is None:
            return handler
        decode = handler.request_deserializer
        inner = _inner(handler)

        def tolerant(raw: bytes) -> Any:
            try:
                return decode(raw)
            except Exception as exc:  # DecodeError, and anything a custom decoder raises
                return _Undecodable(str(exc) or type(exc).__name__)

        async def refuse(context: Context, reason: str) -> None:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request is not a valid protobuf message ({reason})",
            )

        async def checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
            count = 0
            async for request in requests:
                if isinstance(request, _Undecodable):
                    raise UndecodableMessage(
                        f"message {count} of the stream is not a valid protobuf message "
                        f"({request.reason})"
                    )
                count += 1
                yield request

        if handler.request_streaming and handler.response_streaming:

            async def stream_stream(requests: AsyncIterator[Any], context: Context) -> Any:
                try:
                    async for response in _stream_of(inner(checked(requests), context)):
                        yield response
                except UndecodableMessage as exc:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

            return _rebuild(handler, stream_stream, tolerant)
        if handler.request_streaming:

            async def stream_unary(requests: AsyncIterator[Any], context: Context) -> Any:
                try:
                    return await inner(checked(requests), context)
                except UndecodableMessage as exc:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

            return _rebuild(handler, stream_unary, tolerant)
        if handler.response_streaming:

            async def unary_stream(request: Any, context: Context) -> Any:
                if isinstance(request, _Undecodable):
                    await refuse(context, request.reason)
                async for response in _stream_of(inner(request, context)):
                    yield response

            return _rebuild(handler, unary_stream, tolerant)

        async def unary_unary(request: Any, context: Context) -> Any:
            if isinstance(request, _Undecodable):
                await refuse(context, request.reason)
            return await inner(request, context)

        return _rebuild(handler, unary_unary, tolerant)


class _Observer:
    """Records one RPC's outcome and duration."""

    def __init__(
        self, record: Callable[[str, str, str, float], None], service: str, method: str
    ) -> None:
        self._record = record
        self._service, self._method = service, method
        self._started = time.perf_counter()

    def done(self, context: Context, failure: BaseException | None) -> None:
        if isinstance(failure, asyncio.CancelledError | GeneratorExit):
            code = grpc.StatusCode.CANCELLED
        elif failure is not None and not isinstance(failure, grpc.aio.AbortError):
            code = grpc.StatusCode.UNKNOWN
        else:
            code = context.code() or grpc.StatusCode.OK
        name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        self._record(self._service, self._method, name, time.perf_counter() - self._started)


class MetricsInterceptor(_PerMethod):
    """Call `record(service, method, code, seconds)` once per RPC."""

    def __init__(self, record: Callable[[str, str, str, float], None]) -> None:
        super().__init__()
        self._record = record

    def _wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        inner = _inner(handler)
        record = self._record
        service, name = split_method(method)

        if handler.response_streaming:

            async def streaming(request: Any, context: Context) -> Any:
                observer = _Observer(record, service, name)
                failure: BaseException | None = None
                try:
                    async for response in _stream_of(inner(request, context)):
                        yield response
                except BaseException as exc:
                    failure = exc
                    raise
                finally:
                    observer.done(context, failure)

            return _rebuild(handler, streaming, handler.request_deserializer)

        async def unary(request: Any, context: Context) -> Any:
            observer = _Observer(record, service, name)
            failure: BaseException | None = None
            try:
                return await inner(request, context)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                observer.done(context, failure)

        return _rebuild(handler, unary, handler.request_deserializer)
