"""Raw-frame clients: load without client-side crypto per message.

A raw client logs in to a t2t relay with the real handshake (the relay must
see a valid login), then sends pre-encoded :class:`~t2t.frames.GroupMessage`
frames whose box is random bytes. The relay never opens boxes, so this
measures the relay alone. Against the reference relay there is no login at
all: the same frames are forwarded blindly.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from bench.wire import WireClosed, WireSocket, open_wire
from t2t.client.state import load_or_create_identity
from t2t.crypto.keys import KeyPair, load_public_identity
from t2t.frames import (
    MESSAGE_ID_SIZE,
    Ack,
    Error,
    GroupMessage,
    Invite,
    Invited,
    Subscribe,
    Subscribed,
    decode_frame,
    encode,
)
from t2t.protocol.client import ClientProtocol, ClientState, Outgoing


class RawClient:
    """One WebSocket connection that speaks frames directly.

    ``on_message(msg_id, receive_time)`` is called for every group message
    received; acks release the send window.
    """

    def __init__(self, ws: WireSocket, user: str, window: int | None) -> None:
        self.ws = ws
        self.user = user
        self.window = trio.Semaphore(window) if window else None
        self.on_message: Callable[[bytes, float], None] = lambda msg_id, at: None
        self._replies: dict[object, trio.Event] = {}
        self.errors: list[Error] = []

    def message_frame(self, group: str, body_size: int, msg_id: bytes) -> bytes:
        # SecretBox adds 40 bytes (nonce and MAC) and the signed envelope
        # about 130 more, so a random box of this size matches a real one.
        box = secrets.token_bytes(body_size + 170)
        return encode(GroupMessage(group, self.user, msg_id, box))

    async def send(self, data: bytes) -> None:
        if self.window is not None:
            await self.window.acquire()
        await self.ws.send_message(data)

    async def request(self, key: object, data: bytes) -> None:
        event = self._replies[key] = trio.Event()
        await self.ws.send_message(data)
        with trio.fail_after(30):
            await event.wait()

    async def create_group(self, group: str) -> None:
        await self.request(("subscribe", group), encode(Subscribe(group, create=True)))

    async def invite(self, target: str, group: str) -> None:
        # The relay checks membership, not cryptography, so filler bytes do.
        frame = Invite(group, self.user, target, secrets.token_bytes(80), bytes(64))
        await self.request(("invite", group, target), encode(frame))

    async def read(self) -> None:
        """Read until the connection closes, timing every group message."""
        clock = trio.current_time
        try:
            while True:
                batch = await self.ws.get_messages()
                at = clock()
                for data in batch:
                    frame = decode_frame(data)
                    if isinstance(frame, GroupMessage):
                        self.on_message(frame.msg_id, at)
                    elif isinstance(frame, Ack):
                        if self.window is not None:
                            self.window.release()
                    elif isinstance(frame, Subscribed):
                        self._wake(("subscribe", frame.group))
                    elif isinstance(frame, Invited):
                        self._wake(("invite", frame.group, frame.target))
                    elif isinstance(frame, Error):
                        self.errors.append(frame)
        except WireClosed:
            return

    def _wake(self, key: object) -> None:
        event = self._replies.pop(key, None)
        if event is not None:
            event.set()


def message_id(sender: int, sequence: int) -> bytes:
    """Return a message id that encodes the sender and sequence number."""
    return sender.to_bytes(4, "big") + sequence.to_bytes(8, "big") + bytes(MESSAGE_ID_SIZE - 12)


@asynccontextmanager
async def raw_session(
    url: str,
    user: str,
    *,
    ca_file: Path | None,
    state_dir: Path,
    window: int | None,
) -> AsyncIterator[RawClient]:
    """Open a raw connection; log in first when ``ca_file`` is given (t2t relays)."""
    ws = await open_wire(url)
    try:
        if ca_file is not None:
            await _log_in(ws, user, ca_file, state_dir)
        yield RawClient(ws, user, window)
    finally:
        with trio.CancelScope(shield=True):
            await ws.aclose()


async def _log_in(ws: WireSocket, user: str, ca_file: Path, state_dir: Path) -> None:
    identity: KeyPair = load_or_create_identity(state_dir / f"{user}.key")
    protocol = ClientProtocol(
        user=user,
        password=f"bench-{user}",
        identity=identity,
        ca_key=load_public_identity(ca_file).sign_key,
        relay_name="127.0.0.1",
        group_keys={},
    )
    with trio.fail_after(60):
        while protocol.state is not ClientState.ACTIVE:
            for output in protocol.receive(await ws.get_message()):
                if isinstance(output, Outgoing):
                    await ws.send_message(output.data)
