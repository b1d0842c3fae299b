"""Frame a fanout message once and write it to every recipient in batches.

trio-websocket frames each ``send_message`` call separately (through
wsproto) and issues one socket write per message. For a group message sent
to N members that is N framings and N system calls, and it dominates the
relay's CPU time. A server-to-client WebSocket frame is not masked and
trio-websocket negotiates no extensions, so the framed bytes are the same
for every recipient: this module frames a payload once and lets each
connection's writer send many queued frames with a single write.

That needs three private attributes of trio-websocket's connection object:
the byte stream, the lock that serialises writes on it, and the close
reason. :func:`raw_writer_for` checks they exist and returns None otherwise,
and the relay then falls back to ``send_message``. Checked against
trio-websocket 0.11 and 0.12.
"""

from __future__ import annotations

import struct
from typing import Any, Final

import trio
from trio_websocket import CloseReason, ConnectionClosed, WebSocketConnection

_FIN_BINARY: Final = 0x82  # FIN bit set, opcode 0x2 (binary), RFC 6455 section 5.2


def frame_binary(payload: bytes) -> bytes:
    """Return one unfragmented, unmasked binary WebSocket frame carrying ``payload``."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", _FIN_BINARY, length)
    elif length < 65536:
        header = struct.pack("!BBH", _FIN_BINARY, 126, length)
    else:
        header = struct.pack("!BBQ", _FIN_BINARY, 127, length)
    return header + payload


class RawWriter:
    """Writes pre-framed bytes to a trio-websocket connection's stream."""

    __slots__ = ("_lock", "_stream", "_ws")

    def __init__(self, ws: WebSocketConnection, stream: Any, lock: Any) -> None:
        self._ws = ws
        self._stream = stream
        self._lock = lock

    async def write(self, data: bytes) -> None:
        """Send framed bytes, in order with trio-websocket's own control frames.

        Raises:
            ConnectionClosed: the connection is closing or the stream broke.
        """
        reason = getattr(self._ws, "_close_reason", None)
        if reason is not None:
            raise ConnectionClosed(reason)
        async with self._lock:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise ConnectionClosed(CloseReason(1006, "connection lost")) from None


def raw_writer_for(ws: WebSocketConnection) -> RawWriter | None:
    """Return a writer for pre-framed bytes, or None if this trio-websocket lacks the hooks."""
    stream = getattr(ws, "_stream", None)
    lock = getattr(ws, "_stream_lock", None)
    if stream is None or lock is None or not hasattr(ws, "_close_reason"):
        return None
    if not hasattr(stream, "send_all") or not hasattr(lock, "__aenter__"):
        return None
    return RawWriter(ws, stream, lock)
