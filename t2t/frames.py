"""Wire frames: one msgspec tagged union, encoded as MessagePack.

Each WebSocket binary message carries exactly one frame. A frame is a
MessagePack array whose first element is the tag (for example ``"msg"``),
followed by the fields in declaration order. Binary fields stay raw bytes.
The field constraints below are checked while decoding, so a frame that
``decode_frame`` returns is well-formed; semantic checks (state, signatures,
membership) happen in :mod:`t2t.protocol`.

Frames that the relay signs (welcome, roster, notice) carry an encoded body
and a signature over it, so the receiver verifies the exact bytes that were
signed before decoding them.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta

from t2t.errors import CLOSE_PROTOCOL_ERROR, ProtocolError

PROTOCOL_VERSION: Final = 1

KEY_SIZE: Final = 32  # Ed25519 and X25519 public keys, in bytes
SIGNATURE_SIZE: Final = 64  # Ed25519 signature, in bytes
CHALLENGE_SIZE: Final = 32  # login challenge, in bytes
MESSAGE_ID_SIZE: Final = 16  # random message id, in bytes
MAX_NAME_LENGTH: Final = 64  # user ids and group ids, in characters
MAX_PASSWORD_LENGTH: Final = 1024  # characters

# User and group ids: 1 to 64 characters of any script. Excluded, so that ids
# print unambiguously in logs: whitespace, C0 and C1 controls, characters that
# render as nothing (soft hyphen, zero-width, bidirectional and other format
# marks, variation selectors, tag characters, Hangul fillers), and the path
# separators / and \, because clients name state folders after user ids.
# Lookalikes from different scripts (Latin a, Cyrillic U+0430) are still allowed.
NAME_PATTERN: Final = (
    r"^[^\s\x00-\x1f\x7f-\x9f\xad/\\\u034f\u061c\u115f\u1160\u17b4\u17b5"
    r"\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f"
    r"\ufeff\uffa0\U000e0000-\U000e007f]+\Z"
)
Name = Annotated[str, Meta(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN)]
PublicKey = Annotated[bytes, Meta(min_length=KEY_SIZE, max_length=KEY_SIZE)]
Signature = Annotated[bytes, Meta(min_length=SIGNATURE_SIZE, max_length=SIGNATURE_SIZE)]
Challenge = Annotated[bytes, Meta(min_length=CHALLENGE_SIZE, max_length=CHALLENGE_SIZE)]
MessageId = Annotated[bytes, Meta(min_length=MESSAGE_ID_SIZE, max_length=MESSAGE_ID_SIZE)]
Blob = Annotated[bytes, Meta(min_length=1)]
Nonce = Annotated[int, Meta(ge=0, le=2**63 - 1)]


class _Frame(
    msgspec.Struct, array_like=True, tag_field="t", forbid_unknown_fields=True, frozen=True
):
    """Base of every frame. The tag names the frame on the wire."""


# Relay to client ----------------------------------------------------------


class Hello(_Frame, tag="hello", frozen=True):
    """First frame on every connection: the relay's certificate and a fresh challenge."""

    version: int
    certificate: Blob
    challenge: Challenge


class Welcome(_Frame, tag="welcome", frozen=True):
    """Relay-signed confirmation of a login. ``body`` encodes a :class:`WelcomeBody`."""

    body: Blob
    signature: Signature


class Roster(_Frame, tag="roster", frozen=True):
    """Relay-signed roster of every account. ``body`` encodes a :class:`RosterBody`."""

    body: Blob
    signature: Signature


class Notice(_Frame, tag="notice", frozen=True):
    """Relay-signed, session-bound notice. ``body`` encodes a :class:`NoticeBody`."""

    body: Blob
    signature: Signature


class Ack(_Frame, tag="ack", frozen=True):
    """The relay accepted and forwarded the group message with this id."""

    msg_id: MessageId


class Subscribed(_Frame, tag="subscribed", frozen=True):
    """The relay now forwards this group's messages to the client."""

    group: Name


class Invited(_Frame, tag="invited", frozen=True):
    """The relay delivered an invite to ``target``.

    ``target`` is now a member of ``group`` and its current session is
    subscribed, so it receives every message sent after this frame unless it
    declines the invite.
    """

    group: Name
    target: Name


class Error(_Frame, tag="error", frozen=True):
    """A request was refused; the connection stays open.

    ``msg_id`` names a refused group message. It is empty for a refused
    subscribe or invite, which ``group`` names instead.
    """

    code: str
    message: str
    group: str = ""
    msg_id: bytes = b""


class Pong(_Frame, tag="pong", frozen=True):
    """Reply to :class:`Ping` with the same nonce."""

    nonce: Nonce


# Client to relay ----------------------------------------------------------


class Login(_Frame, tag="login", frozen=True):
    """Credentials sealed to the relay, signed over the challenge by the identity key."""

    version: int
    sealed: Blob
    signature: Signature


class Subscribe(_Frame, tag="subscribe", frozen=True):
    """Ask for a group's messages; with ``create``, create the group first.

    ``create`` must name a group that does not exist yet: a client that has
    no key for an existing group cannot read it, so silently joining it with
    a fresh key would lose every message.
    """

    group: Name
    create: bool = False


class Unsubscribe(_Frame, tag="unsubscribe", frozen=True):
    """Stop receiving a group's messages, for example after declining an invite."""

    group: Name


class Ping(_Frame, tag="ping", frozen=True):
    """Heartbeat. The relay replies with :class:`Pong`."""

    nonce: Nonce


# Both directions ----------------------------------------------------------


class GroupMessage(_Frame, tag="msg", frozen=True):
    """An end-to-end encrypted group message; the relay forwards the bytes unchanged."""

    group: Name
    sender: Name
    msg_id: MessageId
    box: Blob


class Invite(_Frame, tag="invite", frozen=True):
    """A group key sealed to ``target`` and signed by ``inviter``."""

    group: Name
    inviter: Name
    target: Name
    sealed_key: Blob
    signature: Signature


Frame = (
    Hello
    | Welcome
    | Roster
    | Notice
    | Ack
    | Subscribed
    | Invited
    | Error
    | Pong
    | Login
    | Subscribe
    | Unsubscribe
    | Ping
    | GroupMessage
    | Invite
)

# Signed bodies ------------------------------------------------------------


class _Body(msgspec.Struct, array_like=True, forbid_unknown_fields=True, frozen=True):
    """Base of the structs carried inside signed or encrypted blobs."""


class LoginBody(_Body, frozen=True):
    """Plaintext sealed inside :class:`Login`. Only the relay can open it."""

    user: Name
    password: Annotated[str, Meta(min_length=1, max_length=MAX_PASSWORD_LENGTH)]
    sign_key: PublicKey
    box_key: PublicKey
    resume_token: Annotated[bytes, Meta(max_length=64)] = b""  # from an earlier welcome

    def __repr__(self) -> str:
        # Keep the password out of logs and tracebacks.
        return f"LoginBody(user={self.user!r}, password='***')"


class WelcomeBody(_Body, frozen=True):
    """Login result, bound to the session's challenge."""

    challenge: Challenge
    user: Name
    roster_version: Annotated[int, Meta(ge=0)]
    resume_token: Annotated[bytes, Meta(max_length=64)] = b""  # empty when disabled
    resume_expires: int = 0  # Unix time in seconds


class RosterEntry(_Body, frozen=True):
    """One account: its identity keys and whether it is online now."""

    user: Name
    sign_key: PublicKey
    box_key: PublicKey
    online: bool


class RosterBody(_Body, frozen=True):
    """Every account the relay stores. ``version`` only ever increases."""

    version: Annotated[int, Meta(ge=1)]
    entries: list[RosterEntry]


NoticeKind = Literal["conflict", "replaced", "shutdown"]


class NoticeBody(_Body, frozen=True):
    """A relay announcement that applies to one session only."""

    challenge: Challenge
    kind: NoticeKind
    message: str


class Envelope(_Body, frozen=True):
    """Signed content of a group message, encrypted under the group key."""

    group: Name
    sender: Name
    msg_id: MessageId
    sent_at: float  # Unix time in seconds, from the sender's clock
    body: str


class SignedEnvelope(_Body, frozen=True):
    """The plaintext inside a group message box: an encoded envelope and its signature."""

    envelope: Blob
    signature: Signature


_encoder: Final = msgspec.msgpack.Encoder()
_frame_decoder: Final = msgspec.msgpack.Decoder(Frame)


def encode(value: msgspec.Struct) -> bytes:
    """Encode a frame or body as MessagePack."""
    return _encoder.encode(value)


PATTERN_RULE: Final = (
    f"1 to {MAX_NAME_LENGTH} characters without spaces, control characters, "
    "invisible characters, / or \\"
)
NAME_RULE: Final = f"{PATTERN_RULE}, in Unicode NFC form"


def validate_name(value: str, what: str) -> None:
    """Check a user or group id before it goes on the wire.

    Raises:
        ValueError: naming the id and the rule it breaks.
    """
    try:
        msgspec.convert(value, Name)
        valid = unicodedata.normalize("NFC", value) == value
    except (msgspec.ValidationError, TypeError):
        valid = False
    if not valid:
        raise ValueError(f"invalid {what} id {value!r}: use {NAME_RULE}")


def decode_frame(data: bytes | bytearray | memoryview | str) -> Frame:
    """Decode one inbound WebSocket message into a frame.

    Raises:
        ProtocolError: with close code 1002 if ``data`` is a text message, is
            not MessagePack, has an unknown tag, or has a field that fails
            validation. The reason names the problem.
    """
    if isinstance(data, str):
        raise ProtocolError(CLOSE_PROTOCOL_ERROR, "text messages are not allowed; send binary")
    try:
        return _frame_decoder.decode(data)
    except msgspec.DecodeError as exc:
        message = str(exc)
        if "matching regex" in message:
            # The raw pattern is unreadable in a close reason; state the rule.
            where = message.rsplit(" - at ", 1)[-1] if " - at " in message else "a field"
            message = f"invalid id at {where}: use {PATTERN_RULE}"
        raise ProtocolError(CLOSE_PROTOCOL_ERROR, f"invalid frame: {message}") from None
