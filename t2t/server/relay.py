"""The relay's I/O shell: WebSocket connections around :class:`RelayProtocol`.

Task tree, all under :meth:`Relay.serve`'s nursery::

    serve
    ├── roster publisher       (debounces roster changes, one push per burst)
    └── WebSocket listener     (t2t.server.transport)
        └── one nursery per connection
            ├── trio-websocket's reader (parses frames, answers WebSocket pings)
            ├── reader     (get_message -> protocol -> actions)
            ├── writer     (drains the bounded outbound queue; acks after the write)
            └── timer      (login timeout and idle timeout)

When any task of a connection finishes or fails, the connection's nursery is
cancelled and the WebSocket is closed with the recorded code and reason.
Cancelling :meth:`serve` closes every connection with 1001.
"""

from __future__ import annotations

import itertools
import logging
import math
import sqlite3
from collections import Counter
from functools import partial

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest

from t2t.crypto.keys import KeyPair
from t2t.errors import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_TRY_AGAIN_LATER,
    close_details,
)
from t2t.protocol.relay import (
    Action,
    CheckPassword,
    Close,
    ConnState,
    Forward,
    RelayProtocol,
    RelayStore,
    Send,
)
from t2t.server.config import RelayConfig
from t2t.server.framing import frame_binary
from t2t.server.outbox import MAX_HELD_ACKS, Delivery, Outbox, StalledWrite
from t2t.server.passwords import hash_password, verify_password
from t2t.server.transport import (
    TimestampedStream,
    listening_port,
    open_listeners,
    serve_websockets,
)

log = logging.getLogger("t2t.relay")


class Relay:
    """A t2t relay, runnable in any trio nursery.

    Example::

        relay = Relay(config, key, certificate, store)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(relay.serve)

    Args:
        config: Limits, timeouts and the listening address.
        key: The relay key pair named by ``certificate``.
        certificate: The encoded CA-signed certificate for ``key``.
        store: Durable accounts and groups, usually a
            :class:`t2t.server.storage.Store`.
    """

    def __init__(
        self, config: RelayConfig, key: KeyPair, certificate: bytes, store: RelayStore
    ) -> None:
        self.config = config
        self.protocol = RelayProtocol(
            key,
            certificate,
            store,
            resume_ttl=config.resume_ttl,
            max_accounts=config.max_accounts,
        )
        self.port: int | None = None
        self._key = key
        self._connections: dict[int, Outbox] = {}
        self._ids = itertools.count(1)
        self._hash_limiter = trio.CapacityLimiter(config.hash_threads)
        self._roster_changed = trio.Event()
        self._shutting_down = False
        self._all_closed = trio.Event()
        self._stop_by = math.inf  # trio time by which a shutdown ends every closing handshake
        self.rejected_frames: Counter[int] = Counter()  # close code -> connections closed with it
        self._pending_hashes = 0  # password checks queued or running

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept connections until cancelled, then close each one with 1001.

        Reports the bound port through ``task_status`` once it is listening.

        Raises:
            ListenError: the listening socket could not be bound.
        """
        config = self.config
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._publish_rosters, nursery)
                listeners = await open_listeners(config.host, config.port, config.ssl_context)
                self.port = listening_port(listeners)
                await nursery.start(
                    lambda task_status: serve_websockets(
                        self._handle,
                        listeners,
                        handler_nursery=nursery,
                        max_message_size=config.max_message_size,
                        connect_timeout=config.close_timeout,
                        task_status=task_status,
                    )
                )
                scheme = "ws" if config.ssl_context is None else "wss"
                log.info(
                    "relay listening on %s://%s:%d certificate_key=%s",
                    scheme,
                    _format_host(config.host),
                    self.port,
                    self._key.public.fingerprint(),
                )
                task_status.started(self.port)
        finally:
            if self.port is not None:  # else it never listened, and the caller reports why
                log.info("relay stopped")

    def shutdown(self, grace: float = math.inf) -> None:
        """Start closing every connection with 1001 and a signed shutdown notice.

        Closing handshakes still open ``grace`` seconds from now are cut
        short, so a caller that cancels :meth:`serve` after ``grace`` seconds
        is not held up by peers that no longer read.
        """
        self._shutting_down = True
        self._stop_by = trio.current_time() + grace
        for conn in list(self._connections.values()):
            notice = self.protocol.shutdown_notice(conn.conn_id)
            if notice is not None:
                conn.enqueue(notice)
            conn.close(CLOSE_GOING_AWAY, "relay shutting down")

    def _shutting_down_now(self) -> bool:
        # A method, not an attribute read, so that type checkers do not treat
        # the flag as constant after an early check.
        return self._shutting_down

    async def wait_all_closed(self) -> None:
        """Return once no connection is open."""
        while self._connections:
            self._all_closed = trio.Event()
            await self._all_closed.wait()

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    # Per connection ----------------------------------------------------------

    async def _handle(self, request: WebSocketRequest, stream: TimestampedStream) -> None:
        if self._shutting_down_now():
            await request.reject(503, body=b"relay shutting down")
            return
        ws = await request.accept()
        conn = Outbox(next(self._ids), ws, self.config.queue_size)
        self._connections[conn.conn_id] = conn
        log.info("connection opened conn=%d remote=%s", conn.conn_id, stream.peer)
        try:
            conn.enqueue(self.protocol.connect(conn.conn_id))
            with conn.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read, conn, nursery.cancel_scope)
                    nursery.start_soon(self._write, conn, nursery.cancel_scope)
                    nursery.start_soon(self._time_out, conn, stream)
        except Exception:
            # A bug triggered by one connection must not take down the relay's
            # nursery and every other connection with it, so log and close.
            log.exception("connection failed conn=%d", conn.conn_id)
            conn.closing = True
            conn.close_code, conn.close_reason = CLOSE_INTERNAL_ERROR, "internal error"
        except BaseException:
            # Cancelled from outside the connection: the relay is stopping.
            if not conn.closing:
                conn.closing = True
                conn.close_code, conn.close_reason = CLOSE_GOING_AWAY, "relay shutting down"
            raise
        finally:
            user = self.protocol.user_of(conn.conn_id)
            self.protocol.disconnect(conn.conn_id)
            if self.protocol.roster_dirty:
                self._roster_changed.set()
            # Finish the closing handshake before reporting the connection
            # gone: a shutdown waits for that report and then cancels the
            # tasks that would read the peer's reply.
            close_by = min(trio.current_time() + self.config.close_timeout, self._stop_by)
            with trio.CancelScope(shield=True), trio.move_on_at(close_by):
                await ws.aclose(conn.close_code, conn.close_reason)
            del self._connections[conn.conn_id]
            if not self._connections:
                self._all_closed.set()
            log.info(
                "connection closed conn=%d user=%s code=%s reason=%r",
                conn.conn_id,
                user,
                conn.close_code,
                conn.close_reason,
            )

    async def _read(self, conn: Outbox, scope: trio.CancelScope) -> None:
        try:
            while not conn.closing:
                data = await conn.ws.get_message()
                await self._apply(conn, self.protocol.receive(conn.conn_id, data))
        except ConnectionClosed as exc:
            if not conn.closing:
                conn.closing = True
                code, conn.close_reason = close_details(exc.reason)
                conn.close_code = CLOSE_NORMAL if code is None else code
                if code == CLOSE_MESSAGE_TOO_BIG:
                    # trio-websocket enforces max_message_size and closes by itself.
                    self._log_rejection(conn.conn_id, code, conn.close_reason)
                scope.cancel()

    async def _apply(self, conn: Outbox, actions: list[Action]) -> None:
        pending = list(actions)
        last_data, last_wire = b"", b""
        # One deadline for all the sends of this batch, so that several
        # stalled recipients delay the sender by send_timeout in total.
        deadline = trio.current_time() + self.config.send_timeout
        while pending:
            action = pending.pop(0)
            match action:
                case Send(conn_id, data):
                    # A fanout is a run of sends of one payload: frame it once.
                    if data is not last_data:
                        last_data, last_wire = data, frame_binary(data)
                    await self._send(conn_id, data, last_wire, deadline)
                case Forward(conn_ids, data, sender, ack):
                    # One framing for every recipient; the sender's ack
                    # goes out once the last copy is written or dropped.
                    wire = frame_binary(data)
                    delivery = Delivery(partial(self._acknowledge, sender, ack), deadline)
                    try:
                        for conn_id in conn_ids:
                            await self._send(conn_id, data, wire, deadline, delivery)
                    finally:
                        delivery.done()
                case Close(conn_id, code, reason):
                    self._close(conn_id, code, reason)
                case CheckPassword():
                    if self._pending_hashes >= self.config.max_pending_logins:
                        self.protocol.check_abandoned(action.conn_id)
                        self._close(
                            action.conn_id,
                            CLOSE_TRY_AGAIN_LATER,
                            "relay busy: too many logins in progress; try again later",
                        )
                        continue
                    pending.extend(await self._check_password(action))
                    deadline = trio.current_time() + self.config.send_timeout
        if self.protocol.roster_dirty:
            self._roster_changed.set()

    async def _check_password(self, action: CheckPassword) -> list[Action]:
        cost = self.config.hash_cost
        password = action.password
        self._pending_hashes += 1
        try:
            # Shielded: the outcome must reach the protocol even if the
            # connection closes meanwhile, so failed guesses are counted.
            with trio.CancelScope(shield=True):
                if action.password_hash is None:
                    new_hash = await trio.to_thread.run_sync(
                        hash_password, password, cost, limiter=self._hash_limiter
                    )
                    ok = True
                else:
                    new_hash = None
                    ok = await trio.to_thread.run_sync(
                        verify_password, action.password_hash, password, limiter=self._hash_limiter
                    )
        finally:
            self._pending_hashes -= 1
        return self.protocol.password_checked(
            action.conn_id, ok=ok, new_hash=new_hash, password=password
        )

    async def _send(
        self,
        conn_id: int,
        data: bytes,
        wire: bytes | None = None,
        deadline: float | None = None,
        delivery: Delivery | None = None,
    ) -> None:
        """Queue ``data`` for a connection, waiting while its queue is full.

        Waiting here stalls the task that produced the frame (usually the
        sender's reader), which stops reading from the sender: that is the
        backpressure a fast sender feels. A queue still full at ``deadline``
        (``send_timeout`` from now by default) belongs to a peer that is not
        reading, so that peer is dropped and memory stays bounded.
        """
        conn = self._connections.get(conn_id)
        if conn is None or conn.enqueue(data, wire, delivery):
            return
        if deadline is None:
            deadline = trio.current_time() + self.config.send_timeout
        with trio.move_on_at(deadline):
            await conn.put(data, wire, delivery)
            return
        self._drop_slow_consumer(
            conn,
            f"{self.config.queue_size} frames queued for {self.config.send_timeout:g} s",
        )

    def _drop_slow_consumer(self, conn: Outbox, why: str) -> None:
        """Close a peer that does not take its frames, dropping what is queued for it."""
        if conn.closing:
            return  # another task already dropped it
        log.warning(
            "dropping slow consumer conn=%d user=%s: %s",
            conn.conn_id,
            self.protocol.user_of(conn.conn_id),
            why,
        )
        self.rejected_frames[CLOSE_POLICY_VIOLATION] += 1
        conn.abort(CLOSE_POLICY_VIOLATION, f"slow consumer: {why}")

    def _close(self, conn_id: int, code: int, reason: str) -> None:
        conn = self._connections.get(conn_id)
        if conn is None:
            return
        if code != CLOSE_NORMAL:
            self._log_rejection(conn_id, code, reason)
        conn.close(code, reason)

    def _log_rejection(self, conn_id: int, code: int, reason: str) -> None:
        self.rejected_frames[code] += 1
        log.warning(
            "rejected frame conn=%d user=%s code=%d reason=%r",
            conn_id,
            self.protocol.user_of(conn_id),
            code,
            reason,
        )

    async def _write(self, conn: Outbox, scope: trio.CancelScope) -> None:
        try:
            await conn.write_all(self.config.send_timeout)
        except StalledWrite as exc:
            self._drop_slow_consumer(conn, str(exc))
        except ConnectionClosed as exc:
            if not conn.closing:
                conn.closing = True
                code, conn.close_reason = close_details(exc.reason)
                conn.close_code = CLOSE_NORMAL if code is None else code
        scope.cancel()

    def _acknowledge(self, conn_id: int, ack: bytes) -> None:
        """Queue a sender's acknowledgement once every copy of its message is out."""
        conn = self._connections.get(conn_id)
        if conn is None or conn.hold_ack(ack):
            return
        self._drop_slow_consumer(conn, f"{MAX_HELD_ACKS} acknowledgements not read")

    async def _time_out(self, conn: Outbox, stream: TimestampedStream) -> None:
        """Close the connection at the login deadline or once it is idle.

        Any received bytes count as activity, WebSocket pings included, so on
        a connection that only heartbeats this task wakes about once per
        ``idle_timeout``, not once per ping.
        """
        config = self.config
        login_deadline = trio.current_time() + config.login_timeout
        while True:
            now = trio.current_time()
            idle_deadline = stream.last_received + config.idle_timeout
            if self.protocol.state_of(conn.conn_id) in (
                ConnState.AWAITING_LOGIN,
                ConnState.VERIFYING,
            ):
                if now >= login_deadline:
                    conn.close(
                        CLOSE_POLICY_VIOLATION, f"no login within {config.login_timeout:g} s"
                    )
                    return
                wake = min(login_deadline, idle_deadline)
            else:
                wake = idle_deadline
            if now >= idle_deadline:
                conn.close(CLOSE_NORMAL, f"idle for {config.idle_timeout:g} s")
                return
            await trio.sleep_until(max(wake, now + 0.001))

    # Roster --------------------------------------------------------------------

    async def _publish_rosters(self, nursery: trio.Nursery) -> None:
        while True:
            await self._roster_changed.wait()
            # Gather a burst of logins and logouts into one push.
            await trio.sleep(self.config.roster_debounce)
            self._roster_changed = trio.Event()
            try:
                frame = self.protocol.publish_roster()
            except sqlite3.Error as exc:
                log.error("cannot store the roster version, retrying in 1 s: %s", exc)
                self.protocol.roster_dirty = True
                self._roster_changed.set()
                await trio.sleep(1)
                continue
            if frame is None:
                continue
            wire = frame_binary(frame)
            for conn_id in self.protocol.active_connections():
                conn = self._connections.get(conn_id)
                if conn is None or conn.enqueue(frame, wire):
                    continue
                # Never wait here: one stalled peer must not hold up the
                # roster, and with it every login, for everyone else. One
                # task per connection delivers only the newest roster.
                if conn.pending_roster is None:
                    nursery.start_soon(self._deliver_roster, conn)
                conn.pending_roster = (frame, wire)

    async def _deliver_roster(self, conn: Outbox) -> None:
        while conn.pending_roster is not None and not conn.closing:
            frame, wire = conn.pending_roster
            await self._send(conn.conn_id, frame, wire)
            if conn.pending_roster == (frame, wire):
                conn.pending_roster = None


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
