"""Login sealing and relay-signed frames.

Login: the client seals its id, password and identity keys to the relay's
X25519 key, so only the relay can read the password even without TLS. It
also signs ``challenge || sealed`` with its identity key. The challenge is
fresh for every connection, so a recorded login frame fails verification on
any other connection: this is what defeats replay.

Relay-signed frames: the relay signs the encoded body of each welcome,
roster and notice with its certificate key. Welcome and notice bodies carry
the session's challenge, so a signed conflict or replacement notice cannot be
replayed into a different session. Roster bodies carry a version that only
increases, so an old roster cannot replace a newer one.
"""

from __future__ import annotations

from typing import Final, TypeVar

import msgspec
import nacl.exceptions
import nacl.public

from t2t.crypto.keys import KeyPair, PublicIdentity, verify_signature
from t2t.errors import CryptoError
from t2t.frames import (
    PROTOCOL_VERSION,
    Login,
    LoginBody,
    Notice,
    NoticeBody,
    Roster,
    RosterBody,
    Welcome,
    WelcomeBody,
    encode,
)

_LOGIN_DOMAIN: Final = b"t2t/v1/login\x00"
_WELCOME_DOMAIN: Final = b"t2t/v1/welcome\x00"
_ROSTER_DOMAIN: Final = b"t2t/v1/roster\x00"
_NOTICE_DOMAIN: Final = b"t2t/v1/notice\x00"

_login_decoder: Final = msgspec.msgpack.Decoder(LoginBody)
_welcome_decoder: Final = msgspec.msgpack.Decoder(WelcomeBody)
_roster_decoder: Final = msgspec.msgpack.Decoder(RosterBody)
_notice_decoder: Final = msgspec.msgpack.Decoder(NoticeBody)

_Body = TypeVar("_Body")


# Login --------------------------------------------------------------------


def seal_login(
    identity: KeyPair,
    relay: PublicIdentity,
    challenge: bytes,
    user: str,
    password: str,
    resume_token: bytes = b"",
) -> Login:
    """Build the login frame for ``user``, signed over ``challenge``."""
    body = LoginBody(
        user=user,
        password=password,
        sign_key=identity.public.sign_key,
        box_key=identity.public.box_key,
        resume_token=resume_token,
    )
    sealed = nacl.public.SealedBox(nacl.public.PublicKey(relay.box_key)).encrypt(encode(body))
    return Login(PROTOCOL_VERSION, sealed, identity.sign(_LOGIN_DOMAIN + challenge + sealed))


def open_login(relay: KeyPair, challenge: bytes, frame: Login) -> LoginBody:
    """Open and verify a login frame on the relay.

    Raises:
        CryptoError: if the box does not open, the body is malformed, the two
            identity keys do not belong together, or the signature over this
            connection's challenge does not verify (a replayed login).
    """
    try:
        plaintext = nacl.public.SealedBox(relay.box).decrypt(frame.sealed)
    except nacl.exceptions.CryptoError:
        raise CryptoError("login box does not open with the relay key") from None
    try:
        body = _login_decoder.decode(plaintext)
    except msgspec.DecodeError as exc:
        raise CryptoError(f"login body is malformed: {exc}") from None
    if not PublicIdentity(body.sign_key, body.box_key).is_consistent():
        raise CryptoError("login identity keys do not belong together")
    if not verify_signature(
        body.sign_key, _LOGIN_DOMAIN + challenge + frame.sealed, frame.signature
    ):
        raise CryptoError("login signature does not cover this connection's challenge")
    return body


# Relay-signed frames ------------------------------------------------------


def sign_welcome(relay: KeyPair, body: WelcomeBody) -> Welcome:
    encoded = encode(body)
    return Welcome(encoded, relay.sign(_WELCOME_DOMAIN + encoded))


def sign_roster(relay: KeyPair, body: RosterBody) -> Roster:
    encoded = encode(body)
    return Roster(encoded, relay.sign(_ROSTER_DOMAIN + encoded))


def sign_notice(relay: KeyPair, body: NoticeBody) -> Notice:
    encoded = encode(body)
    return Notice(encoded, relay.sign(_NOTICE_DOMAIN + encoded))


def _verify(
    relay_key: bytes,
    domain: bytes,
    body: bytes,
    signature: bytes,
    decoder: msgspec.msgpack.Decoder[_Body],
    what: str,
) -> _Body:
    if not verify_signature(relay_key, domain + body, signature):
        raise CryptoError(f"{what} signature does not verify against the relay key")
    try:
        return decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise CryptoError(f"signed {what} body is malformed: {exc}") from None


def verify_welcome(relay_key: bytes, challenge: bytes, frame: Welcome) -> WelcomeBody:
    """Verify a welcome frame and check that it carries this session's challenge.

    Raises:
        CryptoError: if the signature fails or the challenge is not ours.
    """
    body = _verify(
        relay_key, _WELCOME_DOMAIN, frame.body, frame.signature, _welcome_decoder, "welcome"
    )
    if body.challenge != challenge:
        raise CryptoError("welcome is bound to another session's challenge")
    return body


def verify_roster(relay_key: bytes, frame: Roster) -> RosterBody:
    """Verify a roster frame's signature. The caller checks the version.

    Raises:
        CryptoError: if the signature fails or the body is malformed.
    """
    return _verify(
        relay_key, _ROSTER_DOMAIN, frame.body, frame.signature, _roster_decoder, "roster"
    )


def verify_notice(relay_key: bytes, challenge: bytes, frame: Notice) -> NoticeBody:
    """Verify a notice and check that it is bound to this session's challenge.

    Raises:
        CryptoError: if the signature fails or the challenge is not ours.
    """
    body = _verify(
        relay_key, _NOTICE_DOMAIN, frame.body, frame.signature, _notice_decoder, "notice"
    )
    if body.challenge != challenge:
        raise CryptoError("notice is bound to another session's challenge; replayed")
    return body
