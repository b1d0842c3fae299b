"""The relay's protocol logic, with no I/O.

:class:`RelayProtocol` takes events from the I/O shell (a connection opened,
a WebSocket message arrived, a password check finished, a connection closed)
and returns :class:`Action` values for the shell to carry out: send bytes to
a connection, close a connection, or check a password in a worker thread.
It never awaits anything, so every rule here is testable without sockets.

Per-connection state is an explicit :class:`ConnState` with a transition
table. Group membership and subscriptions live in :class:`t2t.protocol.routing.Router`.
"""

from __future__ import annotations

import enum
import logging
import secrets
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from t2t.crypto.keys import KeyPair, PublicIdentity
from t2t.crypto.session import open_login, sign_notice, sign_roster, sign_welcome
from t2t.errors import (
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_PROTOCOL_ERROR,
    CryptoError,
    ProtocolError,
)
from t2t.frames import (
    CHALLENGE_SIZE,
    PROTOCOL_VERSION,
    Ack,
    Error,
    Frame,
    GroupMessage,
    Hello,
    Invite,
    Invited,
    Login,
    NoticeBody,
    NoticeKind,
    Ping,
    Pong,
    RosterBody,
    RosterEntry,
    Subscribe,
    Subscribed,
    Unsubscribe,
    WelcomeBody,
    decode_frame,
    encode,
)
from t2t.protocol.login_guard import LoginGuard
from t2t.protocol.resume import ResumeTokens
from t2t.protocol.routing import Router, RoutingError

log = logging.getLogger("t2t.relay")

DEFAULT_RESUME_TTL: Final = 7 * 86400  # seconds a resume token stays valid
# A roster entry is at most about 330 bytes (a 64-character id of 4-byte
# characters plus two keys), so 10,000 accounts stay under the client's 4 MiB
# limit on inbound messages.
DEFAULT_MAX_ACCOUNTS: Final = 10_000


class ConnState(enum.Enum):
    AWAITING_LOGIN = "awaiting-login"  # hello sent, waiting for the login frame
    VERIFYING = "verifying"  # password check running in a worker thread
    ACTIVE = "active"  # logged in: may subscribe, send and invite
    CLOSED = "closed"  # closing or closed: every further frame is ignored


# Frames accepted in each state. Any other frame closes the connection with
# 1008, because a client that sends it is broken or hostile.
_ALLOWED: Final[dict[ConnState, tuple[type[Frame], ...]]] = {
    ConnState.AWAITING_LOGIN: (Login, Ping),
    ConnState.VERIFYING: (Ping,),
    ConnState.ACTIVE: (GroupMessage, Invite, Subscribe, Unsubscribe, Ping),
    ConnState.CLOSED: (),
}


@dataclass(frozen=True, slots=True)
class Send:
    conn_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Forward:
    """Send ``data`` to each of ``conn_ids``, then ``ack`` to ``sender``.

    The shell sends ``ack`` only after every copy has been written to its
    connection, or dropped because that connection closed. The sender's
    window of unacknowledged messages then bounds how much of its traffic
    waits in the relay at once.
    """

    conn_ids: tuple[int, ...]
    data: bytes
    sender: int
    ack: bytes


@dataclass(frozen=True, slots=True)
class Close:
    conn_id: int
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class CheckPassword:
    """Verify (or, for a new account, hash) a password off the event loop.

    The shell calls :meth:`RelayProtocol.password_checked` with the outcome.
    ``password_hash`` is None when the account does not exist yet.
    """

    conn_id: int
    password: str = field(repr=False)
    password_hash: str | None = field(repr=False)


Action = Send | Forward | Close | CheckPassword


@dataclass(frozen=True, slots=True)
class Account:
    user: str
    password_hash: str = field(repr=False)  # argon2id string, never the password
    identity: PublicIdentity


class RelayStore(Protocol):
    """Durable state the relay protocol needs; :class:`t2t.server.storage.Store` implements it."""

    def accounts(self) -> list[Account]: ...
    def create_account(self, user: str, password_hash: str, identity: PublicIdentity) -> bool: ...
    def update_identity(self, user: str, identity: PublicIdentity) -> None: ...
    def memberships(self) -> dict[str, set[str]]: ...
    def create_group(self, group: str, creator: str) -> None: ...
    def add_member(self, group: str, user: str, invited_by: str) -> None: ...
    def next_roster_version(self) -> int: ...
    def roster_version(self) -> int: ...


@dataclass(slots=True)
class _Session:
    conn_id: int
    challenge: bytes
    state: ConnState = ConnState.AWAITING_LOGIN
    user: str | None = None
    pending_identity: PublicIdentity | None = None


class RelayProtocol:
    """Relay decisions for every connection.

    Args:
        key: The relay's key pair, named in its certificate.
        certificate: The encoded certificate sent in every hello frame.
        store: Durable accounts, groups and roster version.
        resume_ttl: Lifetime of resume tokens in seconds; 0 disables them.
        max_accounts: Registrations are refused beyond this many accounts. It
            bounds the roster, which lists every account in one frame.
        now: Unix-time clock for token expiry, replaceable in tests.
    """

    def __init__(
        self,
        key: KeyPair,
        certificate: bytes,
        store: RelayStore,
        *,
        resume_ttl: float = DEFAULT_RESUME_TTL,
        max_accounts: int = DEFAULT_MAX_ACCOUNTS,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
        self._certificate = certificate
        self._store = store
        self._sessions: dict[int, _Session] = {}
        self._online: dict[str, int] = {}  # user -> conn_id of its active session
        self._accounts: dict[str, Account] = {a.user: a for a in store.accounts()}
        self.router = Router(store.memberships())
        self._tokens = ResumeTokens(resume_ttl, now)
        self._guard = LoginGuard(now)
        self._checking: dict[int, str] = {}  # conn_id -> user whose password is being checked
        self._max_accounts = max_accounts
        self.roster_dirty = False

    # Connection lifecycle --------------------------------------------------

    def connect(self, conn_id: int) -> bytes:
        """Register a new connection and return the hello frame to send it."""
        # A fresh random challenge per connection: the client signs it in its
        # login, and the relay binds welcome and notices to it, so no signed
        # frame from one connection is accepted on another.
        session = _Session(conn_id, secrets.token_bytes(CHALLENGE_SIZE))
        self._sessions[conn_id] = session
        return encode(Hello(PROTOCOL_VERSION, self._certificate, session.challenge))

    def disconnect(self, conn_id: int) -> None:
        """Forget a closed connection. Marks the roster dirty if a user went offline."""
        session = self._sessions.pop(conn_id, None)
        if session is None or session.user is None:
            return
        if self._online.get(session.user) == conn_id:
            del self._online[session.user]
            self.router.unsubscribe_all(session.user)
            self.roster_dirty = True

    def user_of(self, conn_id: int) -> str | None:
        session = self._sessions.get(conn_id)
        return None if session is None else session.user

    def state_of(self, conn_id: int) -> ConnState | None:
        session = self._sessions.get(conn_id)
        return None if session is None else session.state

    def active_connections(self) -> list[int]:
        return list(self._online.values())

    def shutdown_notice(self, conn_id: int) -> bytes | None:
        """Return a signed shutdown notice for an active connection, else None."""
        session = self._sessions.get(conn_id)
        if session is None or session.state is not ConnState.ACTIVE:
            return None
        return self._notice(session, "shutdown", "relay is shutting down")

    # Inbound messages ------------------------------------------------------

    def receive(self, conn_id: int, data: bytes | str) -> list[Action]:
        """Handle one WebSocket message from ``conn_id``.

        A malformed frame or one not allowed in the connection's state
        closes that connection (1002 or 1008) and affects no other.
        """
        session = self._sessions[conn_id]
        if session.state is ConnState.CLOSED:
            return []
        try:
            frame = decode_frame(data)
            if not isinstance(frame, _ALLOWED[session.state]):
                raise ProtocolError(
                    CLOSE_POLICY_VIOLATION,
                    f"frame {type(frame).__name__} is not allowed in state {session.state.value}",
                )
            return self._dispatch(session, frame, data)
        except ProtocolError as exc:
            return self._close(session, exc.code, exc.reason)

    def _dispatch(self, session: _Session, frame: Frame, data: bytes | str) -> list[Action]:
        match frame:
            case GroupMessage():
                assert isinstance(data, bytes)
                return self._on_group_message(session, frame, data)
            case Invite():
                assert isinstance(data, bytes)
                return self._on_invite(session, frame, data)
            case Subscribe():
                return self._on_subscribe(session, frame)
            case Unsubscribe():
                assert session.user is not None
                self.router.unsubscribe(frame.group, session.user)
                return []
            case Ping():
                return [Send(session.conn_id, encode(Pong(frame.nonce)))]
            case Login():
                return self._on_login(session, frame)
        raise AssertionError(f"unreachable: {frame!r}")  # _ALLOWED filters the rest

    # Login -----------------------------------------------------------------

    def _on_login(self, session: _Session, frame: Login) -> list[Action]:
        if frame.version != PROTOCOL_VERSION:
            raise ProtocolError(
                CLOSE_PROTOCOL_ERROR,
                f"unsupported protocol version {frame.version}; this relay speaks "
                f"version {PROTOCOL_VERSION}",
            )
        try:
            body = open_login(self._key, session.challenge, frame)
        except CryptoError as exc:
            raise ProtocolError(CLOSE_POLICY_VIOLATION, f"login rejected: {exc}") from None
        if unicodedata.normalize("NFC", body.user) != body.user:
            # Two spellings of one visible name would otherwise be two accounts.
            raise ProtocolError(
                CLOSE_POLICY_VIOLATION, "login rejected: user id is not in Unicode NFC form"
            )
        session.user = body.user
        session.pending_identity = PublicIdentity(body.sign_key, body.box_key)
        session.state = ConnState.VERIFYING
        account = self._accounts.get(body.user)
        if account is not None and self._tokens.redeem(
            body.user, body.resume_token, body.sign_key, body.password
        ):
            # The login signature proved possession of the identity key the
            # token was issued to, so the password hash can be skipped.
            return self._complete_login(session, account, "resume token", body.password)
        if account is None and len(self._accounts) >= self._max_accounts:
            return self._refuse(session, f"this relay is full ({self._max_accounts} accounts)")
        refusal = self._guard.refusal(body.user)
        if refusal is not None:
            return self._refuse(session, refusal)
        self._guard.started(body.user)
        self._checking[session.conn_id] = body.user
        stored_hash = None if account is None else account.password_hash
        return [CheckPassword(session.conn_id, body.password, stored_hash)]

    def check_abandoned(self, conn_id: int) -> None:
        """Forget a password check that the shell will not run (for example when busy)."""
        user = self._checking.pop(conn_id, None)
        if user is not None:
            self._guard.abandoned(user)

    def _refuse(self, session: _Session, reason: str) -> list[Action]:
        notice = self._notice(session, "conflict", reason)
        return [
            Send(session.conn_id, notice),
            *self._close(session, CLOSE_POLICY_VIOLATION, f"login rejected: {reason}"),
        ]

    def password_checked(
        self, conn_id: int, *, ok: bool, new_hash: str | None, password: str
    ) -> list[Action]:
        """Finish a login after :class:`CheckPassword` ran.

        Args:
            ok: For an existing account, whether the password matched. Ignored
                for a registration.
            new_hash: For a registration, the hash of the new password.
            password: The password, needed again only if another connection
                registered the same id while this one was hashing.
        """
        checked_user = self._checking.pop(conn_id, None)
        if checked_user is not None:
            # Count the outcome even if the connection closed meanwhile, or a
            # guesser could hang up before each result to dodge the limit.
            self._guard.finished(checked_user, ok=ok or new_hash is not None)
        session = self._sessions.get(conn_id)
        if session is None or session.state is not ConnState.VERIFYING:
            return []  # closed while the worker thread ran
        user, identity = session.user, session.pending_identity
        assert user is not None and identity is not None

        account = self._accounts.get(user)
        if new_hash is not None:
            if account is not None:
                # Another connection registered this id while we hashed, so
                # the password must now be checked against that account.
                self._guard.started(user)
                self._checking[conn_id] = user
                return [CheckPassword(conn_id, password, account.password_hash)]
            if len(self._accounts) >= self._max_accounts:
                return self._refuse(session, f"this relay is full ({self._max_accounts} accounts)")
            account = Account(user, new_hash, identity)
            self._store.create_account(user, new_hash, identity)
            self._accounts[user] = account
            self.roster_dirty = True
            log.info("registered account user=%s conn=%d", user, conn_id)
        elif account is None:
            # Accounts are never deleted, so a checked hash always has one.
            raise AssertionError(f"password checked for unknown account {user!r}")
        elif not ok:
            notice = self._notice(session, "conflict", f"wrong password for user {user!r}")
            return [
                Send(conn_id, notice),
                *self._close(session, CLOSE_POLICY_VIOLATION, "login rejected: wrong password"),
            ]

        return self._complete_login(session, account, "password", password)

    def _complete_login(
        self, session: _Session, account: Account, method: str, password: str
    ) -> list[Action]:
        conn_id, user, identity = session.conn_id, account.user, session.pending_identity
        assert identity is not None
        actions: list[Action] = []
        if account.identity != identity:
            self._store.update_identity(user, identity)
            self._accounts[user] = Account(user, account.password_hash, identity)
            log.info("identity key changed user=%s fingerprint=%s", user, identity.fingerprint())

        previous = self._online.get(user)
        if previous is not None and previous != conn_id:
            old = self._sessions[previous]
            notice = self._notice(old, "replaced", "this session was replaced by a new login")
            actions.append(Send(previous, notice))
            actions.extend(self._close(old, CLOSE_NORMAL, "session replaced by a new login"))
            self.router.unsubscribe_all(user)

        log.info("logged in user=%s conn=%d method=%s", user, conn_id, method)
        session.state = ConnState.ACTIVE
        session.pending_identity = None
        self._online[user] = conn_id
        self.roster_dirty = True
        # The welcome names the roster version current now, and the client
        # accepts only a newer roster: the next debounced publish, which
        # includes this login. So an old signed roster cannot be replayed
        # into a fresh session, and a burst of logins costs one signature.
        token, expires = self._tokens.issue(user, identity.sign_key, password)
        welcome = WelcomeBody(session.challenge, user, self._store.roster_version(), token, expires)
        actions.append(Send(conn_id, encode(sign_welcome(self._key, welcome))))
        return actions

    # Roster ----------------------------------------------------------------

    def publish_roster(self) -> bytes | None:
        """Return a new signed roster frame if anything changed since the last one.

        The shell sends the same bytes to every active connection: one
        signature and one encoding per change, whatever the number of users.
        """
        if not self.roster_dirty:
            return None
        self.roster_dirty = False
        return self._roster_frame(self._store.next_roster_version())

    def _roster_frame(self, version: int) -> bytes:
        entries = [
            RosterEntry(a.user, a.identity.sign_key, a.identity.box_key, a.user in self._online)
            for a in self._accounts.values()
        ]
        return encode(sign_roster(self._key, RosterBody(version, entries)))

    # Groups and messages ---------------------------------------------------

    def _on_subscribe(self, session: _Session, frame: Subscribe) -> list[Action]:
        user = session.user
        assert user is not None
        if frame.create and unicodedata.normalize("NFC", frame.group) != frame.group:
            message = "group id is not in Unicode NFC form"
            return [Send(session.conn_id, encode(Error("invalid-group", message, frame.group)))]
        try:
            created = self.router.subscribe(frame.group, user, session.conn_id, create=frame.create)
        except RoutingError as exc:
            return [Send(session.conn_id, encode(Error(exc.code, exc.message, frame.group)))]
        if created:
            self._store.create_group(frame.group, user)
            log.info("created group group=%s creator=%s", frame.group, user)
        return [Send(session.conn_id, encode(Subscribed(frame.group)))]

    def _on_group_message(
        self, session: _Session, frame: GroupMessage, data: bytes
    ) -> list[Action]:
        self._check_sender(session, frame.sender, "sender")
        try:
            recipients = self.router.recipients(frame.group, frame.sender)
        except RoutingError as exc:
            return [
                Send(
                    session.conn_id, encode(Error(exc.code, exc.message, frame.group, frame.msg_id))
                )
            ]
        # Forward the received bytes unchanged: the relay neither re-encodes
        # nor decrypts, and cannot alter what the sender signed.
        return [Forward(tuple(recipients), data, session.conn_id, encode(Ack(frame.msg_id)))]

    def _on_invite(self, session: _Session, frame: Invite, data: bytes) -> list[Action]:
        self._check_sender(session, frame.inviter, "inviter")
        target_conn = self._online.get(frame.target)
        error: Error | None = None
        if frame.target not in self._accounts:
            error = Error("unknown-user", f"user {frame.target!r} does not exist", frame.group)
        elif frame.target == frame.inviter:
            error = Error("invalid-target", "you cannot invite yourself", frame.group)
        elif target_conn is None:
            error = Error("offline-target", f"user {frame.target!r} is not online", frame.group)
        else:
            try:
                added = self.router.add_member(frame.group, frame.inviter, frame.target)
            except RoutingError as exc:
                error = Error(exc.code, exc.message, frame.group)
            else:
                if added:
                    self._store.add_member(frame.group, frame.target, frame.inviter)
        if error is not None:
            return [Send(session.conn_id, encode(error))]
        assert target_conn is not None
        # Subscribe the target's session now, before the inviter hears back,
        # so that a message sent right after the invite is not lost while the
        # target is still opening it. A target that declines unsubscribes.
        self.router.subscribe(frame.group, frame.target, target_conn)
        return [
            Send(target_conn, data),
            Send(session.conn_id, encode(Invited(frame.group, frame.target))),
        ]

    # Helpers ---------------------------------------------------------------

    def _check_sender(self, session: _Session, claimed: str, field_name: str) -> None:
        # Without this check, members of a group could impersonate each other
        # at the routing layer. The envelope signature stops forged content,
        # and this check stops forged metadata.
        if claimed != session.user:
            raise ProtocolError(
                CLOSE_POLICY_VIOLATION,
                f"{field_name} {claimed!r} does not match the logged-in user {session.user!r}",
            )

    def _notice(self, session: _Session, kind: NoticeKind, message: str) -> bytes:
        body = NoticeBody(session.challenge, kind, message)
        return encode(sign_notice(self._key, body))

    def _close(self, session: _Session, code: int, reason: str) -> list[Action]:
        session.state = ConnState.CLOSED
        return [Close(session.conn_id, code, reason)]
