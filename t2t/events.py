"""Events that a client delivers to the application.

Every event is a frozen msgspec struct. Iterate them with
``client.events()`` or register callbacks with ``client.on(EventType, fn)``.
"""

from __future__ import annotations

from typing import Literal

import msgspec


class Event(msgspec.Struct, frozen=True):
    """Base class of every client event."""


class MessageReceived(Event, frozen=True):
    """A group message whose sender signature verified against the roster."""

    group: str
    sender: str  # verified: the message was signed by this user's identity key
    msg_id: bytes
    sent_at: float  # Unix time in seconds, from the sender's clock
    text: str


class MessageRejected(Event, frozen=True):
    """A group message, invite or relay frame that failed a check and was dropped."""

    group: str | None
    sender: str | None
    reason: str


class InviteReceived(Event, frozen=True):
    """A verified invite. ``accepted`` is True if the group key was stored."""

    group: str
    inviter: str
    accepted: bool


class RosterChanged(Event, frozen=True):
    """A newer relay-signed roster arrived."""

    version: int
    users: dict[str, bool]  # user id -> online


class Conflict(Event, frozen=True):
    """The relay rejected our login or replaced this session with a newer one."""

    kind: Literal["conflict", "replaced"]
    message: str


class Disconnected(Event, frozen=True):
    """The connection closed. It is always the last event."""

    code: int | None
    reason: str


ClientEvent = (
    MessageReceived | MessageRejected | InviteReceived | RosterChanged | Conflict | Disconnected
)
