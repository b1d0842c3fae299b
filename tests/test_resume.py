"""Resume tokens let a returning client log in without a password hash.

Rules under test:

- The relay issues a token in every welcome; a login that presents it,
  signed by the same identity key, skips the password check, and the token
  is then spent.
- A token is refused (and the password checked instead) when it is expired,
  already used, issued to another identity key, or disabled with ttl 0.
- A token works only with the password it was issued with, so a wrong
  password is rejected even with a valid token on disk.
- Tokens survive the client's state folder, not a relay restart.
"""

from __future__ import annotations

import logging

import pytest

from memory_wire import RELAY_NAME, Wire, check_password
from support import running_relay
from t2t.crypto.keys import KeyPair
from t2t.errors import ConflictError
from t2t.frames import WelcomeBody
from t2t.protocol.client import ClientProtocol, ClientState, Outgoing
from t2t.protocol.relay import CheckPassword, Send
from t2t.protocol.resume import ResumeTokens


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


# ResumeTokens ---------------------------------------------------------------

KEY = b"k" * 32


def test_token_redeems_once():
    tokens = ResumeTokens(60, Clock())
    token, _ = tokens.issue("alice", KEY, "pw")

    assert tokens.redeem("alice", token, KEY, "pw")
    assert not tokens.redeem("alice", token, KEY, "pw")


def test_token_bound_to_identity_key():
    tokens = ResumeTokens(60, Clock())
    token, _ = tokens.issue("alice", KEY, "pw")

    assert not tokens.redeem("alice", token, b"x" * 32, "pw")


def test_token_bound_to_password():
    tokens = ResumeTokens(60, Clock())
    token, _ = tokens.issue("alice", KEY, "pw")

    assert not tokens.redeem("alice", token, KEY, "wrong")


def test_token_bound_to_user():
    tokens = ResumeTokens(60, Clock())
    token, _ = tokens.issue("alice", KEY, "pw")

    assert not tokens.redeem("bob", token, KEY, "pw")


def test_token_expires():
    clock = Clock()
    tokens = ResumeTokens(60, clock)
    token, expires = tokens.issue("alice", KEY, "pw")
    clock.now += 61

    assert expires == 1_000_060
    assert not tokens.redeem("alice", token, KEY, "pw")


def test_newer_token_replaces_older():
    tokens = ResumeTokens(60, Clock())
    old, _ = tokens.issue("alice", KEY, "pw")
    new, _ = tokens.issue("alice", KEY, "pw")

    assert not tokens.redeem("alice", old, KEY, "pw")
    assert tokens.redeem("alice", new, KEY, "pw")


def test_zero_ttl_disables_tokens():
    tokens = ResumeTokens(0, Clock())

    assert tokens.issue("alice", KEY, "pw") == (b"", 0)
    assert not tokens.redeem("alice", b"", KEY, "pw")


def test_negative_ttl_rejected():
    with pytest.raises(ValueError, match="must not be negative"):
        ResumeTokens(-1, Clock())


# Relay and client protocols ----------------------------------------------------


def returning_client(wire: Wire, first: ClientProtocol, password: str) -> ClientProtocol:
    """A client with the same identity and saved tokens as ``first``."""
    return ClientProtocol(
        user=first.user,
        password=password,
        identity=first.identity,
        ca_key=wire.ca.public.sign_key,
        relay_name=RELAY_NAME,
        group_keys={},
        resume_tokens=first.resume_tokens,
    )


def login_actions(wire: Wire, client: ClientProtocol, conn_id: int) -> list[object]:
    (login,) = client.receive(wire.relay.connect(conn_id))
    assert isinstance(login, Outgoing)
    return list(wire.relay.receive(conn_id, login.data))


def test_welcome_carries_token(wire: Wire):
    client = wire.new_client("alice")
    wire.log_in(1, client)

    (saved,) = client.resume_tokens.values()
    assert len(saved.token) == 32


def test_returning_login_skips_hash(wire: Wire):
    first = wire.new_client("alice")
    wire.log_in(1, first)
    wire.relay.disconnect(1)

    again = returning_client(wire, first, "pw-alice")
    actions = login_actions(wire, again, 2)

    assert not any(isinstance(action, CheckPassword) for action in actions)
    assert isinstance(actions[-1], Send)
    assert again.receive(actions[-1].data) == []
    assert again.state is ClientState.AWAITING_ROSTER


def test_spent_token_falls_back_to_password(wire: Wire):
    first = wire.new_client("alice")
    wire.log_in(1, first)
    wire.relay.disconnect(1)
    stale = dict(first.resume_tokens)  # copy before the resume replaces it

    login_actions(wire, returning_client(wire, first, "pw-alice"), 2)
    wire.relay.disconnect(2)
    replay = ClientProtocol(
        user="alice",
        password="pw-alice",
        identity=first.identity,
        ca_key=wire.ca.public.sign_key,
        relay_name=RELAY_NAME,
        group_keys={},
        resume_tokens=stale,
    )
    actions = login_actions(wire, replay, 3)

    assert [type(action) for action in actions] == [CheckPassword]


def test_other_identity_token_refused(wire: Wire):
    first = wire.new_client("alice")
    wire.log_in(1, first)
    wire.relay.disconnect(1)

    thief = ClientProtocol(
        user="alice",
        password="pw-alice",
        identity=KeyPair.generate(),
        ca_key=wire.ca.public.sign_key,
        relay_name=RELAY_NAME,
        group_keys={},
        resume_tokens=first.resume_tokens,
    )
    actions = login_actions(wire, thief, 2)

    assert [type(action) for action in actions] == [CheckPassword]


def test_wrong_password_not_resumed(wire: Wire):
    first = wire.new_client("alice")
    wire.log_in(1, first)
    wire.relay.disconnect(1)

    again = returning_client(wire, first, "wrong password")
    (check,) = login_actions(wire, again, 2)
    assert isinstance(check, CheckPassword)
    actions = check_password(wire.relay, check)

    notice = actions[0]
    assert isinstance(notice, Send)
    with pytest.raises(ConflictError):
        again.receive(notice.data)


def test_welcome_body_defaults_keep_old_frames():
    body = WelcomeBody(b"c" * 32, "alice", 3)

    assert body.resume_token == b""
    assert body.resume_expires == 0


# Real relay and client ----------------------------------------------------------


@pytest.mark.anyio
async def test_reconnect_uses_saved_token(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="t2t.relay")
    async with running_relay(tmp_path) as relay:
        async with relay.client("alice"):
            pass
        token_file = tmp_path / "client-alice" / "resume.json"
        assert token_file.stat().st_mode & 0o777 == 0o600
        before = token_file.read_text()

        async with relay.client("alice") as alice:
            assert alice.user == "alice"

        assert token_file.read_text() != before  # the token was spent and replaced
    methods = [r.getMessage().rsplit("=", 1)[1] for r in caplog.records if "logged in" in r.msg]
    assert methods == ["password", "resume token"]
