"""The trio client's connection: :class:`Client` and its tasks.

:func:`t2t.client.connect.connect` opens the WebSocket, logs in and runs a
:class:`Client` inside its nursery.

Task tree, all inside the nursery that :func:`connect` opens::

    connect
    ├── trio-websocket's own connection tasks
    ├── reader     (get_message -> protocol -> replies, events)
    ├── dispatch   (runs callbacks, then feeds client.events())
    └── heartbeat  (WebSocket ping every heartbeat_interval, expect its pong)

Leaving the ``async with`` block cancels all of them and closes the
WebSocket; it never waits for unread events.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from t2t.client.state import (
    save_group_keys,
)
from t2t.errors import (
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    ConflictError,
    DisconnectedError,
    ProtocolError,
    SendError,
    T2TError,
    close_details,
)
from t2t.events import (
    ClientEvent,
    Conflict,
    Disconnected,
    Event,
    InviteReceived,
    MessageReceived,
    MessageRejected,
    RosterChanged,
)
from t2t.frames import validate_name
from t2t.protocol.client import (
    ClientProtocol,
    ClientState,
    InviteOffer,
    Outgoing,
    PongReceived,
    Reply,
    RequestKey,
    message_key,
)

log = logging.getLogger("t2t.client")

DEFAULT_MAX_MESSAGE_SIZE: Final = 64 * 1024  # bytes, the relay's default limit
MIN_INBOUND_MESSAGE_SIZE: Final = 4 * 1024 * 1024  # bytes; a roster of about 50,000 accounts
# Unacknowledged group messages per client. Under overload a message waits
# behind about (senders x window) others, so a small window keeps latency
# low; docs/benchmarks.md measures the trade against throughput.
DEFAULT_WINDOW: Final = 8
DEFAULT_EVENT_BUFFER: Final = 1024  # events queued for the application
# Seconds between WebSocket pings. Proxies and load balancers often close a
# connection that carries no data for 60 s (the default of nginx's
# proxy_read_timeout and of AWS load balancers' idle timeout), so ping at
# half that. Each ping cost the relay about 0.35 ms of CPU on the benchmark
# machine in docs/benchmarks.md.
DEFAULT_HEARTBEAT_INTERVAL: Final = 30.0
DEFAULT_HEARTBEAT_TIMEOUT: Final = 10.0  # seconds to wait for each pong
ROSTER_GRACE: Final = 1.0  # seconds invite() waits for an unknown peer to appear in the roster

_E = TypeVar("_E", bound=Event)
Callback = Callable[[Any], Awaitable[None] | None]
InviteDecision = Callable[[InviteReceived], Awaitable[bool] | bool]


class _Pending:
    """A request waiting for the relay's reply."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: T2TError | None = None


class Client:
    """A logged-in connection to a relay. Create it with :func:`connect`."""

    def __init__(
        self,
        ws: WebSocketConnection,
        protocol: ClientProtocol,
        *,
        group_keys_file: Path,
        window: int,
        event_buffer: int,
        request_timeout: float,
        heartbeat_interval: float,
        heartbeat_timeout: float,
        accept_invite: InviteDecision | None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self._ws = ws
        self._max_message_size = max_message_size
        self._protocol = protocol
        self._group_keys_file = group_keys_file
        self._window = trio.Semaphore(window)
        self._request_timeout = request_timeout
        self._heartbeat_interval = heartbeat_interval
        self._heartbeat_timeout = heartbeat_timeout
        self.accept_invite = accept_invite
        self._pending: dict[RequestKey, _Pending] = {}
        self._callbacks: dict[type[Event], list[Callback]] = {}
        self._dispatch_send, self._dispatch_receive = trio.open_memory_channel[ClientEvent](
            event_buffer
        )
        self._events_send, self._events_receive = trio.open_memory_channel[ClientEvent](
            event_buffer
        )
        self._events_wanted = False
        self._roster_updated = trio.Event()
        self._undecided: set[str] = set()  # groups whose invite awaits the decision callback
        self._disconnected: Disconnected | None = None
        self._cancel: trio.CancelScope | None = None

    # Public API ------------------------------------------------------------

    @property
    def user(self) -> str:
        return self._protocol.user

    @property
    def roster(self) -> dict[str, bool]:
        """Users in the latest verified roster, mapped to whether they are online."""
        return {user: entry.online for user, entry in self._protocol.roster.items()}

    @property
    def groups(self) -> list[str]:
        """Groups whose key this client holds."""
        return sorted(self._protocol.group_keys)

    @property
    def closed(self) -> Disconnected | None:
        """The disconnect event once the connection has closed, else None."""
        return self._disconnected

    async def send(self, group: str, text: str) -> bytes:
        """Encrypt, sign and send ``text`` to ``group``; return its message id.

        Waits until the relay acknowledges the message, which it does once
        the message is written to every online member (or that member was
        dropped as too slow). At most ``window`` messages are unacknowledged
        at once. A further ``send`` waits for a free slot, so a fast sender
        feels the relay's pace instead of queueing without limit.

        Raises:
            SendError: ``no-group-key`` if we hold no key for ``group``, or the
                relay's refusal (for example ``not-a-member``).
            DisconnectedError: the connection closed first.
            TimeoutError: no acknowledgement within ``request_timeout`` seconds
                of sending. Time spent waiting for a window slot does not
                count. That wait ends when a slot frees or the connection
                closes, and the heartbeat closes it if the relay stops
                responding.
        """
        if group not in self._protocol.group_keys:
            # A checkpoint even on failure, so a loop that retries cannot
            # starve the other tasks.
            await trio.lowlevel.checkpoint()
            raise SendError(
                "no-group-key",
                f"no key for group {group!r}; create it with invite() or get invited",
            )
        async with self._window:
            msg_id, data = self._protocol.seal(group, text)
            if len(data) > self._max_message_size:
                # The relay would close the whole connection with 1009, so
                # refuse this one message here instead.
                await trio.lowlevel.checkpoint()
                raise SendError(
                    "message-too-large",
                    f"encrypted message is {len(data)} bytes, over the {self._max_message_size} "
                    "byte limit; split the text or raise max_message_size on both sides",
                )
            await self._request(message_key(msg_id), data)
        return msg_id

    async def invite(self, peer: str, group: str) -> None:
        """Invite ``peer`` into ``group``, creating the group if we hold no key for it.

        Raises:
            SendError: ``unknown-user`` if ``peer`` is not in the roster, or the
                relay's refusal (for example ``offline-target``).
            DisconnectedError: the connection closed first.
        """
        with trio.move_on_after(ROSTER_GRACE):
            # A peer who has just logged in may be in the next roster push.
            while peer not in self._protocol.roster:
                await self._roster_updated.wait()
        if peer not in self._protocol.roster:
            raise SendError("unknown-user", f"user {peer!r} is not in the roster")
        if group not in self._protocol.group_keys:
            validate_name(group, "group")
            self._protocol.create_group(group)
            try:
                await self._request(
                    ("subscribe", group), self._protocol.subscribe(group, create=True)
                )
            except BaseException:
                # The relay did not create the group (for example another user
                # owns that id), so the new key is useless: forget it.
                self._protocol.group_keys.pop(group, None)
                raise
            save_group_keys(self._group_keys_file, self._protocol.group_keys)
            log.info("created group %s", group)
        await self._request(("invite", group, peer), self._protocol.invite(peer, group))

    def on(self, event_type: type[_E], callback: Callable[[_E], Awaitable[None] | None]) -> None:
        """Call ``callback(event)`` for every event of ``event_type`` (or a subclass).

        Callbacks may be plain functions or coroutine functions. They run one
        at a time in the dispatch task. An exception in a callback is logged
        and does not affect the client.
        """
        self._callbacks.setdefault(event_type, []).append(callback)

    async def events(self) -> AsyncIterator[ClientEvent]:
        """Yield every event in order, ending with :class:`Disconnected`.

        Events are buffered from the moment of login, up to ``event_buffer``
        of them. Until the first call of events(), a full buffer drops its
        oldest event. After that, an application that falls ``event_buffer``
        events behind is disconnected as a slow consumer, so memory stays
        bounded.
        """
        self._events_wanted = True
        async for event in self._events_receive:
            yield event
            if isinstance(event, Disconnected):
                return
        if self._disconnected is not None:
            # The dispatcher stopped before it could forward the disconnect.
            yield self._disconnected

    # Connection management ------------------------------------------------

    async def _handshake(self) -> None:
        """Read frames until logged in with a verified roster."""
        while self._protocol.state is not ClientState.ACTIVE:
            try:
                data = await self._ws.get_message()
            except ConnectionClosed as exc:
                raise DisconnectedError(*close_details(exc.reason)) from None
            for output in self._protocol.receive(data):
                if isinstance(output, Outgoing):
                    await self._ws.send_message(output.data)
                else:
                    self._handle(output)  # frames held until the first roster

    async def _subscribe_known_groups(self) -> None:
        """Resubscribe to every group in the key file. Needs the reader running."""
        for group in self.groups:
            try:
                await self._request(("subscribe", group), self._protocol.subscribe(group))
            except (SendError, TimeoutError) as exc:
                log.warning("cannot subscribe to group %s: %s", group, exc)

    async def _run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                nursery.start_soon(self._read)
                nursery.start_soon(self._dispatch)
                nursery.start_soon(self._heartbeat)
                task_status.started()
        finally:
            # A local failure (slow application) stops the tasks first; tell
            # the relay too instead of leaving the socket open.
            if self._disconnected is not None and self._ws.closed is None:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await self._ws.aclose(
                        self._disconnected.code or CLOSE_NORMAL, self._disconnected.reason
                    )

    async def _read(self) -> None:
        try:
            while True:
                data = await self._ws.get_message()
                try:
                    outputs = self._protocol.receive(data)
                except ProtocolError as exc:
                    log.warning("closing connection: relay broke the protocol: %s", exc.reason)
                    await self._close(exc.code, exc.reason)
                    return
                for output in outputs:
                    if isinstance(output, Outgoing):
                        await self._ws.send_message(output.data)
                    else:
                        self._handle(output)
        except ConnectionClosed as exc:
            self._finish(*close_details(exc.reason))

    def _handle(self, output: object) -> None:
        match output:
            case Reply(key, error):
                self._resolve(key, error)
            case InviteOffer():
                self._on_invite_offer(output)
            case PongReceived():
                pass  # the heartbeat uses WebSocket pings, so a Pong frame needs no action
            case Conflict():
                has_handler = self._events_wanted or any(
                    issubclass(Conflict, kind) for kind in self._callbacks
                )
                if not has_handler:
                    raise ConflictError(output.message)
                self._queue_event(output)
            case RosterChanged():
                self._roster_updated.set()
                self._roster_updated = trio.Event()
                self._queue_event(output)
            case Event():
                self._queue_event(output)  # type: ignore[arg-type]

    def _on_invite_offer(self, offer: InviteOffer) -> None:
        keys = self._protocol.group_keys
        held = keys.get(offer.group)
        if held is not None and held != offer.group_key:
            # Any member can invite any other member, so without this check
            # one member could swap another's key for a group they share.
            self._queue_event(
                MessageRejected(
                    offer.group,
                    offer.inviter,
                    "invite carries a different key for a group this client already holds",
                )
            )
            return
        if offer.group in self._undecided:
            return  # the same invite again while the first awaits its decision
        if held is None:
            # Use the key at once, before the dispatch task calls the decision
            # callback, so messages that follow the invite can be opened. A
            # declined invite removes it again.
            keys[offer.group] = offer.group_key
            self._undecided.add(offer.group)
        self._queue_event(offer)

    def _resolve(self, key: RequestKey, error: SendError | None) -> None:
        if key[0] == "group-error":
            # Match the oldest pending invite or subscribe for this group.
            key = next(
                (k for k in self._pending if k[0] in ("invite", "subscribe") and k[1] == key[1]),
                key,
            )
        pending = self._pending.pop(key, None)
        if pending is None:
            log.debug("reply for no pending request: %s", key)
            return
        pending.error = error
        pending.done.set()

    async def _request(self, key: RequestKey, data: bytes) -> None:
        if self._disconnected is not None:
            raise DisconnectedError(self._disconnected.code, self._disconnected.reason)
        pending = self._pending[key] = _Pending()
        try:
            await self._ws.send_message(data)
        except ConnectionClosed as exc:
            self._pending.pop(key, None)
            raise DisconnectedError(*close_details(exc.reason)) from None
        with trio.move_on_after(self._request_timeout) as timeout:
            await pending.done.wait()
        if timeout.cancelled_caught:
            self._pending.pop(key, None)
            raise TimeoutError(
                f"no reply from the relay within {self._request_timeout:g} s for {key}"
            )
        if pending.error is not None:
            raise pending.error

    def _queue_event(self, event: ClientEvent | InviteOffer) -> None:
        try:
            self._dispatch_send.send_nowait(event)  # type: ignore[arg-type]
        except trio.WouldBlock:
            self._slow_application()

    def _slow_application(self) -> None:
        reason = "application is not consuming events fast enough; event buffer full"
        log.error("disconnecting: %s", reason)
        self._finish(CLOSE_POLICY_VIOLATION, reason)
        if self._cancel is not None:
            self._cancel.cancel()

    async def _dispatch(self) -> None:
        # Closing the events channel on every exit, cancellation included,
        # ends any events() loop instead of leaving it waiting forever.
        with self._events_send:
            async for item in self._dispatch_receive:
                event: ClientEvent
                if isinstance(item, InviteOffer):
                    event = await self._decide_invite(item)
                elif (
                    isinstance(item, MessageReceived)
                    and item.group not in self._protocol.group_keys
                ):
                    continue  # opened while its invite was pending, then declined
                else:
                    event = item
                await self._run_callbacks(event)
                if not self._publish_event(event):
                    self._slow_application()
                    return

    def _publish_event(self, event: ClientEvent) -> bool:
        """Buffer ``event`` for events(). Returns False if a reader fell behind."""
        try:
            self._events_send.send_nowait(event)
        except trio.WouldBlock:
            if self._events_wanted:
                return False
            # events() has not been called yet, and the application may use
            # only callbacks, so keep the newest events instead of disconnecting.
            self._events_receive.receive_nowait()
            self._events_send.send_nowait(event)
        return True

    async def _decide_invite(self, offer: InviteOffer) -> InviteReceived:
        if offer.group not in self._undecided:
            # Re-invited into a group whose key we already hold: nothing to decide.
            return InviteReceived(offer.group, offer.inviter, True)
        accepted = True
        if self.accept_invite is not None:
            try:
                result = self.accept_invite(InviteReceived(offer.group, offer.inviter, False))
                accepted = bool(await result) if inspect.isawaitable(result) else bool(result)
            except Exception:
                log.exception(
                    "invite decision callback failed; declining invite to %s", offer.group
                )
                accepted = False
        # The relay subscribed this session when it forwarded the invite, and
        # the reader installed the key, so only a decline has work to do.
        self._undecided.discard(offer.group)
        if accepted:
            save_group_keys(self._group_keys_file, self._protocol.group_keys)
        else:
            self._protocol.group_keys.pop(offer.group, None)
            with contextlib.suppress(ConnectionClosed):
                await self._ws.send_message(self._protocol.unsubscribe(offer.group))
        log.info(
            "invite to group %s from %s %s",
            offer.group,
            offer.inviter,
            "accepted" if accepted else "declined",
        )
        return InviteReceived(offer.group, offer.inviter, accepted)

    async def _run_callbacks(self, event: ClientEvent) -> None:
        for kind, callbacks in self._callbacks.items():
            if not isinstance(event, kind):
                continue
            for callback in callbacks:
                try:
                    result = callback(event)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("callback %r failed on %s", callback, type(event).__name__)

    async def _heartbeat(self) -> None:
        # A WebSocket ping (RFC 6455) every heartbeat_interval seconds. The
        # relay's trio-websocket sends the pong from its own reader task, so
        # this costs the relay less CPU than a Ping frame. ping() returns once
        # the pong arrives. connect() keeps heartbeat_timeout shorter than the
        # interval, so at most one ping is in flight.
        next_ping = trio.current_time() + self._heartbeat_interval
        while True:
            await trio.sleep_until(next_ping)
            # Counted from now, so pings after a stalled event loop do not bunch up.
            next_ping = trio.current_time() + self._heartbeat_interval
            try:
                with trio.move_on_after(self._heartbeat_timeout) as timer:
                    await self._ws.ping()
            except ConnectionClosed:
                return
            if timer.cancelled_caught:
                if self._ws.closed is not None:
                    # The connection closed first. trio-websocket 0.12 does not
                    # wake a pending ping() on close, so the wait ran out.
                    return
                reason = f"no heartbeat reply within {self._heartbeat_timeout:g} s"
                log.warning("closing connection: %s", reason)
                await self._close(CLOSE_NORMAL, reason)
                return

    async def _close(self, code: int, reason: str) -> None:
        # Record the reason first: aclose() wakes the reader, which would
        # otherwise record trio-websocket's generic local close reason.
        self._finish(code, reason)
        with trio.move_on_after(2):
            await self._ws.aclose(code, reason)

    def _finish(self, code: int | None, reason: str) -> None:
        """Record the disconnect, fail pending requests and end the event stream."""
        if self._disconnected is not None:
            return
        self._protocol.state = ClientState.CLOSED
        self._disconnected = Disconnected(code, reason)
        log.info("disconnected user=%s code=%s reason=%r", self.user, code, reason)
        for pending in self._pending.values():
            pending.error = DisconnectedError(code, reason)
            pending.done.set()
        self._pending.clear()
        # The dispatcher delivers Disconnected to callbacks after what is queued.
        with contextlib.suppress(trio.WouldBlock):
            self._dispatch_send.send_nowait(self._disconnected)
        self._dispatch_send.close()
