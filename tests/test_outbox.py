"""The relay's per-connection outbox: acknowledgements after the write, stalled writes.

Each test joins a real trio-websocket server connection to a client over
trio's lockstep stream pair, where a write finishes only once the other side
has read it. That makes "written" observable without sockets: a frame the
client has not read yet is still being written.
"""

from __future__ import annotations

import base64
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from trio_websocket import WebSocketConnection, WebSocketRequest, wrap_server_stream

from t2t.server.outbox import MAX_HELD_ACKS, MAX_WRITE_BATCH, Delivery, Outbox, StalledWrite

pytestmark = pytest.mark.anyio


class RawPeer:
    """The client end: reads the server's unmasked frames straight off the stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = b""

    async def read_exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = await self.stream.receive_some()
            assert chunk, "stream closed"
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    async def handshake(self) -> None:
        key = base64.b64encode(b"0123456789abcdef").decode()
        await self.stream.send_all(
            (
                "GET / HTTP/1.1\r\nHost: relay.test\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += await self.stream.receive_some()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101")

    async def message(self) -> bytes:
        """Read one short unfragmented binary frame (payload under 126 bytes)."""
        opcode, length = await self.read_exactly(2)
        assert opcode == 0x82
        assert length < 126
        return await self.read_exactly(length)


@asynccontextmanager
async def websocket_pair() -> AsyncIterator[tuple[WebSocketConnection, RawPeer]]:
    """Yield a server WebSocket connection and the raw client end of its stream.

    The two ends are a lockstep stream pair: a server write finishes only
    once the test has read it from the client end.
    """
    server_stream, client_stream = trio.testing.lockstep_stream_pair()
    peer = RawPeer(client_stream)
    async with trio.open_nursery() as nursery:
        server_side: list[WebSocketConnection] = []
        accepted = trio.Event()

        async def accept() -> None:
            request: WebSocketRequest = await wrap_server_stream(nursery, server_stream)
            server_side.append(await request.accept())
            accepted.set()

        nursery.start_soon(accept)
        await peer.handshake()
        with trio.fail_after(5):
            await accepted.wait()
        yield server_side[0], peer
        nursery.cancel_scope.cancel()


class Acks:
    """Records which deliveries finished, in order."""

    def __init__(self) -> None:
        self.done: list[str] = []

    def delivery(self, name: str) -> Delivery:
        return Delivery(lambda: self.done.append(name))


async def test_ack_waits_for_every_write():
    acks = Acks()
    with trio.fail_after(10):
        async with websocket_pair() as (server, client), trio.open_nursery() as nursery:
            outbox = Outbox(1, server, queue_size=4)
            nursery.start_soon(outbox.write_all, math.inf)
            delivery = acks.delivery("m1")
            assert outbox.enqueue(b"copy one", None, delivery)
            assert outbox.enqueue(b"copy two", None, delivery)
            delivery.done()  # the forwarding reader has queued every copy
            await trio.testing.wait_all_tasks_blocked()
            before_read = list(acks.done)

            first = await client.message()
            second = await client.message()
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()

    assert before_read == []
    assert (first, second) == (b"copy one", b"copy two")
    assert acks.done == ["m1"]


async def test_message_without_recipients_is_acked_at_once():
    acks = Acks()
    delivery = acks.delivery("alone")

    delivery.done()

    assert acks.done == ["alone"]


async def test_dropped_connection_releases_queued_copies():
    acks = Acks()
    with trio.fail_after(10):
        async with websocket_pair() as (server, _client), trio.open_nursery() as nursery:
            outbox = Outbox(1, server, queue_size=8)

            async def write() -> None:
                with outbox.scope:
                    await outbox.write_all(math.inf)

            nursery.start_soon(write)
            deliveries = [acks.delivery(f"m{i}") for i in range(3)]
            for delivery in deliveries:
                assert outbox.enqueue(b"never read", None, delivery)
                delivery.done()
            await trio.testing.wait_all_tasks_blocked()
            before_drop = list(acks.done)

            outbox.abort(1008, "slow consumer: test")
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()

    assert before_drop == []
    assert sorted(acks.done) == ["m0", "m1", "m2"]


async def test_copy_for_a_closed_queue_is_not_counted():
    acks = Acks()
    with trio.fail_after(10):
        async with websocket_pair() as (server, _client):
            outbox = Outbox(1, server, queue_size=4)
            await outbox.outbox_receive.aclose()
            delivery = acks.delivery("m1")

            queued = outbox.enqueue(b"frame", None, delivery)
            delivery.done()

    assert queued
    assert outbox.closing
    assert acks.done == ["m1"]


class TestStalledWrite:
    @pytest.fixture
    def anyio_backend(self):
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})

    async def test_unread_write_times_out(self):
        acks = Acks()
        with trio.fail_after(60):
            async with websocket_pair() as (server, _client):
                outbox = Outbox(1, server, queue_size=4)
                delivery = acks.delivery("m1")
                assert outbox.enqueue(b"x" * 1000, None, delivery)
                delivery.done()
                started = trio.current_time()
                with pytest.raises(StalledWrite, match=r"took over 5 s"):
                    await outbox.write_all(5.0)
                waited = trio.current_time() - started

        assert waited == pytest.approx(5.0)
        assert acks.done == ["m1"]  # the dropped copy still releases the sender

    async def test_message_deadline_applies_to_write(self):
        # A peer that reads, but too slowly, is dropped once a message has
        # waited past its deadline, even though no single write timed out.
        acks = Acks()
        with trio.fail_after(60):
            async with websocket_pair() as (server, _client):
                outbox = Outbox(1, server, queue_size=4)
                started = trio.current_time()
                delivery = Delivery(lambda: acks.done.append("m1"), started + 3.0)
                assert outbox.enqueue(b"late", None, delivery)
                delivery.done()
                with pytest.raises(StalledWrite, match=r"waited over 30 s to be written"):
                    await outbox.write_all(30.0)
                waited = trio.current_time() - started

        assert waited == pytest.approx(3.0)
        assert acks.done == ["m1"]

    async def test_message_past_deadline_is_not_written(self):
        acks = Acks()
        with trio.fail_after(60):
            async with websocket_pair() as (server, peer), trio.open_nursery() as nursery:
                outbox = Outbox(1, server, queue_size=4)
                delivery = Delivery(lambda: acks.done.append("m1"), trio.current_time() + 3.0)
                big = b"x" * MAX_WRITE_BATCH  # fills a batch, so "second" needs a write of its own
                assert outbox.enqueue(big)
                assert outbox.enqueue(b"second", None, delivery)
                delivery.done()
                failures: list[StalledWrite] = []

                async def write() -> None:
                    try:
                        await outbox.write_all(30.0)
                    except StalledWrite as exc:
                        failures.append(exc)

                nursery.start_soon(write)
                await trio.sleep(4.0)  # the first write waits until the peer reads
                first = await peer.read_exactly(10 + len(big))  # 10-byte header for 256 KiB
                await trio.testing.wait_all_tasks_blocked()

        assert first[10:] == big
        assert len(failures) == 1
        assert "in its queue" in str(failures[0])
        assert acks.done == ["m1"]


async def test_held_acks_are_bounded():
    with trio.fail_after(10):
        async with websocket_pair() as (server, _client):
            outbox = Outbox(1, server, queue_size=1)
            assert outbox.enqueue(b"fills the queue")

            held = [outbox.hold_ack(b"ack") for _ in range(MAX_HELD_ACKS)]
            one_more = outbox.hold_ack(b"ack")

    assert all(held)
    assert len(outbox.held_acks) == MAX_HELD_ACKS
    assert not one_more


async def test_held_acks_follow_queued_frames():
    with trio.fail_after(10):
        async with websocket_pair() as (server, client), trio.open_nursery() as nursery:
            outbox = Outbox(1, server, queue_size=1)
            assert outbox.enqueue(b"message")
            assert outbox.hold_ack(b"ack one")
            assert outbox.hold_ack(b"ack two")
            nursery.start_soon(outbox.write_all, math.inf)
            received = [await client.message() for _ in range(3)]
            nursery.cancel_scope.cancel()

    assert received == [b"message", b"ack one", b"ack two"]
