"""Group keys, group messages and invites.

A group key is a 32-byte XSalsa20-Poly1305 (SecretBox) key shared by the
group's members. SecretBox authenticates the ciphertext, but its MAC is not a
signature: any member holding the key could produce a valid box. So every
message also carries the sender's Ed25519 signature over an envelope naming
the group, the sender and the message id. A receiver checks that signature
against the sender's key from the relay-signed roster, which stops one member
from posting as another and stops the relay from forging or altering
messages. SecretBox picks a random 24-byte nonce per message, which is safe
to do for far more messages than a group will ever send.

An invite seals the group key to the invitee's X25519 key. A sealed box is
anonymous, so the inviter also signs the group id, both user ids and the
sealed key; the invitee checks that signature against the inviter's roster
key before trusting the group key.
"""

from __future__ import annotations

import secrets
import time
from typing import Final

import msgspec
import nacl.exceptions
import nacl.public
import nacl.secret

from t2t.crypto.keys import KeyPair, verify_signature
from t2t.errors import CryptoError
from t2t.frames import (
    MESSAGE_ID_SIZE,
    Envelope,
    GroupMessage,
    Invite,
    SignedEnvelope,
    encode,
)

GROUP_KEY_SIZE: Final = nacl.secret.SecretBox.KEY_SIZE  # 32 bytes

_MESSAGE_DOMAIN: Final = b"t2t/v1/message\x00"
_INVITE_DOMAIN: Final = b"t2t/v1/invite\x00"

_signed_envelope_decoder: Final = msgspec.msgpack.Decoder(SignedEnvelope)
_envelope_decoder: Final = msgspec.msgpack.Decoder(Envelope)


class InvalidMessageError(CryptoError):
    """A group message or invite failed a check. ``reason`` names the check."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def new_group_key() -> bytes:
    return secrets.token_bytes(GROUP_KEY_SIZE)


def new_message_id() -> bytes:
    return secrets.token_bytes(MESSAGE_ID_SIZE)


def seal_message(
    group_key: bytes,
    sender: KeyPair,
    *,
    group: str,
    sender_id: str,
    body: str,
    msg_id: bytes | None = None,
    sent_at: float | None = None,
) -> GroupMessage:
    """Sign and encrypt ``body`` for ``group`` and return the frame to send."""
    envelope = Envelope(
        group=group,
        sender=sender_id,
        msg_id=new_message_id() if msg_id is None else msg_id,
        sent_at=time.time() if sent_at is None else sent_at,
        body=body,
    )
    encoded = encode(envelope)
    signed = SignedEnvelope(encoded, sender.sign(_MESSAGE_DOMAIN + encoded))
    box = nacl.secret.SecretBox(group_key).encrypt(encode(signed))
    return GroupMessage(group=group, sender=sender_id, msg_id=envelope.msg_id, box=bytes(box))


def open_message(group_key: bytes, frame: GroupMessage, sender_sign_key: bytes) -> Envelope:
    """Decrypt a group message and verify its sender.

    Args:
        group_key: The key of ``frame.group``.
        frame: The received frame. Its unencrypted fields are only hints:
            each must match the signed envelope inside.
        sender_sign_key: The roster's Ed25519 key for ``frame.sender``.

    Raises:
        InvalidMessageError: if the box does not open under the group key,
            the signature does not verify, or the envelope names another
            group, sender or message id than the frame.
    """
    try:
        plaintext = nacl.secret.SecretBox(group_key).decrypt(frame.box)
    except nacl.exceptions.CryptoError:
        raise InvalidMessageError("ciphertext does not open under the group key") from None
    try:
        signed = _signed_envelope_decoder.decode(plaintext)
    except msgspec.DecodeError:
        raise InvalidMessageError("decrypted message is malformed") from None
    if not verify_signature(sender_sign_key, _MESSAGE_DOMAIN + signed.envelope, signed.signature):
        raise InvalidMessageError(f"signature does not match {frame.sender!r}'s identity key")
    try:
        envelope = _envelope_decoder.decode(signed.envelope)
    except msgspec.DecodeError:
        raise InvalidMessageError("signed envelope is malformed") from None

    # The outer fields are not covered by the signature; an envelope signed
    # for one group or id must not be accepted under another.
    if envelope.sender != frame.sender:
        raise InvalidMessageError(
            f"envelope was signed by {envelope.sender!r} but relayed as {frame.sender!r}"
        )
    if envelope.group != frame.group:
        raise InvalidMessageError(
            f"envelope was sent to group {envelope.group!r} but relayed to {frame.group!r}"
        )
    if envelope.msg_id != frame.msg_id:
        raise InvalidMessageError("envelope message id differs from the frame's")
    return envelope


def _invite_signed_bytes(group: str, inviter: str, target: str, sealed_key: bytes) -> bytes:
    return _INVITE_DOMAIN + encode([group, inviter, target, sealed_key])  # type: ignore[arg-type]


def seal_invite(
    group_key: bytes,
    inviter: KeyPair,
    *,
    group: str,
    inviter_id: str,
    target: str,
    target_box_key: bytes,
) -> Invite:
    """Seal ``group_key`` to the target's X25519 key and sign the invite."""
    sealed = bytes(nacl.public.SealedBox(nacl.public.PublicKey(target_box_key)).encrypt(group_key))
    signature = inviter.sign(_invite_signed_bytes(group, inviter_id, target, sealed))
    return Invite(group, inviter_id, target, sealed, signature)


def open_invite(frame: Invite, me: KeyPair, inviter_sign_key: bytes) -> bytes:
    """Verify an invite from the roster key of ``frame.inviter`` and return the group key.

    Raises:
        InvalidMessageError: if the signature fails, or the sealed key does
            not open with our key or has the wrong size.
    """
    signed = _invite_signed_bytes(frame.group, frame.inviter, frame.target, frame.sealed_key)
    if not verify_signature(inviter_sign_key, signed, frame.signature):
        raise InvalidMessageError(
            f"invite signature does not match {frame.inviter!r}'s identity key"
        )
    try:
        key = nacl.public.SealedBox(me.box).decrypt(frame.sealed_key)
    except nacl.exceptions.CryptoError:
        raise InvalidMessageError("invite key is not sealed to our identity key") from None
    if len(key) != GROUP_KEY_SIZE:
        raise InvalidMessageError(f"invite key is {len(key)} bytes, expected {GROUP_KEY_SIZE}")
    return key
