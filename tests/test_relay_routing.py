"""Routing through an in-process relay over real WebSockets.

Rules under test:

- A group message goes only to the group's subscribed members other than
  the sender. The relay subscribes an invitee's current session when it
  forwards the invite. A user outside the group, a member who unsubscribed
  and a member whose current session never subscribed receive nothing. An
  invite goes only to its target.
- The sender gets an ack naming the message id and no copy of its message.
- Refused requests (not a member, unknown group, an invite to oneself, to
  an offline or to an unknown user) come back as error frames. The client
  raises them as SendError, also for a group id as long as a message id.
  The connection stays open, and a client whose new group was refused
  keeps no key for it.
- A frame that names another user as sender or inviter closes that
  connection with 1008 and leaves every other connection alone.
- A box altered on the way is rejected by the receiving client.

Test rules: every relay listens on 127.0.0.1 port 0 and keeps its state in
tmp_path, and every wait is bounded by trio.fail_after. "Receives nothing" is
checked with a ping: the relay queues a connection's frames in order, so a
frame routed to it before the ping arrives before the pong.
"""

from __future__ import annotations

import secrets

import pytest

from _relayio_helpers import Inbox, raw_session, wait_closed
from support import running_relay
from t2t.errors import CLOSE_POLICY_VIOLATION, SendError
from t2t.events import InviteReceived, MessageReceived, MessageRejected
from t2t.frames import Ack, Error, GroupMessage, Invite, Invited, Unsubscribe

pytestmark = pytest.mark.anyio


def flip_byte(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


async def test_message_only_to_subscribers(tmp_path):
    async with (
        running_relay(tmp_path) as relay,
        raw_session(relay.url, relay.ca_file, "carol") as carol,
        raw_session(relay.url, relay.ca_file, "erin") as erin,
        relay.client("alice") as alice,
        relay.client("bob") as bob,
    ):
        bob_inbox = Inbox(bob, InviteReceived, MessageReceived)
        await alice.invite("bob", "team")
        await bob_inbox.wait_for(InviteReceived)

        # The relay subscribes an invitee's current session, and erin opts out.
        await alice.invite("erin", "team")
        await erin.expect(Invite)
        await erin.send(Unsubscribe("team"))
        await erin.sync()  # the relay has handled the unsubscribe once it pongs

        # dave is a member, but his next session never subscribes.
        async with raw_session(relay.url, relay.ca_file, "dave") as dave:
            await alice.invite("dave", "team")
            await dave.expect(Invite)
        async with raw_session(relay.url, relay.ca_file, "dave") as dave:
            msg_id = await alice.send("team", "members only")
            received = await bob_inbox.wait_for(MessageReceived)
            carol_frames = await carol.sync()
            erin_frames = await erin.sync()
            dave_frames = await dave.sync()

    assert received.msg_id == msg_id
    assert received.text == "members only"
    assert carol_frames == []
    assert erin_frames == []
    assert dave_frames == []


async def test_invitee_gets_next_message(tmp_path):
    async with (
        running_relay(tmp_path) as relay,
        raw_session(relay.url, relay.ca_file, "bob") as bob,
        relay.client("alice") as alice,
    ):
        await alice.invite("bob", "team")
        msg_id = await alice.send("team", "right after the invite")
        first = await bob.next_frame()
        second = await bob.next_frame()

    assert isinstance(first, Invite)
    assert isinstance(second, GroupMessage)
    assert second.msg_id == msg_id


async def test_invite_only_to_target(tmp_path):
    async with (
        running_relay(tmp_path) as relay,
        raw_session(relay.url, relay.ca_file, "carol") as carol,
        relay.client("alice") as alice,
        relay.client("bob") as bob,
    ):
        bob_inbox = Inbox(bob, InviteReceived)
        await alice.invite("bob", "team")
        invite = await bob_inbox.wait_for(InviteReceived)
        carol_frames = await carol.sync()

    assert invite == InviteReceived("team", "alice", True)
    assert carol_frames == []


async def test_sender_acked_without_echo(tmp_path):
    async with (
        running_relay(tmp_path) as relay,
        raw_session(relay.url, relay.ca_file, "alice") as alice,
        relay.client("bob") as bob,
    ):
        bob_inbox = Inbox(bob, InviteReceived, MessageReceived)
        await alice.create_group("team")
        invited = await alice.invite("bob", "team")
        await bob_inbox.wait_for(InviteReceived)

        frame = alice.seal("team", "no echo")
        await alice.send(frame)
        received = await bob_inbox.wait_for(MessageReceived)
        ack = await alice.next_frame()
        alice_frames = await alice.sync()

    assert invited == Invited("team", "bob")
    assert ack == Ack(frame.msg_id)
    assert alice_frames == []
    assert received.msg_id == frame.msg_id
    assert received.sender == "alice"


async def test_client_send_returns_acked_id(tmp_path):
    async with (
        running_relay(tmp_path) as relay,
        relay.client("alice") as alice,
        relay.client("bob") as bob,
    ):
        bob_inbox = Inbox(bob, InviteReceived, MessageReceived)
        alice_inbox = Inbox(alice, MessageReceived, MessageRejected)
        await alice.invite("bob", "team")
        await bob_inbox.wait_for(InviteReceived)

        first = await alice.send("team", "first")
        second = await alice.send("team", "second")
        await bob_inbox.wait_count(MessageReceived, 2)

    assert len(first) == 16
    assert first != second
    assert [event.msg_id for event in bob_inbox.of(MessageReceived)] == [first, second]
    assert alice_inbox.events == []


async def test_create_existing_group_refused(tmp_path):
    async with (
        running_relay(tmp_path) as relay,
        raw_session(relay.url, relay.ca_file, "alice") as alice,
        relay.client("bob") as bob,
    ):
        await alice.create_group("team")
        with pytest.raises(SendError) as info:
            await bob.invite("alice", "team")

        # The refusal leaves bob's connection usable.
        await bob.invite("alice", "bobs")
        invite = await alice.expect(Invite)
        msg_id = await bob.send("bobs", "still connected")

    assert info.value.code == "group-exists"
    assert invite.group == "bobs"
    assert len(msg_id) == 16


async def test_refused_group_leaves_no_key(tmp_path):
    async with (
        running_relay(tmp_path) as relay,
        raw_session(relay.url, relay.ca_file, "alice") as alice,
        relay.client("bob") as bob,
    ):
        await alice.create_group("team")
        with pytest.raises(SendError):
            await bob.invite("alice", "team")

        assert "team" not in bob.groups


async def test_group_error_16_char_id(tmp_path):
    # A 16-character group id has the length of a message id, and the
    # refusal must still reach the pending subscribe instead of timing out.
    group = "sixteen-chars-gr"
    async with (
        running_relay(tmp_path) as relay,
        raw_session(relay.url, relay.ca_file, "alice") as alice,
        relay.client("bob", request_timeout=5) as bob,
    ):
        await alice.create_group(group)
        with pytest.raises(SendError) as info:
            await bob.invite("alice", group)

    assert len(group.encode()) == 16
    assert info.value.code == "group-exists"


async def test_subscribe_not_invited(tmp_path):
    async with (
        running_relay(tmp_path) as relay,
        raw_session(relay.url, relay.ca_file, "alice") as alice,
        raw_session(relay.url, relay.ca_file, "mallory") as mallory,
    ):
        await alice.create_group("team")
        reply = await mallory.subscribe("team")

    assert isinstance(reply, Error)
    assert reply.code == "not-a-member"
    assert reply.group == "team"


async def test_subscribe_unknown_group(tmp_path):
    async with (
        running_relay(tmp_path) as relay,
        raw_session(relay.url, relay.ca_file, "alice") as alice,
    ):
        reply = await alice.subscribe("nowhere")

    assert isinstance(reply, Error)
    assert reply.code == "unknown-group"


async def test_invite_self_refused(tmp_path):
    async with (
        running_relay(tmp_path) as relay,
        raw_session(relay.url, relay.ca_file, "alice") as alice,
    ):
        await alice.create_group("team")
        reply = await alice.invite("alice", "team")

    assert isinstance(reply, Error)
    assert reply.code == "invalid-target"
    assert reply.group == "team"


async def test_invite_from_non_member(tmp_path):
    async with (
        running_relay(tmp_path) as relay,
        raw_session(relay.url, relay.ca_file, "alice") as alice,
        raw_session(relay.url, relay.ca_file, "bob") as bob,
        raw_session(relay.url, relay.ca_file, "mallory") as mallory,
    ):
        await alice.create_group("team")
        # mallory seals a group key of her own under the same group id.
        mallory.group_keys["team"] = b"\x00" * 32
        reply = await mallory.invite("bob", "team")
        bob_frames = await bob.sync()

    assert isinstance(reply, Error)
    assert reply.code == "not-a-member"
    assert reply.group == "team"
    assert bob_frames == []


async def test_unknown_group_error(tmp_path):
    async with (
        running_relay(tmp_path) as relay,
        raw_session(relay.url, relay.ca_file, "alice") as alice,
    ):
        msg_id = secrets.token_bytes(16)
        await alice.send(GroupMessage("ghost", "alice", msg_id, b"\x00" * 40))
        reply = await alice.next_frame()
        later = await alice.sync()

    assert isinstance(reply, Error)
    assert reply.code == "unknown-group"
    assert reply.group == "ghost"
    assert reply.msg_id == msg_id
    assert later == []


async def test_invite_offline_target(tmp_path):
    async with running_relay(tmp_path) as relay:
        async with relay.client("bob"):
            pass
        async with relay.client("alice") as alice:
            roster = alice.roster
            with pytest.raises(SendError) as info:
                await alice.invite("bob", "team")

    assert roster["bob"] is False
    assert info.value.code == "offline-target"


async def test_invite_unknown_user_client(tmp_path):
    async with running_relay(tmp_path) as relay, relay.client("alice") as alice:
        with pytest.raises(SendError) as info:
            await alice.invite("nobody", "team")

    assert info.value.code == "unknown-user"


async def test_invite_unknown_user_relay(tmp_path):
    async with (
        running_relay(tmp_path) as relay,
        raw_session(relay.url, relay.ca_file, "alice") as alice,
    ):
        await alice.create_group("team")
        await alice.send(Invite("team", "alice", "nobody", b"k" * 80, b"\x00" * 64))
        reply = await alice.next_frame()
        later = await alice.sync()

    assert isinstance(reply, Error)
    assert reply.code == "unknown-user"
    assert reply.group == "team"
    assert reply.msg_id == b""
    assert later == []


async def test_forged_sender_closes(tmp_path, caplog):
    async with (
        running_relay(tmp_path) as relay,
        raw_session(relay.url, relay.ca_file, "mallory") as mallory,
        relay.client("alice") as alice,
        relay.client("bob") as bob,
    ):
        bob_inbox = Inbox(bob, InviteReceived, MessageReceived)
        await alice.invite("bob", "team")
        await bob_inbox.wait_for(InviteReceived)

        await mallory.send(GroupMessage("team", "alice", secrets.token_bytes(16), b"\x00" * 40))
        code = await wait_closed(mallory.ws)

        msg_id = await alice.send("team", "unaffected")
        received = await bob_inbox.wait_for(MessageReceived)
        alice_closed = alice.closed
        bob_closed = bob.closed

    assert code == CLOSE_POLICY_VIOLATION
    assert received.msg_id == msg_id
    assert alice_closed is None
    assert bob_closed is None
    assert any("sender 'alice' does not match" in r.getMessage() for r in caplog.records)


async def test_forged_inviter_closes(tmp_path):
    async with (
        running_relay(tmp_path) as relay,
        raw_session(relay.url, relay.ca_file, "mallory") as mallory,
        relay.client("alice") as alice,
        relay.client("bob") as bob,
    ):
        bob_inbox = Inbox(bob, InviteReceived)
        await mallory.create_group("team")
        await mallory.send(Invite("team", "alice", "bob", b"k" * 80, b"\x00" * 64))
        code = await wait_closed(mallory.ws)

        await alice.invite("bob", "other")
        invite = await bob_inbox.wait_for(InviteReceived)

    assert code == CLOSE_POLICY_VIOLATION
    assert invite == InviteReceived("other", "alice", True)
    assert bob_inbox.of(InviteReceived) == [invite]


async def test_altered_box_rejected(tmp_path):
    async with (
        running_relay(tmp_path) as relay,
        raw_session(relay.url, relay.ca_file, "alice") as alice,
        relay.client("bob") as bob,
    ):
        bob_inbox = Inbox(bob, InviteReceived, MessageReceived, MessageRejected)
        await alice.create_group("team")
        await alice.invite("bob", "team")
        await bob_inbox.wait_for(InviteReceived)

        # The relay forwards bytes unchanged, so a sender that alters its own
        # box reaches bob exactly as a relay that altered it would.
        frame = alice.seal("team", "altered")
        altered = GroupMessage(frame.group, frame.sender, frame.msg_id, flip_byte(frame.box, 30))
        await alice.send(altered)
        ack = await alice.next_frame()
        rejected = await bob_inbox.wait_for(MessageRejected)

        intact = alice.seal("team", "intact")
        await alice.send(intact)
        received = await bob_inbox.wait_for(MessageReceived)

    assert ack == Ack(frame.msg_id)
    assert rejected.group == "team"
    assert rejected.sender == "alice"
    assert "does not open" in rejected.reason
    assert received.msg_id == intact.msg_id
    assert bob_inbox.of(MessageReceived) == [received]


async def test_send_without_key_is_checkpoint(tmp_path):
    # A loop that retries a failing send must still let other tasks run.
    import trio

    other_task_ran = trio.Event()
    failures = 0

    async def other_task() -> None:
        other_task_ran.set()

    async with (
        running_relay(tmp_path) as relay,
        relay.client("alice") as alice,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(other_task)
        while not other_task_ran.is_set() and failures < 100:
            with pytest.raises(SendError, match="no key for group"):
                await alice.send("unknown", "hello")
            failures += 1

    assert other_task_ran.is_set()
    assert failures < 10  # without a checkpoint the loop runs all 100 times
