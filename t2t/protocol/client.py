"""The client's protocol logic, with no I/O.

:class:`ClientProtocol` verifies everything the relay sends, opens group
messages and invites, and builds outbound frames. The I/O shell
(:mod:`t2t.client.connection`) feeds it WebSocket messages and carries out
what it returns: bytes to send, events for the application, and replies
that complete a pending ``send``, ``invite`` or ``subscribe``.

What it defends against:

- A relay without a certificate from our CA: rejected before any
  credentials are sent.
- A relay or network that alters, forges or replays frames: relay-signed
  frames are verified, session-bound ones must carry our challenge, rosters
  must be newer than the last one, group messages must carry the sender's
  signature, and message ids already seen are rejected.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

from t2t.crypto.cert import verify_certificate
from t2t.crypto.group import (
    InvalidMessageError,
    new_group_key,
    open_invite,
    open_message,
    seal_invite,
    seal_message,
)
from t2t.crypto.keys import KeyPair, PublicIdentity
from t2t.crypto.session import seal_login, verify_notice, verify_roster, verify_welcome
from t2t.errors import (
    CLOSE_POLICY_VIOLATION,
    CLOSE_PROTOCOL_ERROR,
    ConflictError,
    CryptoError,
    ProtocolError,
    ProtocolVersionError,
    SendError,
)
from t2t.events import (
    ClientEvent,
    Conflict,
    MessageReceived,
    MessageRejected,
    RosterChanged,
)
from t2t.frames import (
    PROTOCOL_VERSION,
    Ack,
    Error,
    Frame,
    GroupMessage,
    Hello,
    Invite,
    Invited,
    Notice,
    Ping,
    Pong,
    Roster,
    RosterEntry,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Welcome,
    decode_frame,
    encode,
)

log = logging.getLogger("t2t.client")

_F = TypeVar("_F")


@dataclass(frozen=True, slots=True)
class ResumeToken:
    """A relay-issued resume token as the client stores it.

    The relay accepts it only together with the password it was issued with
    and the identity key that signs the login, so the file alone logs no one in.
    """

    token: bytes
    expires: int  # Unix time in seconds


SEEN_MESSAGE_IDS: Final = 10_000  # message ids remembered to reject replays
MAX_EARLY_FRAMES: Final = 1_000  # frames held while waiting for the first roster


class ClientState(enum.Enum):
    AWAITING_HELLO = "awaiting-hello"
    AWAITING_WELCOME = "awaiting-welcome"
    AWAITING_ROSTER = "awaiting-roster"  # logged in, waiting for a roster newer than the welcome's
    ACTIVE = "active"
    CLOSED = "closed"


RequestKey = tuple[str, ...]  # ("msg", hex id) | ("invite", group, target) | ("subscribe", group)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """Bytes to send to the relay."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Reply:
    """The relay's reply to a pending request. ``error`` is None on success."""

    key: RequestKey
    error: SendError | None


@dataclass(frozen=True, slots=True)
class InviteOffer:
    """A verified invite; the shell decides whether to accept it."""

    group: str
    inviter: str
    group_key: bytes


@dataclass(frozen=True, slots=True)
class PongReceived:
    nonce: int


Output = Outgoing | Reply | InviteOffer | PongReceived | ClientEvent


def message_key(msg_id: bytes) -> RequestKey:
    return ("msg", msg_id.hex())


class ClientProtocol:
    """Client decisions for one connection.

    Args:
        user: Our user id.
        password: Our password, sealed to the relay at login.
        identity: Our identity key pair.
        ca_key: The trusted CA's Ed25519 public key.
        relay_name: The name the relay certificate must carry.
        group_keys: Known group keys by group id; updated in place by invites.
        resume_tokens: Resume tokens by relay signing key; the welcome's new
            token replaces the one used, in place.
    """

    def __init__(
        self,
        *,
        user: str,
        password: str,
        identity: KeyPair,
        ca_key: bytes,
        relay_name: str,
        group_keys: dict[str, bytes],
        resume_tokens: dict[bytes, ResumeToken] | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.user = user
        self._password = password
        self.identity = identity
        self._ca_key = ca_key
        self.relay_name = relay_name
        self.group_keys = group_keys
        self.resume_tokens = {} if resume_tokens is None else resume_tokens
        self._now = now
        self.state = ClientState.AWAITING_HELLO
        self.roster: dict[str, RosterEntry] = {}
        self.roster_version = 0
        self._relay: PublicIdentity | None = None
        self._challenge = b""
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self.conflict: Conflict | None = None
        self._early: list[Frame] = []
        self._left: set[str] = set()  # keyless groups we sent Unsubscribe for

    # Inbound -----------------------------------------------------------------

    def receive(self, data: bytes | str) -> list[Output]:
        """Handle one WebSocket message from the relay.

        Raises:
            ProtocolError: the relay broke the protocol; close with ``code``.
            CertificateError: the relay's certificate is not trusted.
            ConflictError: the relay rejected our login.
        """
        frame = decode_frame(data)
        match self.state:
            case ClientState.AWAITING_HELLO:
                return self._on_hello(self._expect(frame, Hello))
            case ClientState.AWAITING_WELCOME:
                if isinstance(frame, Notice):
                    return self._on_notice(frame)
                return self._on_welcome(self._expect(frame, Welcome))
            case ClientState.AWAITING_ROSTER:
                if isinstance(frame, Notice):
                    return self._on_notice(frame)
                if not isinstance(frame, Roster):
                    # The relay routes to us from the welcome on, so an invite
                    # or message may arrive before the first roster. Keep it
                    # until the roster that is needed to verify it.
                    if len(self._early) >= MAX_EARLY_FRAMES:
                        raise ProtocolError(
                            CLOSE_POLICY_VIOLATION,
                            f"more than {MAX_EARLY_FRAMES} frames before the first roster",
                        )
                    self._early.append(frame)
                    return []
                outputs = self._on_roster(frame)
                if self.roster:  # the roster verified, so the state is now ACTIVE
                    early, self._early = self._early, []
                    for held in early:
                        outputs.extend(self._on_active(held))
                return outputs
            case ClientState.ACTIVE:
                return self._on_active(frame)
            case ClientState.CLOSED:
                return []
        raise AssertionError(self.state)

    def _expect(self, frame: Frame, kind: type[_F]) -> _F:
        if not isinstance(frame, kind):
            raise ProtocolError(
                CLOSE_POLICY_VIOLATION,
                f"expected {kind.__name__} in state {self.state.value}, got {type(frame).__name__}",
            )
        return frame

    def _on_hello(self, frame: Hello) -> list[Output]:
        if frame.version != PROTOCOL_VERSION:
            raise ProtocolVersionError(
                CLOSE_PROTOCOL_ERROR,
                f"relay speaks protocol version {frame.version}, this client speaks "
                f"{PROTOCOL_VERSION}; upgrade the older side",
            )
        # Verify the certificate before sending anything secret: the password
        # is sealed to the key named in it.
        body = verify_certificate(frame.certificate, self._ca_key, expected_name=self.relay_name)
        self._relay = PublicIdentity(body.sign_key, body.box_key)
        self._challenge = frame.challenge
        self.state = ClientState.AWAITING_WELCOME
        saved = self.resume_tokens.get(body.sign_key)
        token = b""
        if saved is not None and self._now() < saved.expires:
            token = saved.token
        login = seal_login(
            self.identity, self._relay, frame.challenge, self.user, self._password, token
        )
        return [Outgoing(encode(login))]

    def _on_welcome(self, frame: Welcome) -> list[Output]:
        try:
            body = verify_welcome(self._relay_key, self._challenge, frame)
        except CryptoError as exc:
            raise ProtocolError(CLOSE_POLICY_VIOLATION, f"invalid welcome: {exc}") from None
        if body.user != self.user:
            raise ProtocolError(CLOSE_POLICY_VIOLATION, f"welcome is for {body.user!r}, not us")
        # Only rosters newer than the version current at login are accepted,
        # so an old signed roster cannot be replayed into this session.
        self.roster_version = body.roster_version
        if body.resume_token:
            self.resume_tokens[self._relay_key] = ResumeToken(
                body.resume_token, body.resume_expires
            )
        else:
            self.resume_tokens.pop(self._relay_key, None)
        self.state = ClientState.AWAITING_ROSTER
        return []

    def _on_notice(self, frame: Notice) -> list[Output]:
        try:
            body = verify_notice(self._relay_key, self._challenge, frame)
        except CryptoError as exc:
            log.warning("dropped notice that failed verification: %s", exc)
            return [MessageRejected(None, None, f"relay notice rejected: {exc}")]
        if body.kind == "shutdown":
            return []
        event = Conflict(body.kind, body.message)
        if self.state is not ClientState.ACTIVE:
            raise ConflictError(body.message)
        self.conflict = event
        return [event]

    def _on_roster(self, frame: Roster) -> list[Output]:
        try:
            body = verify_roster(self._relay_key, frame)
        except CryptoError as exc:
            log.warning("dropped roster that failed verification: %s", exc)
            return [MessageRejected(None, None, f"roster rejected: {exc}")]
        if body.version <= self.roster_version:
            log.warning(
                "dropped stale roster version=%d current=%d", body.version, self.roster_version
            )
            return [
                MessageRejected(
                    None,
                    None,
                    f"roster version {body.version} is not newer than {self.roster_version}",
                )
            ]
        self.roster_version = body.version
        self.roster = {entry.user: entry for entry in body.entries}
        self.state = ClientState.ACTIVE
        return [RosterChanged(body.version, {e.user: e.online for e in body.entries})]

    def _on_active(self, frame: Frame) -> list[Output]:
        match frame:
            case GroupMessage():
                return self._open_message(frame)
            case Ack(msg_id):
                return [Reply(message_key(msg_id), None)]
            case Invite():
                return self._on_invite(frame)
            case Invited(group, target):
                return [Reply(("invite", group, target), None)]
            case Subscribed(group):
                return [Reply(("subscribe", group), None)]
            case Error():
                return [self._on_error(frame)]
            case Roster():
                return self._on_roster(frame)
            case Notice():
                return self._on_notice(frame)
            case Pong(nonce):
                return [PongReceived(nonce)]
        raise ProtocolError(
            CLOSE_POLICY_VIOLATION,
            f"frame {type(frame).__name__} is not expected in state {self.state.value}",
        )

    def _open_message(self, frame: GroupMessage) -> list[Output]:
        key = self.group_keys.get(frame.group)
        if key is None:
            return [
                MessageRejected(frame.group, frame.sender, "no key for this group"),
                *self._leave_keyless(frame.group),
            ]
        return [self._verify_message(frame, key)]

    def _leave_keyless(self, group: str) -> list[Output]:
        """Unsubscribe once from a group we hold no key for.

        The relay subscribes an invitee before the invite is verified, so a
        forged invite would otherwise leave us receiving a stream of
        messages we can never read.
        """
        if group in self._left:
            return []
        self._left.add(group)
        return [Outgoing(encode(Unsubscribe(group)))]

    def _verify_message(self, frame: GroupMessage, key: bytes) -> MessageReceived | MessageRejected:
        entry = self.roster.get(frame.sender)
        if entry is None:
            return MessageRejected(frame.group, frame.sender, "sender is not in the roster")
        try:
            envelope = open_message(key, frame, entry.sign_key)
        except InvalidMessageError as exc:
            return MessageRejected(frame.group, frame.sender, exc.reason)
        # A relay could resend a message it forwarded before; the signature
        # would still verify, so remember recent ids.
        if envelope.msg_id in self._seen:
            return MessageRejected(frame.group, frame.sender, "duplicate message id; replayed")
        self._seen[envelope.msg_id] = None
        if len(self._seen) > SEEN_MESSAGE_IDS:
            self._seen.popitem(last=False)
        return MessageReceived(
            envelope.group, envelope.sender, envelope.msg_id, envelope.sent_at, envelope.body
        )

    def _on_invite(self, frame: Invite) -> list[Output]:
        if frame.target != self.user:
            return [MessageRejected(frame.group, frame.inviter, f"invite is for {frame.target!r}")]
        entry = self.roster.get(frame.inviter)
        if entry is None:
            rejected = MessageRejected(frame.group, frame.inviter, "inviter is not in the roster")
            if frame.group in self.group_keys:
                return [rejected]
            return [rejected, *self._leave_keyless(frame.group)]
        try:
            key = open_invite(frame, self.identity, entry.sign_key)
        except InvalidMessageError as exc:
            rejected = MessageRejected(frame.group, frame.inviter, exc.reason)
            if frame.group in self.group_keys:
                return [rejected]
            return [rejected, *self._leave_keyless(frame.group)]
        self._left.discard(frame.group)
        return [InviteOffer(frame.group, frame.inviter, key)]

    def _on_error(self, frame: Error) -> Reply | MessageRejected:
        error = SendError(frame.code, frame.message)
        if frame.msg_id:
            return Reply(message_key(frame.msg_id), error)
        # Subscribe and invite errors name only the group; the shell matches
        # the oldest pending invite or subscribe for it.
        return Reply(("group-error", frame.group), error)

    @property
    def _relay_key(self) -> bytes:
        assert self._relay is not None
        return self._relay.sign_key

    # Outbound ----------------------------------------------------------------

    def seal(self, group: str, text: str) -> tuple[bytes, bytes]:
        """Encrypt ``text`` for ``group``. Returns the message id and the frame bytes.

        Raises:
            KeyError: if we hold no key for ``group``.
        """
        key = self.group_keys[group]
        frame = seal_message(key, self.identity, group=group, sender_id=self.user, body=text)
        return frame.msg_id, encode(frame)

    def invite(self, peer: str, group: str) -> bytes:
        """Seal ``group``'s key to ``peer`` and return the invite frame.

        Raises:
            KeyError: if we hold no key for ``group`` or ``peer`` is not in the roster.
        """
        entry = self.roster.get(peer)
        if entry is None:
            raise KeyError(f"user {peer!r} is not in the roster")
        invite = seal_invite(
            self.group_keys[group],
            self.identity,
            group=group,
            inviter_id=self.user,
            target=peer,
            target_box_key=entry.box_key,
        )
        return encode(invite)

    def create_group(self, group: str) -> bytes:
        """Create a fresh key for a new group. Returns the key."""
        key = new_group_key()
        self.group_keys[group] = key
        return key

    @staticmethod
    def subscribe(group: str, *, create: bool = False) -> bytes:
        return encode(Subscribe(group, create))

    def unsubscribe(self, group: str) -> bytes:
        """Return an Unsubscribe frame and remember that we left ``group``."""
        self._left.add(group)
        return encode(Unsubscribe(group))

    @staticmethod
    def ping(nonce: int) -> bytes:
        return encode(Ping(nonce))
