"""The client and relay protocol cores joined in memory, with no sockets.

Bytes pass between a :class:`RelayProtocol` (with a real SQLite store) and
one :class:`ClientProtocol` per connection by hand. The test plays the relay
shell: it runs each password check with the real argon2id functions and
calls ``password_checked`` with the result.

Rules under test:

- A login runs hello, login, password check, welcome, roster, and ends with
  both sides active.
- A wrong password gets a signed conflict notice, which the client raises
  as ConflictError. A second login with the right password replaces the
  first session, which gets a signed "replaced" notice and a close.
- A login frame replayed on another connection closes it with 1008.
- The client rejects, without changing its state, a roster with a changed
  byte, a roster no newer than its current one, a notice bound to another
  session, an altered group message and a repeated message id.
- A hello with another protocol version raises ProtocolVersionError.
"""

from __future__ import annotations

import pytest

from memory_wire import Wire, check_password, flip_byte
from t2t.errors import (
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_PROTOCOL_ERROR,
    ConflictError,
    ProtocolVersionError,
)
from t2t.events import Conflict, MessageReceived, MessageRejected, RosterChanged
from t2t.frames import GroupMessage, Hello, Notice, Roster, decode_frame, encode
from t2t.protocol.client import ClientProtocol, ClientState, InviteOffer, Outgoing, Reply
from t2t.protocol.relay import CheckPassword, Close, ConnState, Forward, Send


def open_group(wire: Wire, group: str) -> None:
    """Have conn 1 (alice) create ``group`` and invite conn 2 (bob) into it."""
    alice, bob = wire.clients[1], wire.clients[2]
    alice.create_group(group)
    wire.send(1, alice.subscribe(group, create=True))
    wire.send(1, alice.invite("bob", group))
    offers = [output for output in wire.outputs[2] if isinstance(output, InviteOffer)]
    assert [offer.group for offer in offers] == [group]
    bob.group_keys[group] = offers[0].group_key


# Login ------------------------------------------------------------------------


def test_handshake_reaches_active(wire: Wire):
    client = wire.new_client("alice")
    hello = wire.relay.connect(1)

    login = client.receive(hello)
    assert client.state is ClientState.AWAITING_WELCOME
    assert len(login) == 1
    assert isinstance(login[0], Outgoing)

    actions = wire.relay.receive(1, login[0].data)
    assert wire.relay.state_of(1) is ConnState.VERIFYING
    assert len(actions) == 1
    assert isinstance(actions[0], CheckPassword)
    assert actions[0].password_hash is None  # a new account

    replies = check_password(wire.relay, actions[0])
    assert wire.relay.state_of(1) is ConnState.ACTIVE
    assert wire.relay.user_of(1) == "alice"
    assert len(replies) == 1
    assert isinstance(replies[0], Send)

    assert client.receive(replies[0].data) == []
    assert client.state is ClientState.AWAITING_ROSTER

    roster = wire.relay.publish_roster()
    assert roster is not None
    events = client.receive(roster)
    assert client.state is ClientState.ACTIVE
    assert events == [RosterChanged(client.roster_version, {"alice": True})]
    assert client.roster_version > 0
    assert client.roster["alice"].sign_key == client.identity.public.sign_key


def test_wrong_password_raises_conflict(wire: Wire):
    wire.log_in(1, wire.new_client("alice"))
    wire.relay.disconnect(1)

    client = wire.new_client("alice", "wrong password")
    (login,) = client.receive(wire.relay.connect(2))
    assert isinstance(login, Outgoing)
    (check,) = wire.relay.receive(2, login.data)
    assert isinstance(check, CheckPassword)
    actions = check_password(wire.relay, check)

    assert len(actions) == 2
    notice, close = actions
    assert isinstance(notice, Send)
    assert close == Close(2, CLOSE_POLICY_VIOLATION, "login rejected: wrong password")
    with pytest.raises(ConflictError, match="wrong password"):
        client.receive(notice.data)


def test_replayed_login_closes(wire: Wire):
    client = wire.new_client("alice")
    (login,) = client.receive(wire.relay.connect(1))
    assert isinstance(login, Outgoing)
    wire.relay.connect(2)

    actions = wire.relay.receive(2, login.data)

    assert len(actions) == 1
    assert isinstance(actions[0], Close)
    assert actions[0].conn_id == 2
    assert actions[0].code == CLOSE_POLICY_VIOLATION
    assert "challenge" in actions[0].reason
    assert wire.relay.state_of(1) is ConnState.AWAITING_LOGIN


def test_second_login_replaces_first(wire: Wire):
    first = wire.new_client("alice")
    wire.log_in(1, first)
    second = wire.new_client("alice")
    (login,) = second.receive(wire.relay.connect(2))
    assert isinstance(login, Outgoing)
    (check,) = wire.relay.receive(2, login.data)
    assert isinstance(check, CheckPassword)

    actions = check_password(wire.relay, check)

    sends = {action.conn_id: action for action in actions if isinstance(action, Send)}
    closes = [action for action in actions if isinstance(action, Close)]
    assert closes == [Close(1, CLOSE_NORMAL, "session replaced by a new login")]
    assert set(sends) == {1, 2}
    events = first.receive(sends[1].data)
    assert len(events) == 1
    assert isinstance(events[0], Conflict)
    assert events[0].kind == "replaced"
    assert second.receive(sends[2].data) == []
    assert second.state is ClientState.AWAITING_ROSTER
    assert wire.relay.active_connections() == [2]


def test_hello_version_mismatch(wire: Wire):
    client = wire.new_client("alice")
    hello = decode_frame(wire.relay.connect(1))
    assert isinstance(hello, Hello)
    newer = Hello(hello.version + 1, hello.certificate, hello.challenge)

    with pytest.raises(ProtocolVersionError) as info:
        client.receive(encode(newer))

    assert info.value.code == CLOSE_PROTOCOL_ERROR
    assert client.state is ClientState.AWAITING_HELLO


# Relay-signed frames ----------------------------------------------------------


def test_tampered_roster_rejected(wire: Wire):
    alice = wire.new_client("alice")
    wire.log_in(1, alice)
    bob = wire.new_client("bob")
    wire.connect(2, bob)
    frame = wire.relay.publish_roster()
    assert frame is not None
    roster = decode_frame(frame)
    assert isinstance(roster, Roster)
    before = dict(alice.roster)
    version_before = alice.roster_version

    for index in (0, len(roster.body) // 2, len(roster.body) - 1):
        tampered = encode(Roster(flip_byte(roster.body, index), roster.signature))
        outputs = alice.receive(tampered)
        assert len(outputs) == 1
        assert isinstance(outputs[0], MessageRejected)
        assert "roster rejected" in outputs[0].reason
        assert alice.roster == before
        assert alice.roster_version == version_before

    assert isinstance(alice.receive(frame)[0], RosterChanged)
    assert set(alice.roster) == {"alice", "bob"}


def test_stale_roster_rejected(wire: Wire):
    alice = wire.new_client("alice")
    first = wire.log_in(1, alice)
    second = wire.log_in(2, wire.new_client("bob"))
    latest = alice.roster_version
    current = dict(alice.roster)

    for replayed in (first, second):
        outputs = alice.receive(replayed)
        assert len(outputs) == 1
        assert isinstance(outputs[0], MessageRejected)
        assert f"is not newer than {latest}" in outputs[0].reason
        assert alice.roster == current
        assert alice.roster_version == latest


def test_notice_from_other_session_rejected(wire: Wire):
    alice = wire.new_client("alice")
    wire.log_in(1, alice)
    intruder = wire.new_client("alice", "wrong password")
    (login,) = intruder.receive(wire.relay.connect(2))
    assert isinstance(login, Outgoing)
    (check,) = wire.relay.receive(2, login.data)
    assert isinstance(check, CheckPassword)
    notice = next(
        action.data for action in check_password(wire.relay, check) if isinstance(action, Send)
    )
    assert isinstance(decode_frame(notice), Notice)

    outputs = alice.receive(notice)

    assert len(outputs) == 1
    assert isinstance(outputs[0], MessageRejected)
    assert "another session" in outputs[0].reason
    assert alice.conflict is None
    assert alice.state is ClientState.ACTIVE


# Group messages ---------------------------------------------------------------


@pytest.fixture
def members(wire: Wire) -> tuple[ClientProtocol, ClientProtocol]:
    """alice on conn 1 and bob on conn 2, both members of group "team"."""
    alice, bob = wire.new_client("alice"), wire.new_client("bob")
    wire.log_in(1, alice)
    wire.log_in(2, bob)
    open_group(wire, "team")
    wire.outputs[1].clear()
    wire.outputs[2].clear()
    return alice, bob


def relay_copy(wire: Wire, sender: ClientProtocol, text: str) -> bytes:
    """Send ``text`` from conn 1 and return the bytes the relay forwards to conn 2."""
    _, data = sender.seal("team", text)
    (forward,) = wire.relay.receive(1, data)
    assert isinstance(forward, Forward)
    assert forward.conn_ids == (2,)
    assert forward.data is data  # the received bytes, not a re-encoding
    return data


def test_message_opens(wire: Wire, members):
    alice, bob = members
    data = relay_copy(wire, alice, "hello")

    outputs = bob.receive(data)

    assert len(outputs) == 1
    assert isinstance(outputs[0], MessageReceived)
    assert outputs[0].sender == "alice"
    assert outputs[0].text == "hello"


@pytest.mark.parametrize("alteration", ["box", "msg_id", "group"])
def test_altered_message_rejected(wire: Wire, members, alteration: str):
    alice, bob = members
    if alteration == "group":
        bob.group_keys["other"] = bob.group_keys["team"]
    frame = decode_frame(relay_copy(wire, alice, "hello"))
    assert isinstance(frame, GroupMessage)
    altered = {
        "box": GroupMessage(frame.group, frame.sender, frame.msg_id, flip_byte(frame.box, 40)),
        "msg_id": GroupMessage(frame.group, frame.sender, flip_byte(frame.msg_id, 0), frame.box),
        "group": GroupMessage("other", frame.sender, frame.msg_id, frame.box),
    }[alteration]

    outputs = bob.receive(encode(altered))

    assert len(outputs) == 1
    assert isinstance(outputs[0], MessageRejected)
    assert outputs[0].sender == "alice"
    assert outputs[0].group == altered.group


def test_duplicate_message_rejected(wire: Wire, members):
    alice, bob = members
    data = relay_copy(wire, alice, "once")

    first = bob.receive(data)
    second = bob.receive(data)

    assert isinstance(first[0], MessageReceived)
    assert len(second) == 1
    assert isinstance(second[0], MessageRejected)
    assert "replayed" in second[0].reason


def test_relay_acks_sender(wire: Wire, members):
    alice, _ = members
    msg_id, data = alice.seal("team", "ack me")

    (forward,) = wire.relay.receive(1, data)

    assert isinstance(forward, Forward)
    assert forward.sender == 1
    assert alice.receive(forward.ack) == [Reply(("msg", msg_id.hex()), None)]
