"""Accept WebSocket connections and record when each one last received bytes.

The relay's idle timeout counts every byte a client sends, WebSocket control
frames included. A t2t client heartbeats with RFC 6455 ping frames, and
trio-websocket sends the pong from its own reader task without passing the
ping to the relay. So the relay wraps each accepted stream in
:class:`TimestampedStream` before handing it to trio-websocket, and the idle
check reads the wrapper's ``last_received``.

:func:`serve_websockets` does what trio-websocket's ``WebSocketServer`` does
for each connection, through its public ``wrap_server_stream``, so that the
handler gets the wrapper together with the request.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, NoReturn

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, wrap_server_stream
from wsproto.utilities import LocalProtocolError

log = logging.getLogger("t2t.relay")

Listener = trio.SocketListener | trio.SSLListener[trio.SocketStream]
Handler = Callable[[WebSocketRequest, "TimestampedStream"], Awaitable[None]]


class TimestampedStream(trio.abc.Stream):
    """A stream that stores the trio time of its latest ``receive_some``.

    Every method other than ``receive_some`` passes straight through.
    ``last_received`` starts at the time the stream was accepted.
    """

    __slots__ = ("_stream", "last_received", "peer")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self.last_received = trio.current_time()
        # Read now, because getpeername() fails once the peer has gone.
        self.peer = _peer_address(stream)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self._stream.receive_some(max_bytes)
        self.last_received = trio.current_time()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


def _peer_address(stream: trio.abc.Stream) -> str:
    """Return the remote address as ``host:port``, or the stream's repr if it has no socket."""
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if not isinstance(stream, trio.SocketStream):
        return repr(stream)
    try:
        host, port, *_ = stream.socket.getpeername()
    except OSError:
        return "unknown (the peer has already disconnected)"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ListenError(Exception):
    """The relay could not bind its listening socket.

    ``error`` is the OSError that the bind or the host lookup raised.
    """

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


async def open_listeners(
    host: str, port: int, ssl_context: ssl.SSLContext | None
) -> Sequence[Listener]:
    """Open the TCP (or TLS over TCP) listeners that ``serve_websocket`` would open.

    Raises:
        ListenError: the address is in use, not local, or not allowed.
    """
    try:
        if ssl_context is None:
            return await trio.open_tcp_listeners(port, host=host)
        return await trio.open_ssl_over_tcp_listeners(
            port, ssl_context, host=host, https_compatible=True
        )
    except OSError as exc:
        raise ListenError(exc) from exc


def listening_port(listeners: Sequence[Listener]) -> int:
    """Return the port the listeners are bound to.

    Raises:
        RuntimeError: the listeners are bound to different ports, which
            happens when a host name resolves to several addresses and the
            requested port is 0.
    """
    ports = set()
    for listener in listeners:
        socket_listener = (
            listener.transport_listener if isinstance(listener, trio.SSLListener) else listener
        )
        assert isinstance(socket_listener, trio.SocketListener)
        ports.add(socket_listener.socket.getsockname()[1])
    if len(ports) != 1:
        raise RuntimeError(
            f"the listeners are bound to different ports {sorted(ports)}. Pass a nonzero "
            "port, or a host that resolves to one address"
        )
    return int(ports.pop())


async def serve_websockets(
    handler: Handler,
    listeners: Sequence[Listener],
    *,
    handler_nursery: trio.Nursery,
    max_message_size: int,
    connect_timeout: float,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve WebSocket connections on ``listeners`` until cancelled.

    Calls ``handler(request, stream)`` for each opening handshake that
    completes within ``connect_timeout`` seconds. The handler must accept or
    reject the request and close an accepted connection. Whatever it leaves
    open is closed without a closing handshake when it returns.
    """

    async def serve_one(stream: trio.abc.Stream) -> None:
        timestamped = TimestampedStream(stream)
        try:
            async with trio.open_nursery() as nursery:  # runs trio-websocket's reader task
                request = None
                with trio.move_on_after(connect_timeout):
                    request = await wrap_server_stream(
                        nursery, timestamped, max_message_size=max_message_size
                    )
                if request is not None:
                    await handler(request, timestamped)
                nursery.cancel_scope.cancel()
        except Exception as exc:
            # A failure on one connection must not reach the listeners'
            # nursery, which would stop the whole relay.
            _log_connection_failure(exc, timestamped.peer)
        finally:
            await trio.aclose_forcefully(timestamped)

    await trio.serve_listeners(
        serve_one, list(listeners), handler_nursery=handler_nursery, task_status=task_status
    )


# The peer hung up while trio-websocket was still talking to it, for
# example by resetting the connection right after its handshake.
_PEER_FAILURES: Final = (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError)


def _log_connection_failure(exc: Exception, peer: str) -> None:
    """Log why one connection failed: one line for peer failures, a traceback otherwise."""
    leaves = _leaf_exceptions(exc)
    if all(isinstance(leaf, _PEER_FAILURES) for leaf in leaves):
        log.info("connection ended by the peer peer=%s error=%r", peer, leaves[0])
    elif all(isinstance(leaf, LocalProtocolError) for leaf in leaves):
        # trio-websocket 0.12 tries to send a pong for a ping that arrives
        # after its own close frame, and wsproto rejects that.
        log.warning(
            "connection ended by a WebSocket protocol error peer=%s error=%s", peer, leaves[0]
        )
    else:
        log.error("connection failed peer=%s", peer, exc_info=exc)


def _leaf_exceptions(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaf_exceptions(inner)]
    return [exc]
