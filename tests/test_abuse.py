"""Abuse resistance: what one hostile or broken peer can do to everyone else.

Rules under test:

- A peer that stops reading delays at most its own deliveries: other users
  still log in, because roster pushes never wait for a full queue.
- Password guessing is limited per user id: after five wrong passwords in a
  minute, even the right password is refused until the minute has passed.
- Too many password checks at once are refused with close code 1013.
- Registrations stop at max_accounts, which keeps the roster below the
  clients' message size limit; existing users still log in.
- A forged invite makes the client unsubscribe from the group it was pushed
  into, so a stranger cannot stream unreadable messages at it.
- Bad local input (a password too long, an argon2id cost out of range) is
  refused before anything is sent.

Tests run real relays on 127.0.0.1 (port 0) or protocol cores in memory.
"""

from __future__ import annotations

import logging

import pytest
import trio

from _relayio_helpers import raw_session
from memory_wire import Wire
from support import running_relay, wait_until
from t2t import ConflictError, DisconnectedError, connect
from t2t.crypto.keys import KeyPair
from t2t.errors import CLOSE_TRY_AGAIN_LATER
from t2t.events import MessageRejected
from t2t.protocol.client import Outgoing
from t2t.server.passwords import MIB, HashCost

PAYLOAD = "p" * 48_000  # bytes per flood message, under the 64 KiB limit


@pytest.mark.anyio
async def test_stalled_peer_does_not_block_login(tmp_path):
    # send_timeout is far longer than the login may take, so the login can
    # only finish if the roster push does not wait for the stalled queue.
    async with (
        running_relay(tmp_path, queue_size=4, send_timeout=60, close_timeout=0.5) as relay,
        raw_session(relay.url, relay.ca_file, "stalled"),
        relay.client("alice") as alice,
    ):
        await alice.invite("stalled", "team")
        sent = 0

        async def flood() -> None:
            nonlocal sent
            for _ in range(2_000):
                await alice.send("team", PAYLOAD)
                sent += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)
            # Wait until alice's sends stop completing: the relay is then
            # waiting on the stalled peer's full queue.
            with trio.fail_after(30):
                while True:
                    before = sent
                    await trio.sleep(0.5)
                    if sent == before:
                        break
            with trio.fail_after(8):
                async with relay.client("dave") as dave:
                    logged_in = dave.user
            nursery.cancel_scope.cancel()

    assert logged_in == "dave"
    assert sent < 2_000


def test_guessing_locked_out(wire: Wire):
    wire.log_in(1, wire.new_client("alice", "right"))
    wire.relay.disconnect(1)

    refusals = []
    for attempt in range(2, 8):
        guesser = wire.new_client("alice", "wrong" if attempt < 7 else "right")
        with pytest.raises(ConflictError) as info:
            wire.connect(attempt, guesser)
        refusals.append(str(info.value))

    assert all("wrong password for user 'alice'" in refusal for refusal in refusals[:5])
    assert "too many wrong passwords" in refusals[5]


@pytest.mark.anyio
async def test_login_flood_gets_try_again(tmp_path):
    outcomes: list[object] = []

    async def log_in(relay, user: str) -> None:
        try:
            async with relay.client(user):
                outcomes.append("ok")
        except DisconnectedError as exc:
            outcomes.append(exc.code)

    async with running_relay(
        tmp_path, hash_cost=HashCost(), hash_threads=1, max_pending_logins=1
    ) as relay:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for index in range(10):
                    nursery.start_soon(log_in, relay, f"user{index}")

    assert "ok" in outcomes
    assert CLOSE_TRY_AGAIN_LATER in outcomes
    assert set(outcomes) <= {"ok", CLOSE_TRY_AGAIN_LATER}


@pytest.mark.anyio
async def test_full_relay_refuses_registration(tmp_path):
    async with running_relay(tmp_path, max_accounts=2) as relay:
        async with relay.client("alice"), relay.client("bob"):
            pass
        with pytest.raises(ConflictError, match=r"relay is full \(2 accounts\)"):
            async with relay.client("carol"):
                pass
        async with relay.client("alice") as alice:
            returning = alice.user

    assert returning == "alice"


def test_forged_invite_unsubscribes(wire: Wire):
    alice, bob = wire.new_client("alice"), wire.new_client("bob")
    wire.log_in(1, alice)
    wire.log_in(2, bob)
    alice.create_group("team")
    wire.send(1, alice.subscribe("team", create=True))

    # Signed with a key that is not alice's roster key.
    forger = KeyPair.generate()
    alice_key = alice.identity
    alice.identity = forger
    invite = alice.invite("bob", "team")
    alice.identity = alice_key
    outputs = wire.deliver(2, wire_invite(wire, invite))

    assert any(isinstance(output, MessageRejected) for output in outputs)
    assert any(isinstance(output, Outgoing) for output in outputs)
    assert 2 not in wire.relay.router.recipients("team", "alice")


def wire_invite(wire: Wire, invite: bytes) -> bytes:
    """Send an invite from conn 1 through the relay and return what it forwards to conn 2."""
    forwarded = [
        action.data
        for action in wire.relay.receive(1, invite)
        if getattr(action, "conn_id", None) == 2
    ]
    assert len(forwarded) == 1
    return forwarded[0]


@pytest.mark.anyio
async def test_long_password_refused_locally(tmp_path):
    # Port 9 (discard) has no relay: a connection attempt would fail differently.
    with pytest.raises(ValueError, match="password must be 1 to 1024 characters"):
        async with connect(
            "ws://127.0.0.1:9", user="alice", password="x" * 1025, ca=tmp_path / "ca.pub"
        ):
            pass


@pytest.mark.parametrize(
    ("opslimit", "memlimit", "message"),
    [
        (11, 19 * MIB, "passes"),
        (0, 19 * MIB, "passes"),
        (2, 2048 * MIB, "2048 MiB"),
        (2, 1024, "memory"),
    ],
)
def test_hash_cost_bounds(opslimit: int, memlimit: int, message: str):
    with pytest.raises(ValueError, match=message):
        HashCost(opslimit, memlimit)


@pytest.mark.anyio
async def test_slow_consumer_logged_once(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="t2t.relay")
    async with (
        running_relay(tmp_path, queue_size=4, send_timeout=0.5, close_timeout=0.5) as relay,
        raw_session(relay.url, relay.ca_file, "stalled"),
        relay.client("alice") as alice,
    ):
        await alice.invite("stalled", "team")
        with trio.fail_after(30):
            while "stalled" not in [u for u, online in alice.roster.items() if not online]:
                await alice.send("team", PAYLOAD)
        await wait_until(lambda: alice.roster.get("stalled") is False)

    drops = [r for r in caplog.records if "dropping slow consumer" in r.getMessage()]
    assert len(drops) == 1


@pytest.mark.anyio
async def test_leave_while_relay_busy(tmp_path, caplog):
    # The relay's reader for alice waits on a stalled member's full queue,
    # so it does not reply to alice's close within the client's 2 s. Leaving
    # the block must still end quietly, not with trio-websocket's
    # DisconnectionTimeout.
    caplog.set_level(logging.WARNING, logger="t2t.client")
    with trio.fail_after(30):
        async with (
            running_relay(tmp_path, queue_size=2, send_timeout=5) as relay,
            raw_session(relay.url, relay.ca_file, "stalled"),
            relay.client("alice") as alice,
        ):
            await alice.invite("stalled", "team")
            async with trio.open_nursery() as senders:
                for _ in range(100):
                    senders.start_soon(alice.send, "team", "z" * 20_000)
                await trio.sleep(0.5)
                senders.cancel_scope.cancel()

    warnings = [
        r.getMessage() for r in caplog.records if "did not confirm the close" in r.getMessage()
    ]
    assert len(warnings) == 1
