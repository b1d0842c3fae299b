"""Helpers for relay tests that speak the wire protocol by hand.

:class:`RawSession` logs in over a plain trio-websocket connection with
hand-built frames, so a test can send what the real client never would
(forged senders, altered boxes, frames in the wrong state) and can see every
frame the relay sends. :class:`Inbox` collects a real client's events so a
test can wait for one of them.

Every connection goes to a relay the test started on 127.0.0.1.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from t2t.client import Client
from t2t.crypto.cert import verify_certificate
from t2t.crypto.group import new_group_key, seal_invite, seal_message
from t2t.crypto.keys import KeyPair, PublicIdentity, load_public_identity
from t2t.crypto.session import seal_login, verify_roster, verify_welcome
from t2t.events import Event
from t2t.frames import (
    Frame,
    GroupMessage,
    Hello,
    Ping,
    Pong,
    Roster,
    RosterEntry,
    Subscribe,
    Subscribed,
    Welcome,
    decode_frame,
    encode,
)

RELAY_NAME = "127.0.0.1"  # the name in the development certificate of tests/support.py
WAIT = 10.0  # seconds any single wait in these helpers may take

_F = TypeVar("_F")
_E = TypeVar("_E", bound=Event)


@asynccontextmanager
async def open_raw(url: str, **kwargs: Any) -> AsyncIterator[WebSocketConnection]:
    """Open a plain WebSocket to the relay with short connect and close timeouts."""
    kwargs.setdefault("connect_timeout", WAIT)
    kwargs.setdefault("disconnect_timeout", 1.0)
    async with open_websocket_url(url, **kwargs) as ws:
        yield ws


async def read_frame(ws: WebSocketConnection) -> Frame:
    with trio.fail_after(WAIT):
        return decode_frame(await ws.get_message())


async def wait_closed(ws: WebSocketConnection) -> int | None:
    """Read and drop frames until the relay closes the connection, then return the close code."""
    with trio.fail_after(WAIT):
        while True:
            try:
                await ws.get_message()
            except ConnectionClosed as exc:
                return exc.reason.code


@dataclass
class RawSession:
    """A logged-in connection driven frame by frame."""

    ws: WebSocketConnection
    user: str
    identity: KeyPair
    relay: PublicIdentity
    roster: dict[str, RosterEntry] = field(default_factory=dict)
    group_keys: dict[str, bytes] = field(default_factory=dict)
    _nonces: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def send(self, frame: Frame) -> None:
        await self.ws.send_message(encode(frame))

    async def next_frame(self) -> Frame:
        """Return the next frame that is not a roster. Rosters update :attr:`roster` on the way."""
        while True:
            frame = await read_frame(self.ws)
            if isinstance(frame, Roster):
                self._accept_roster(frame)
                continue
            return frame

    async def expect(self, kind: type[_F]) -> _F:
        frame = await self.next_frame()
        assert isinstance(frame, kind), f"expected {kind.__name__}, got {frame!r}"
        return frame

    async def sync(self) -> list[Frame]:
        """Ping the relay and return every non-roster frame that arrived before the pong.

        The relay queues frames per connection in order, so anything it
        routed to us before it handled the ping shows up in the result.
        """
        nonce = next(self._nonces)
        await self.send(Ping(nonce))
        before: list[Frame] = []
        while True:
            frame = await self.next_frame()
            if isinstance(frame, Pong) and frame.nonce == nonce:
                return before
            before.append(frame)

    async def wait_for_user(self, user: str) -> RosterEntry:
        """Read frames until a roster lists ``user`` as online, then return its entry."""
        with trio.fail_after(WAIT):
            while not (user in self.roster and self.roster[user].online):
                frame = await read_frame(self.ws)
                assert isinstance(frame, Roster), f"expected a roster, got {frame!r}"
                self._accept_roster(frame)
        return self.roster[user]

    async def subscribe(self, group: str, *, create: bool = False) -> Frame:
        """Subscribe to ``group`` and return the relay's reply (Subscribed or Error)."""
        await self.send(Subscribe(group, create))
        return await self.next_frame()

    async def create_group(self, group: str) -> bytes:
        reply = await self.subscribe(group, create=True)
        assert reply == Subscribed(group), f"cannot create group {group!r}: {reply!r}"
        key = self.group_keys[group] = new_group_key()
        return key

    async def invite(self, target: str, group: str) -> Frame:
        """Send a correctly signed invite and return the relay's reply."""
        entry = await self.wait_for_user(target)
        await self.send(
            seal_invite(
                self.group_keys[group],
                self.identity,
                group=group,
                inviter_id=self.user,
                target=target,
                target_box_key=entry.box_key,
            )
        )
        return await self.next_frame()

    def seal(self, group: str, text: str) -> GroupMessage:
        return seal_message(
            self.group_keys[group], self.identity, group=group, sender_id=self.user, body=text
        )

    def _accept_roster(self, frame: Roster) -> None:
        body = verify_roster(self.relay.sign_key, frame)
        self.roster = {entry.user: entry for entry in body.entries}


async def log_in(
    ws: WebSocketConnection, ca_file: Path, user: str, password: str | None = None
) -> RawSession:
    """Log ``user`` in by hand and wait for the first roster after the welcome."""
    hello = await read_frame(ws)
    assert isinstance(hello, Hello), f"expected hello, got {hello!r}"
    ca_key = load_public_identity(ca_file).sign_key
    body = verify_certificate(hello.certificate, ca_key, expected_name=RELAY_NAME)
    relay = PublicIdentity(body.sign_key, body.box_key)
    identity = KeyPair.generate()
    login = seal_login(identity, relay, hello.challenge, user, password or f"pw-{user}")
    await ws.send_message(encode(login))

    welcome = await read_frame(ws)
    assert isinstance(welcome, Welcome), f"expected welcome, got {welcome!r}"
    version = verify_welcome(relay.sign_key, hello.challenge, welcome).roster_version
    session = RawSession(ws, user, identity, relay)
    with trio.fail_after(WAIT):
        while True:
            roster = await read_frame(ws)
            assert isinstance(roster, Roster), f"expected a roster, got {roster!r}"
            if verify_roster(relay.sign_key, roster).version > version:
                session._accept_roster(roster)
                return session


@asynccontextmanager
async def raw_session(
    url: str, ca_file: Path, user: str, **kwargs: Any
) -> AsyncIterator[RawSession]:
    async with open_raw(url, **kwargs) as ws:
        yield await log_in(ws, ca_file, user)


class Inbox:
    """Every event of the given types that a real client delivers, in order."""

    def __init__(self, client: Client, *kinds: type[Event]) -> None:
        self.events: list[Event] = []
        self._changed = trio.Event()
        for kind in kinds:
            client.on(kind, self._add)

    def _add(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    def of(self, kind: type[_E]) -> list[_E]:
        return [event for event in self.events if isinstance(event, kind)]

    async def wait_for(
        self, kind: type[_E], predicate: Callable[[_E], bool] = lambda _: True
    ) -> _E:
        """Return the first event of ``kind`` matching ``predicate``, waiting if needed."""
        with trio.fail_after(WAIT):
            while True:
                for event in self.of(kind):
                    if predicate(event):
                        return event
                self._changed = trio.Event()
                await self._changed.wait()

    async def wait_count(self, kind: type[_E], count: int, timeout: float = WAIT) -> list[_E]:
        with trio.fail_after(timeout):
            while len(self.of(kind)) < count:
                self._changed = trio.Event()
                await self._changed.wait()
        return self.of(kind)
