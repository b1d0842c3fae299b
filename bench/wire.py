"""A minimal WebSocket client for load generation.

One load-generator process must receive every delivery that the relay
sends, so with trio-websocket on both sides the generator, not the relay,
runs out of CPU first. This client does only what the benchmark needs: the
RFC 6455 opening handshake, unfragmented binary frames, pings with a count
of the pongs received, pong replies and the close handshake, parsing
frames straight out of large receive buffers.

Client frames are masked with an all-zero key. RFC 6455 wants an
unpredictable key to protect intermediaries from cache poisoning, which does
not matter on loopback, and a zero key leaves the payload unchanged so no
per-byte work is needed. This client is for benchmarks only.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import struct
from collections import deque
from typing import Final
from urllib.parse import urlsplit

import trio

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_RECEIVE_SIZE: Final = 256 * 1024
_OP_BINARY: Final = 0x2
_OP_CLOSE: Final = 0x8
_OP_PING: Final = 0x9
_OP_PONG: Final = 0xA
_ZERO_MASK: Final = b"\x00\x00\x00\x00"


class WireClosed(Exception):
    """The relay closed the connection."""


def _client_frame(opcode: int, payload: bytes) -> bytes:
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    return header + _ZERO_MASK + payload


class WireSocket:
    """A connected WebSocket; use :func:`open_wire`."""

    def __init__(self, stream: trio.SocketStream, leftover: bytes) -> None:
        self._stream = stream
        self._buffer = bytearray(leftover)
        self._messages: deque[bytes] = deque()
        self._send_lock = trio.Lock()
        self.pongs_received = 0  # pong frames, counted while get_message() reads

    async def ping(self, payload: bytes) -> None:
        """Send a WebSocket ping. Its pong adds one to :attr:`pongs_received`."""
        await self._send_control(_OP_PING, payload)

    async def send_message(self, payload: bytes) -> None:
        async with self._send_lock:
            await self._stream.send_all(_client_frame(_OP_BINARY, payload))

    async def get_message(self) -> bytes:
        """Return the next binary message, answering pings on the way.

        Raises:
            WireClosed: the relay closed the connection.
        """
        while not self._messages:
            await self._fill()
        return self._messages.popleft()

    async def get_messages(self) -> list[bytes]:
        """Return every complete message received so far, waiting for at least one."""
        while not self._messages:
            await self._fill()
        messages = list(self._messages)
        self._messages.clear()
        return messages

    async def _fill(self) -> None:
        # Bytes that arrived with the handshake response come first.
        if not self._buffer or not await self._parse():
            data = await self._stream.receive_some(_RECEIVE_SIZE)
            if not data:
                raise WireClosed("connection closed by the relay")
            self._buffer += data
        await self._parse()

    async def _parse(self) -> bool:
        """Move complete frames from the buffer to the message queue; return whether any were."""
        buffer = self._buffer
        before = len(self._messages)
        offset = 0
        end = len(buffer)
        while end - offset >= 2:
            first, second = buffer[offset], buffer[offset + 1]
            length = second & 0x7F
            header = 2
            if length == 126:
                if end - offset < 4:
                    break
                (length,) = struct.unpack_from("!H", buffer, offset + 2)
                header = 4
            elif length == 127:
                if end - offset < 10:
                    break
                (length,) = struct.unpack_from("!Q", buffer, offset + 2)
                header = 10
            if end - offset < header + length:
                break
            start = offset + header
            payload = bytes(buffer[start : start + length])
            offset = start + length
            opcode = first & 0x0F
            if opcode == _OP_BINARY:
                self._messages.append(payload)
            elif opcode == _OP_PING:
                await self._send_control(_OP_PONG, payload)
            elif opcode == _OP_PONG:
                self.pongs_received += 1
            elif opcode == _OP_CLOSE:
                raise WireClosed(f"relay sent close frame {payload[:2].hex()}")
        del buffer[:offset]
        return len(self._messages) > before

    async def _send_control(self, opcode: int, payload: bytes) -> None:
        async with self._send_lock:
            await self._stream.send_all(_client_frame(opcode, payload))

    async def aclose(self) -> None:
        try:
            with trio.move_on_after(1):
                await self._send_control(_OP_CLOSE, struct.pack("!H", 1000))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        await self._stream.aclose()


async def open_wire(url: str) -> WireSocket:
    """Connect to ``ws://host:port/`` and complete the opening handshake."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    stream = await trio.open_tcp_stream(host, port)
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    request = (
        f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await stream.send_all(request.encode())
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise WireClosed("connection closed during the opening handshake")
        response += chunk
    head, leftover = response.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 101"):
        raise WireClosed(f"handshake rejected: {head.splitlines()[0]!r}")
    accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest())
    if accept not in head:
        raise WireClosed("handshake response has the wrong Sec-WebSocket-Accept")
    return WireSocket(stream, leftover)
