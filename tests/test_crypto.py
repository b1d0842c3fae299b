"""Tests for t2t.crypto: certificates, key files, logins, relay-signed frames, messages, invites.

Rules under test:

- A certificate verifies only against the CA that issued it, only unaltered,
  only inside its validity window and only for the expected relay name.
- Private key files have mode 0600, are written atomically, and every load
  failure raises KeyFileError naming the file.
- A login opens only with the relay key it was sealed to, only on the
  connection whose challenge it signed, and only with matching identity keys.
- Welcome, roster and notice frames verify only against the relay key and
  unaltered. Welcome and notice bodies verify only in their own session.
- A group message opens only under its group key, only with the sender's own
  signature, only under the group, sender and id it was signed for, and only
  unaltered.
- An invite opens only for its target and only with the inviter's signature
  over the group id, both user ids and the sealed key.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import msgspec
import nacl.public
import nacl.secret
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from t2t.crypto import cert as cert_module
from t2t.crypto import group as group_module
from t2t.crypto import session as session_module
from t2t.crypto.cert import (
    Certificate,
    CertificateBody,
    issue_certificate,
    verify_certificate,
)
from t2t.crypto.group import (
    GROUP_KEY_SIZE,
    InvalidMessageError,
    new_group_key,
    new_message_id,
    open_invite,
    open_message,
    seal_invite,
    seal_message,
)
from t2t.crypto.keys import (
    CERTIFICATE_LABEL,
    PRIVATE_KEY_LABEL,
    PUBLIC_KEY_LABEL,
    KeyPair,
    PublicIdentity,
    load_key_pair,
    load_public_identity,
    read_armored,
    save_key_pair,
    save_public_identity,
    write_armored,
)
from t2t.crypto.session import (
    open_login,
    seal_login,
    sign_notice,
    sign_roster,
    sign_welcome,
    verify_notice,
    verify_roster,
    verify_welcome,
)
from t2t.errors import (
    CertificateError,
    CertificateExpiredError,
    CertificateNameMismatchError,
    CertificateNotYetValidError,
    CryptoError,
    KeyFileError,
    TamperedCertificateError,
    UntrustedCertificateError,
)
from t2t.frames import (
    GroupMessage,
    Login,
    LoginBody,
    Notice,
    NoticeBody,
    Roster,
    RosterBody,
    RosterEntry,
    Welcome,
    WelcomeBody,
    encode,
)

# No test changes these key pairs, so all tests share them and skip key generation.
CA = KeyPair.generate()
OTHER_CA = KeyPair.generate()
RELAY = KeyPair.generate()
OTHER_RELAY = KeyPair.generate()
ALICE = KeyPair.generate()
BOB = KeyPair.generate()
CAROL = KeyPair.generate()

NOW = 1_700_000_000.0  # a fixed Unix time, so validity checks do not depend on the clock
DAY = 86400
CHALLENGE = b"c" * 32
OTHER_CHALLENGE = b"d" * 32
GROUP_KEY = bytes(range(GROUP_KEY_SIZE))


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    """Return ``data`` with the byte at ``index`` XORed with ``mask``."""
    changed = bytearray(data)
    changed[index] ^= mask
    return bytes(changed)


# Certificates -------------------------------------------------------------


def issue(name: str = "relay1", *, days: float = 30, now: float = NOW) -> bytes:
    return issue_certificate(CA, RELAY.public, name, days=days, now=now)


def test_certificate_valid():
    body = verify_certificate(issue(), CA.public.sign_key, expected_name="relay1", now=NOW)

    assert body.name == "relay1"
    assert body.sign_key == RELAY.public.sign_key
    assert body.box_key == RELAY.public.box_key
    assert body.issuer == CA.public.sign_key
    assert body.not_before == int(NOW) - 60
    assert body.not_after == int(NOW + 30 * DAY)


def test_certificate_name_check_skipped():
    body = verify_certificate(issue(), CA.public.sign_key, expected_name=None, now=NOW)

    assert body.name == "relay1"


def test_certificate_wrong_ca():
    with pytest.raises(UntrustedCertificateError, match="trusted CA"):
        verify_certificate(issue(), OTHER_CA.public.sign_key, expected_name="relay1", now=NOW)


def test_certificate_issuer_forged():
    # Another CA signs a body that names the trusted CA as issuer.
    forged = issue_certificate(OTHER_CA, RELAY.public, "relay1", days=30, now=NOW)
    cert = msgspec.msgpack.decode(forged, type=Certificate)
    body = msgspec.msgpack.decode(cert.body, type=CertificateBody)
    body = msgspec.structs.replace(body, issuer=CA.public.sign_key)
    encoded_body = encode(body)
    signature = OTHER_CA.sign(cert_module._CERT_DOMAIN + encoded_body)
    data = encode(Certificate(encoded_body, signature))

    with pytest.raises(TamperedCertificateError, match="signature"):
        verify_certificate(data, CA.public.sign_key, expected_name="relay1", now=NOW)


def test_certificate_flipped_body_byte():
    data = issue()
    # Change the name "relay1" to "relay0": the body still decodes but the signature fails.
    index = data.index(b"relay1") + len("relay")

    with pytest.raises(TamperedCertificateError, match="signature"):
        verify_certificate(flip(data, index), CA.public.sign_key, expected_name=None, now=NOW)


def test_certificate_flipped_signature_byte():
    data = issue()

    for index in (len(data) - 64, len(data) - 1):
        with pytest.raises(TamperedCertificateError):
            verify_certificate(flip(data, index), CA.public.sign_key, expected_name=None, now=NOW)


def test_certificate_every_flipped_byte():
    data = issue()

    for index in range(len(data)):
        with pytest.raises(CertificateError):
            verify_certificate(flip(data, index), CA.public.sign_key, expected_name=None, now=NOW)


def test_certificate_expired():
    data = issue(days=1)

    with pytest.raises(CertificateExpiredError, match="expired"):
        verify_certificate(data, CA.public.sign_key, expected_name="relay1", now=NOW + 2 * DAY)


def test_certificate_expired_by_clock():
    data = issue_certificate(CA, RELAY.public, "relay1", days=1, now=time.time() - 10 * DAY)

    with pytest.raises(CertificateExpiredError):
        verify_certificate(data, CA.public.sign_key, expected_name="relay1")


def test_certificate_not_yet_valid():
    data = issue()

    with pytest.raises(CertificateNotYetValidError, match="not valid until"):
        verify_certificate(data, CA.public.sign_key, expected_name="relay1", now=NOW - 3600)


def test_certificate_window_edges():
    data = issue(days=1)
    cert = msgspec.msgpack.decode(data, type=Certificate)
    body = msgspec.msgpack.decode(cert.body, type=CertificateBody)
    not_before, not_after = body.not_before, body.not_after
    key = CA.public.sign_key

    assert verify_certificate(data, key, expected_name=None, now=not_before).name == "relay1"
    assert verify_certificate(data, key, expected_name=None, now=not_after).name == "relay1"
    with pytest.raises(CertificateNotYetValidError):
        verify_certificate(data, key, expected_name=None, now=not_before - 1)
    with pytest.raises(CertificateExpiredError):
        verify_certificate(data, key, expected_name=None, now=not_after + 1)


def test_certificate_name_mismatch():
    with pytest.raises(CertificateNameMismatchError, match="'relay1'"):
        verify_certificate(issue(), CA.public.sign_key, expected_name="relay2", now=NOW)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00", b"garbage bytes", bytes(range(256)), encode(Welcome(b"x", b"s" * 64))],
)
def test_certificate_garbage(data: bytes):
    with pytest.raises(TamperedCertificateError, match="does not decode"):
        verify_certificate(data, CA.public.sign_key, expected_name=None, now=NOW)


def test_certificate_unknown_version():
    body = CertificateBody(
        version=2,
        name="relay1",
        sign_key=RELAY.public.sign_key,
        box_key=RELAY.public.box_key,
        not_before=int(NOW),
        not_after=int(NOW) + DAY,
        issuer=CA.public.sign_key,
    )
    encoded_body = encode(body)
    data = encode(Certificate(encoded_body, CA.sign(cert_module._CERT_DOMAIN + encoded_body)))

    with pytest.raises(TamperedCertificateError, match="version 2"):
        verify_certificate(data, CA.public.sign_key, expected_name=None, now=NOW)


@pytest.mark.parametrize("days", [0, -1, -0.5, 36501, float("inf"), float("nan")])
def test_issue_rejects_days(days: float):
    with pytest.raises(ValueError, match="days must be between 1 and 36500"):
        issue(days=days)


@pytest.mark.parametrize("name", ["", "two words", "x" * 65, "tab\there"])
def test_issue_rejects_name(name: str):
    with pytest.raises(ValueError, match="invalid certificate field"):
        issue(name)


# Key files ----------------------------------------------------------------


def test_key_pair_round_trip(tmp_path: Path):
    path = tmp_path / "id.key"
    save_key_pair(path, ALICE)

    loaded = load_key_pair(path)

    assert loaded.to_bytes() == ALICE.to_bytes()
    assert loaded.public == ALICE.public


def test_public_identity_round_trip(tmp_path: Path):
    path = tmp_path / "id.pub"
    save_public_identity(path, ALICE.public)

    assert load_public_identity(path) == ALICE.public


def test_private_key_mode_0600(tmp_path: Path):
    path = tmp_path / "id.key"
    save_key_pair(path, ALICE)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_private_key_mode_ignores_umask(tmp_path: Path):
    path = tmp_path / "id.key"
    path.write_text("old, world-readable")
    path.chmod(0o644)
    old_umask = os.umask(0)
    try:
        save_key_pair(path, ALICE)
    finally:
        os.umask(old_umask)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_public_key_mode_0644(tmp_path: Path):
    path = tmp_path / "id.pub"
    old_umask = os.umask(0o077)
    try:
        save_public_identity(path, ALICE.public)
    finally:
        os.umask(old_umask)

    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_key_write_leaves_no_tmp(tmp_path: Path):
    save_key_pair(tmp_path / "id.key", ALICE)
    save_key_pair(tmp_path / "id.key", BOB)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["id.key"]


def test_key_write_failure_keeps_old(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "id.key"
    save_key_pair(path, ALICE)

    def fail_replace(source: object, target: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail_replace)
    with pytest.raises(OSError, match="disk full"):
        save_key_pair(path, BOB)
    monkeypatch.undo()

    assert load_key_pair(path).to_bytes() == ALICE.to_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["id.key"]


def test_key_file_missing(tmp_path: Path):
    path = tmp_path / "missing.key"

    with pytest.raises(KeyFileError, match="not found") as info:
        load_key_pair(path)
    assert str(path) in str(info.value)


def test_key_file_wrong_label(tmp_path: Path):
    path = tmp_path / "id.pub"
    save_public_identity(path, ALICE.public)

    with pytest.raises(KeyFileError, match=PRIVATE_KEY_LABEL) as info:
        load_key_pair(path)
    assert str(path) in str(info.value)


def test_public_file_wrong_label(tmp_path: Path):
    path = tmp_path / "id.key"
    save_key_pair(path, ALICE)

    with pytest.raises(KeyFileError, match=PUBLIC_KEY_LABEL) as info:
        load_public_identity(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (
            f"-----BEGIN {PRIVATE_KEY_LABEL}-----\n!!!!\n-----END {PRIVATE_KEY_LABEL}-----\n",
            "base64",
        ),
        (
            f"-----BEGIN {PRIVATE_KEY_LABEL}-----\nAAAA\n-----END {PRIVATE_KEY_LABEL}-----\n",
            "corrupt",
        ),
        (f"-----END {PRIVATE_KEY_LABEL}-----\n-----BEGIN {PRIVATE_KEY_LABEL}-----\n", "no '"),
        ("", "no '"),
    ],
)
def test_key_file_corrupt(tmp_path: Path, content: str, reason: str):
    path = tmp_path / "id.key"
    path.write_text(content)

    with pytest.raises(KeyFileError, match=reason) as info:
        load_key_pair(path)
    assert str(path) in str(info.value)


def test_key_file_halves_mismatch(tmp_path: Path):
    path = tmp_path / "id.key"
    # Alice's Ed25519 seed with Bob's X25519 key.
    write_armored(
        path, PRIVATE_KEY_LABEL, ALICE.to_bytes()[:32] + BOB.to_bytes()[32:], private=True
    )

    with pytest.raises(KeyFileError, match="does not match") as info:
        load_key_pair(path)
    assert str(path) in str(info.value)


def test_key_file_not_ascii(tmp_path: Path):
    path = tmp_path / "id.key"
    path.write_bytes(b"\xff\xfe binary")

    with pytest.raises(KeyFileError, match="cannot read") as info:
        load_key_pair(path)
    assert str(path) in str(info.value)


def test_key_file_is_folder(tmp_path: Path):
    with pytest.raises(KeyFileError, match="cannot read") as info:
        load_key_pair(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_public_file_inconsistent(tmp_path: Path):
    path = tmp_path / "id.pub"
    write_armored(path, PUBLIC_KEY_LABEL, ALICE.public.sign_key + BOB.public.box_key, private=False)

    with pytest.raises(KeyFileError, match="does not match") as info:
        load_public_identity(path)
    assert str(path) in str(info.value)


def test_public_file_wrong_length(tmp_path: Path):
    path = tmp_path / "id.pub"
    write_armored(path, PUBLIC_KEY_LABEL, ALICE.public.sign_key, private=False)

    with pytest.raises(KeyFileError, match="invalid public key") as info:
        load_public_identity(path)
    assert str(path) in str(info.value)


def test_certificate_file_round_trip(tmp_path: Path):
    path = tmp_path / "relay.cert"
    data = issue()
    write_armored(path, CERTIFICATE_LABEL, data, private=False)

    assert read_armored(path, CERTIFICATE_LABEL) == data


def test_key_pair_repr_hides_secret():
    text = repr(ALICE)

    assert ALICE.public.fingerprint() in text
    assert ALICE.to_bytes()[:32].hex() not in text
    assert str(ALICE.to_bytes()[:32]) not in text


def test_public_identity_consistency():
    assert ALICE.public.is_consistent()
    assert not PublicIdentity(ALICE.public.sign_key, BOB.public.box_key).is_consistent()
    assert PublicIdentity.from_sign_key(ALICE.public.sign_key) == ALICE.public


def test_public_identity_wrong_length():
    with pytest.raises(CryptoError, match="32 bytes"):
        PublicIdentity(b"x" * 31, b"y" * 32)
    with pytest.raises(CryptoError, match="64 bytes"):
        PublicIdentity.from_bytes(b"x" * 63)


# Login --------------------------------------------------------------------


def test_login_round_trip():
    frame = seal_login(ALICE, RELAY.public, CHALLENGE, "alice", "hunter2")

    body = open_login(RELAY, CHALLENGE, frame)

    assert body.user == "alice"
    assert body.password == "hunter2"
    assert body.sign_key == ALICE.public.sign_key
    assert body.box_key == ALICE.public.box_key


def test_login_password_not_in_frame():
    frame = seal_login(ALICE, RELAY.public, CHALLENGE, "alice", "hunter2")

    assert b"hunter2" not in encode(frame)


def test_login_replayed_on_other_challenge():
    frame = seal_login(ALICE, RELAY.public, CHALLENGE, "alice", "hunter2")

    with pytest.raises(CryptoError, match="challenge"):
        open_login(RELAY, OTHER_CHALLENGE, frame)


def test_login_sealed_to_other_relay():
    frame = seal_login(ALICE, OTHER_RELAY.public, CHALLENGE, "alice", "hunter2")

    with pytest.raises(CryptoError, match="does not open"):
        open_login(RELAY, CHALLENGE, frame)


def test_login_inconsistent_identity_keys():
    # Alice's signing key with Bob's box key, correctly sealed and signed.
    body = LoginBody(
        user="alice",
        password="hunter2",
        sign_key=ALICE.public.sign_key,
        box_key=BOB.public.box_key,
    )
    sealed = nacl.public.SealedBox(nacl.public.PublicKey(RELAY.public.box_key)).encrypt(
        encode(body)
    )
    signature = ALICE.sign(session_module._LOGIN_DOMAIN + CHALLENGE + sealed)
    frame = Login(1, sealed, signature)

    with pytest.raises(CryptoError, match="belong together"):
        open_login(RELAY, CHALLENGE, frame)


def test_login_tampered_sealed_blob():
    frame = seal_login(ALICE, RELAY.public, CHALLENGE, "alice", "hunter2")

    for index in (0, 40, len(frame.sealed) - 1):
        tampered = msgspec.structs.replace(frame, sealed=flip(frame.sealed, index))
        with pytest.raises(CryptoError):
            open_login(RELAY, CHALLENGE, tampered)


def test_login_signed_by_other_identity():
    frame = seal_login(ALICE, RELAY.public, CHALLENGE, "alice", "hunter2")
    signature = BOB.sign(session_module._LOGIN_DOMAIN + CHALLENGE + frame.sealed)
    forged = msgspec.structs.replace(frame, signature=signature)

    with pytest.raises(CryptoError, match="signature"):
        open_login(RELAY, CHALLENGE, forged)


def test_login_malformed_body():
    sealed = nacl.public.SealedBox(nacl.public.PublicKey(RELAY.public.box_key)).encrypt(b"junk")
    frame = Login(1, sealed, ALICE.sign(session_module._LOGIN_DOMAIN + CHALLENGE + sealed))

    with pytest.raises(CryptoError, match="malformed"):
        open_login(RELAY, CHALLENGE, frame)


def test_login_body_repr_hides_password():
    body = LoginBody(user="alice", password="hunter2", sign_key=b"s" * 32, box_key=b"b" * 32)

    assert "hunter2" not in repr(body)
    assert "hunter2" not in str(body)
    assert "hunter2" not in repr([body])
    assert "alice" in repr(body)


# Relay-signed frames --------------------------------------------------------


def roster_body(version: int = 3) -> RosterBody:
    return RosterBody(
        version=version,
        entries=[
            RosterEntry("alice", ALICE.public.sign_key, ALICE.public.box_key, True),
            RosterEntry("bob", BOB.public.sign_key, BOB.public.box_key, False),
        ],
    )


def test_welcome_verifies():
    body = WelcomeBody(challenge=CHALLENGE, user="alice", roster_version=3)
    frame = sign_welcome(RELAY, body)

    assert verify_welcome(RELAY.public.sign_key, CHALLENGE, frame) == body


def test_welcome_wrong_key():
    frame = sign_welcome(RELAY, WelcomeBody(CHALLENGE, "alice", 3))

    with pytest.raises(CryptoError, match="signature"):
        verify_welcome(OTHER_RELAY.public.sign_key, CHALLENGE, frame)


def test_welcome_flipped_byte():
    frame = sign_welcome(RELAY, WelcomeBody(CHALLENGE, "alice", 3))

    with pytest.raises(CryptoError, match="signature"):
        verify_welcome(
            RELAY.public.sign_key, CHALLENGE, Welcome(flip(frame.body, 5), frame.signature)
        )
    with pytest.raises(CryptoError, match="signature"):
        verify_welcome(
            RELAY.public.sign_key, CHALLENGE, Welcome(frame.body, flip(frame.signature, 0))
        )


def test_welcome_other_challenge():
    frame = sign_welcome(RELAY, WelcomeBody(CHALLENGE, "alice", 3))

    with pytest.raises(CryptoError, match="challenge"):
        verify_welcome(RELAY.public.sign_key, OTHER_CHALLENGE, frame)


def test_roster_verifies():
    body = roster_body()

    assert verify_roster(RELAY.public.sign_key, sign_roster(RELAY, body)) == body


def test_roster_wrong_key():
    frame = sign_roster(RELAY, roster_body())

    with pytest.raises(CryptoError, match="signature"):
        verify_roster(OTHER_RELAY.public.sign_key, frame)


def test_roster_flipped_byte():
    frame = sign_roster(RELAY, roster_body())

    for index in range(len(frame.body)):
        with pytest.raises(CryptoError):
            verify_roster(RELAY.public.sign_key, Roster(flip(frame.body, index), frame.signature))
    with pytest.raises(CryptoError):
        verify_roster(RELAY.public.sign_key, Roster(frame.body, flip(frame.signature, 63)))


def test_roster_short_key_rejected():
    # Correctly signed, but one entry has a 31-byte key.
    raw = msgspec.msgpack.encode([1, [["alice", b"s" * 31, b"b" * 32, True]]])
    frame = Roster(raw, RELAY.sign(session_module._ROSTER_DOMAIN + raw))

    with pytest.raises(CryptoError, match="malformed"):
        verify_roster(RELAY.public.sign_key, frame)


def test_notice_verifies():
    body = NoticeBody(challenge=CHALLENGE, kind="replaced", message="logged in elsewhere")

    assert verify_notice(RELAY.public.sign_key, CHALLENGE, sign_notice(RELAY, body)) == body


def test_notice_wrong_key():
    frame = sign_notice(RELAY, NoticeBody(CHALLENGE, "shutdown", "bye"))

    with pytest.raises(CryptoError, match="signature"):
        verify_notice(OTHER_RELAY.public.sign_key, CHALLENGE, frame)


def test_notice_flipped_byte():
    frame = sign_notice(RELAY, NoticeBody(CHALLENGE, "shutdown", "bye"))

    with pytest.raises(CryptoError, match="signature"):
        verify_notice(
            RELAY.public.sign_key, CHALLENGE, Notice(flip(frame.body, -1), frame.signature)
        )
    with pytest.raises(CryptoError, match="signature"):
        verify_notice(
            RELAY.public.sign_key, CHALLENGE, Notice(frame.body, flip(frame.signature, 10))
        )


def test_notice_other_challenge():
    frame = sign_notice(RELAY, NoticeBody(CHALLENGE, "conflict", "wrong password"))

    with pytest.raises(CryptoError, match="challenge"):
        verify_notice(RELAY.public.sign_key, OTHER_CHALLENGE, frame)


def test_signature_bound_to_frame_kind():
    # A welcome signature must not verify as a notice over the same bytes.
    welcome = sign_welcome(RELAY, WelcomeBody(CHALLENGE, "alice", 3))

    with pytest.raises(CryptoError, match="signature"):
        verify_notice(RELAY.public.sign_key, CHALLENGE, Notice(welcome.body, welcome.signature))
    with pytest.raises(CryptoError, match="signature"):
        verify_roster(RELAY.public.sign_key, Roster(welcome.body, welcome.signature))


# Group messages ------------------------------------------------------------


def seal(body: str = "hello", *, sender: KeyPair = ALICE, sender_id: str = "alice") -> GroupMessage:
    return seal_message(GROUP_KEY, sender, group="team", sender_id=sender_id, body=body)


# Full-width punctuation is part of the Chinese text under test.
CHINESE_TEXT = "你好，世界！加密群聊"  # noqa: RUF001


@pytest.mark.parametrize("text", ["hello", CHINESE_TEXT, "emoji 🔐 and ünïcödé", ""])
def test_message_round_trip(text: str):
    frame = seal(text)

    envelope = open_message(GROUP_KEY, frame, ALICE.public.sign_key)

    assert envelope.body == text
    assert envelope.group == "team"
    assert envelope.sender == "alice"
    assert envelope.msg_id == frame.msg_id


def test_message_fields_passed_through():
    msg_id = new_message_id()
    frame = seal_message(
        GROUP_KEY, ALICE, group="team", sender_id="alice", body="x", msg_id=msg_id, sent_at=123.5
    )

    envelope = open_message(GROUP_KEY, frame, ALICE.public.sign_key)

    assert frame.msg_id == msg_id
    assert envelope.msg_id == msg_id
    assert envelope.sent_at == 123.5


def test_message_text_not_in_frame():
    frame = seal("你好 secret plans")

    assert "你好 secret plans".encode() not in encode(frame)


def test_message_wrong_group_key():
    frame = seal()

    with pytest.raises(InvalidMessageError, match="does not open"):
        open_message(new_group_key(), frame, ALICE.public.sign_key)


def test_message_malformed_group_key():
    with pytest.raises(InvalidMessageError, match="does not open"):
        open_message(b"short", seal(), ALICE.public.sign_key)


def test_message_impostor_sender():
    # Bob has the group key and signs with his own key, but claims to be Alice.
    frame = seal("pay bob", sender=BOB, sender_id="alice")

    with pytest.raises(InvalidMessageError, match="'alice'"):
        open_message(GROUP_KEY, frame, ALICE.public.sign_key)


def test_message_relayed_to_other_group():
    frame = msgspec.structs.replace(seal(), group="other")

    with pytest.raises(InvalidMessageError, match="group"):
        open_message(GROUP_KEY, frame, ALICE.public.sign_key)


def test_message_relayed_as_other_sender():
    frame = msgspec.structs.replace(seal(), sender="carol")

    # The receiver looks up carol's key, so the signature fails.
    with pytest.raises(InvalidMessageError, match="signature"):
        open_message(GROUP_KEY, frame, CAROL.public.sign_key)
    # Even with alice's key, the signed envelope names alice, not carol.
    with pytest.raises(InvalidMessageError, match="relayed as 'carol'"):
        open_message(GROUP_KEY, frame, ALICE.public.sign_key)


def test_message_relayed_with_other_id():
    frame = msgspec.structs.replace(seal(), msg_id=new_message_id())

    with pytest.raises(InvalidMessageError, match="message id"):
        open_message(GROUP_KEY, frame, ALICE.public.sign_key)


def test_message_flipped_ciphertext_byte():
    frame = seal()

    for index in (0, 23, 24, len(frame.box) - 1):
        tampered = msgspec.structs.replace(frame, box=flip(frame.box, index))
        with pytest.raises(InvalidMessageError, match="does not open"):
            open_message(GROUP_KEY, tampered, ALICE.public.sign_key)


@pytest.mark.parametrize("length", [1, 23, 24, 39])
def test_message_truncated_box(length: int):
    frame = msgspec.structs.replace(seal(), box=seal().box[:length])

    with pytest.raises(InvalidMessageError, match="does not open"):
        open_message(GROUP_KEY, frame, ALICE.public.sign_key)


def test_message_malformed_plaintext():
    box = bytes(nacl.secret.SecretBox(GROUP_KEY).encrypt(b"not an envelope"))
    frame = GroupMessage(group="team", sender="alice", msg_id=new_message_id(), box=box)

    with pytest.raises(InvalidMessageError, match="malformed"):
        open_message(GROUP_KEY, frame, ALICE.public.sign_key)


@settings(deadline=None)
@given(text=st.text())
def test_message_round_trip_any_text(text: str):
    frame = seal(text)

    assert open_message(GROUP_KEY, frame, ALICE.public.sign_key).body == text


@settings(deadline=None)
@given(data=st.data(), text=st.text(max_size=50))
def test_message_any_flipped_byte(data: st.DataObject, text: str):
    frame = seal(text)
    index = data.draw(st.integers(0, len(frame.box) - 1), label="index")
    mask = data.draw(st.integers(1, 255), label="mask")
    tampered = msgspec.structs.replace(frame, box=flip(frame.box, index, mask))

    with pytest.raises(InvalidMessageError):
        open_message(GROUP_KEY, tampered, ALICE.public.sign_key)


# Invites -------------------------------------------------------------------


def invite_bob(group_key: bytes = GROUP_KEY):
    return seal_invite(
        group_key,
        ALICE,
        group="team",
        inviter_id="alice",
        target="bob",
        target_box_key=BOB.public.box_key,
    )


def test_invite_round_trip():
    frame = invite_bob()

    assert open_invite(frame, BOB, ALICE.public.sign_key) == GROUP_KEY
    assert frame.group == "team"
    assert frame.inviter == "alice"
    assert frame.target == "bob"
    assert GROUP_KEY not in encode(frame)


def test_invite_wrong_inviter_key():
    with pytest.raises(InvalidMessageError, match="'alice'"):
        open_invite(invite_bob(), BOB, CAROL.public.sign_key)


def test_invite_sealed_to_someone_else():
    with pytest.raises(InvalidMessageError, match="not sealed to our"):
        open_invite(invite_bob(), CAROL, ALICE.public.sign_key)


@pytest.mark.parametrize("change", [{"group": "other"}, {"inviter": "carol"}, {"target": "carol"}])
def test_invite_tampered_field(change: dict[str, str]):
    frame = msgspec.structs.replace(invite_bob(), **change)

    with pytest.raises(InvalidMessageError, match="signature"):
        open_invite(frame, BOB, ALICE.public.sign_key)


def test_invite_tampered_sealed_key():
    frame = invite_bob()
    tampered = msgspec.structs.replace(frame, sealed_key=flip(frame.sealed_key, 0))

    with pytest.raises(InvalidMessageError, match="signature"):
        open_invite(tampered, BOB, ALICE.public.sign_key)


def test_invite_wrong_key_size():
    sealed = bytes(
        nacl.public.SealedBox(nacl.public.PublicKey(BOB.public.box_key)).encrypt(b"k" * 16)
    )
    signed = group_module._invite_signed_bytes("team", "alice", "bob", sealed)
    frame = msgspec.structs.replace(invite_bob(), sealed_key=sealed, signature=ALICE.sign(signed))

    with pytest.raises(InvalidMessageError, match="16 bytes"):
        open_invite(frame, BOB, ALICE.public.sign_key)
