"""One connection's bounded outbound queue, its writer, and delivery tracking.

The relay puts every frame for a connection into that connection's queue,
and one writer task per connection drains it. Group messages carry a
:class:`Delivery`: a count of the copies not yet written, which sends the
sender's acknowledgement when it reaches zero. A copy counts as finished
once the writer has handed it to the socket, or once its connection closed
with the copy still queued.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Final

import trio
from trio_websocket import WebSocketConnection

from t2t.errors import CLOSE_NORMAL
from t2t.server.framing import RawWriter, frame_binary, raw_writer_for

KIB: Final = 1024
MAX_WRITE_BATCH: Final = 256 * KIB  # bytes the writer joins into one socket write
# Acknowledgements held back because the sender's own queue was full. A
# client that keeps sending without reading its acknowledgements is
# dropped once this many are waiting.
MAX_HELD_ACKS: Final = 4096


class StalledWrite(Exception):
    """A single write to the peer did not finish within the write timeout."""


class _CloseNow:
    """Writer sentinel: flush what came before, then close."""


CLOSE_NOW: Final = _CloseNow()


class Delivery:
    """Counts the copies of one forwarded message that are not yet written.

    The reader that forwards the message keeps one count until it has queued
    every copy, so the count cannot reach zero while copies are still being
    queued. ``on_done`` runs once, when the count reaches zero. Every copy
    must be written by ``deadline`` (trio time): a writer that cannot manage
    that drops its connection, so the sender waits no longer than that.
    """

    __slots__ = ("_on_done", "_pending", "deadline")

    def __init__(self, on_done: Callable[[], None], deadline: float = math.inf) -> None:
        self._pending = 1
        self._on_done = on_done
        self.deadline = deadline

    def add(self) -> None:
        """Count one more queued copy."""
        self._pending += 1

    def done(self) -> None:
        """Count one copy written or dropped (or the forwarding reader's hold released)."""
        self._pending -= 1
        if self._pending == 0:
            self._on_done()


Item = bytes | tuple[bytes, Delivery] | _CloseNow


class Outbox:
    """One WebSocket connection's outbound queue and close state."""

    def __init__(self, conn_id: int, ws: WebSocketConnection, queue_size: int) -> None:
        self.conn_id = conn_id
        self.ws = ws
        self.outbox_send, self.outbox_receive = trio.open_memory_channel[Item](queue_size)
        self.scope = trio.CancelScope()
        self.close_code = CLOSE_NORMAL
        self.close_reason = ""
        self.closing = False
        self.raw = raw_writer_for(ws)
        self.pending_roster: tuple[bytes, bytes] | None = None  # newest roster awaiting room
        self.held_acks: deque[bytes] = deque()  # acknowledgements waiting for queue room
        self._write_timeout = math.inf

    def item_for(self, data: bytes, wire: bytes | None = None) -> bytes:
        """Return what the writer expects: framed bytes on the fast path, else the payload.

        Pass ``wire``, the result of ``frame_binary(data)``, to reuse one
        framing for every recipient of the same payload.
        """
        if self.raw is None:
            return data
        return wire if wire is not None else frame_binary(data)

    def enqueue(
        self, data: bytes, wire: bytes | None = None, delivery: Delivery | None = None
    ) -> bool:
        """Queue a frame for the writer. Returns False if the queue is full.

        A frame for a closing connection is dropped, which counts as done
        for its ``delivery``, and True is returned: there is nothing to wait for.
        """
        if self.closing:
            return True
        item = self.item_for(data, wire)
        try:
            if delivery is None:
                self.outbox_send.send_nowait(item)
            else:
                self.outbox_send.send_nowait((item, delivery))
                delivery.add()
        except trio.WouldBlock:
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The writer has already stopped: the connection is closing and
            # the frame has nowhere to go, which is no error of the sender's.
            self.closing = True
        return True

    async def put(self, data: bytes, wire: bytes | None, delivery: Delivery | None) -> None:
        """Queue a frame, waiting for room; a frame for a closed connection is dropped."""
        item = self.item_for(data, wire)
        if delivery is not None:
            # Counted before the wait: the writer may write the copy and
            # call done() before this task runs again.
            delivery.add()
        try:
            await self.outbox_send.send(item if delivery is None else (item, delivery))
        except BaseException as exc:
            if delivery is not None:
                delivery.done()
            if not isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError)):
                raise

    def hold_ack(self, ack: bytes) -> bool:
        """Queue an acknowledgement, holding it back if the queue is full.

        Returns False if too many are held already: the peer sends without
        reading, and should be dropped.
        """
        if self.enqueue(ack):
            return True
        if len(self.held_acks) >= MAX_HELD_ACKS:
            return False
        self.held_acks.append(ack)
        return True

    def close(self, code: int, reason: str) -> None:
        """Close after flushing what is queued; the first close reason wins."""
        if self.closing:
            return
        self.closing = True
        self.close_code, self.close_reason = code, reason
        try:
            self.outbox_send.send_nowait(CLOSE_NOW)
        except trio.WouldBlock:
            self.scope.cancel()  # no room to flush in order, so close at once

    def abort(self, code: int, reason: str) -> None:
        """Close now, dropping anything still queued."""
        if not self.closing:
            self.closing = True
            self.close_code, self.close_reason = code, reason
        self.scope.cancel()

    # Writer ------------------------------------------------------------------

    async def write_all(self, write_timeout: float) -> None:
        """Write queued frames until a close is requested; drop the rest on exit.

        Raises:
            ConnectionClosed: the peer or the stream closed first.
            StalledWrite: one write took longer than ``write_timeout``
                seconds, or a group message was not written by its
                delivery's deadline: the peer is not reading fast enough.
        """
        self._write_timeout = write_timeout
        try:
            if self.raw is None:
                await self._write_messages()
            else:
                await self._write_batches(self.raw)
        finally:
            self._drop_queued()

    async def _write_bytes(
        self, raw: RawWriter | None, data: bytes, deadline: float = math.inf
    ) -> None:
        # Senders wait for their acks until the write is done, so a peer
        # that stops reading must not hold a write open indefinitely, and a
        # peer that reads slowly must not hold a message past its deadline.
        now = trio.current_time()
        if deadline <= now:
            raise StalledWrite(f"a message waited over {self._write_timeout:g} s in its queue")
        limit = now + self._write_timeout
        with trio.move_on_at(min(limit, deadline)) as scope:
            if raw is None:
                await self.ws.send_message(data)
            else:
                await raw.write(data)
        if scope.cancelled_caught:
            if deadline < limit:
                raise StalledWrite(f"a message waited over {self._write_timeout:g} s to be written")
            raise StalledWrite(f"a write took over {self._write_timeout:g} s")

    async def _write_messages(self) -> None:
        receive = self.outbox_receive
        while True:
            item = await receive.receive()
            if isinstance(item, _CloseNow):
                return
            if isinstance(item, tuple):
                data, delivery = item
                try:
                    await self._write_bytes(None, data, delivery.deadline)
                finally:
                    delivery.done()
            else:
                await self._write_bytes(None, item)
            await self._flush_held_acks(None)

    async def _write_batches(self, raw: RawWriter) -> None:
        # Everything already queued goes out in one write: under load this
        # turns one system call per frame into one per batch.
        receive = self.outbox_receive
        while True:
            item: Item = await receive.receive()
            batch: list[bytes] = []
            deliveries: list[Delivery] = []
            deadline = math.inf
            size = 0
            while not isinstance(item, _CloseNow):
                if isinstance(item, tuple):
                    data, delivery = item
                    deliveries.append(delivery)
                    deadline = min(deadline, delivery.deadline)
                else:
                    data = item
                batch.append(data)
                size += len(data)
                if size >= MAX_WRITE_BATCH:
                    break
                try:
                    item = receive.receive_nowait()
                except trio.WouldBlock:
                    break
            try:
                if batch:
                    await self._write_bytes(raw, b"".join(batch), deadline)
            finally:
                for delivery in deliveries:
                    delivery.done()
            await self._flush_held_acks(raw)
            if isinstance(item, _CloseNow):
                return

    async def _flush_held_acks(self, raw: RawWriter | None) -> None:
        if not self.held_acks:
            return
        acks = list(self.held_acks)
        self.held_acks.clear()
        if raw is None:
            for ack in acks:
                await self._write_bytes(None, ack)
        else:
            await self._write_bytes(raw, b"".join(frame_binary(ack) for ack in acks))

    def _drop_queued(self) -> None:
        """Count every copy still queued as done, then close the queue."""
        while True:
            try:
                item = self.outbox_receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if isinstance(item, tuple):
                item[1].done()
        self.outbox_receive.close()
