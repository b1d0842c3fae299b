"""Relay limits: bad input, oversized messages, slow consumers and timeouts.

Rules under test:

- A connection that sends random bytes, a text message or a well-formed
  MessagePack value of the wrong shape is closed with 1002 or 1008. Wrong
  shapes are an unknown tag, wrong types, missing or extra fields, a
  relay-only frame and a frame not allowed before login. The relay logs one
  "rejected frame" record per connection, and clients connected before such
  a flood keep working.
- A message larger than max_message_size closes the connection with 1009
  and is logged as a rejection. A client given the same limit refuses such
  a send itself and stays connected.
- A subscriber that stops reading is dropped once its outbound queue is
  full, and the relay logs "dropping slow consumer". Other subscribers get
  every message.
- A connection that does not log in within login_timeout is closed with
  1008, even if it pings meanwhile. A logged-in connection that sends
  nothing for idle_timeout is closed with 1000. Any bytes reset that timer,
  so WebSocket pings keep an otherwise idle connection open, and so do Ping
  frames. A client whose WebSocket ping gets no pong within
  heartbeat_timeout closes with 1000 and records that reason in its
  Disconnected event.

Test rules: every relay listens on 127.0.0.1 port 0 with state in
tmp_path, and every wait is bounded by trio.fail_after. The timeout tests
run on trio's MockClock, which jumps over idle virtual time. The clock runs
at real speed while a client logs in, because the password hash runs in a
worker thread and the clock would otherwise jump past every timeout.
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from trio_websocket import CloseReason, ConnectionClosed, ConnectionRejected, WebSocketConnection

from _relayio_helpers import Inbox, open_raw, raw_session, read_frame, wait_closed
from support import running_relay, tcp_proxy, wait_until
from t2t.client import connect
from t2t.errors import (
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_PROTOCOL_ERROR,
    DisconnectedError,
    SendError,
)
from t2t.events import InviteReceived, MessageReceived
from t2t.frames import (
    Ack,
    Error,
    GroupMessage,
    Hello,
    Invite,
    Invited,
    Login,
    Notice,
    Ping,
    Pong,
    Roster,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Welcome,
    encode,
)

pytestmark = pytest.mark.anyio

REJECT_CODES = {CLOSE_PROTOCOL_ERROR, CLOSE_POLICY_VIOLATION, CLOSE_MESSAGE_TOO_BIG}
FLOOD_SIZE = 1000  # connections per kind of bad input
FLOOD_BATCH = 20  # bad connections open at once


# Bad input ------------------------------------------------------------------


@dataclass(frozen=True)
class BadInput:
    label: str
    data: bytes | str
    expected_code: int


def pack(value: Any) -> bytes:
    """Encode any value as MessagePack, with no frame validation."""
    return msgspec.msgpack.encode(value)


def random_bytes_inputs(rng: random.Random) -> list[BadInput]:
    return [
        BadInput("random bytes", rng.randbytes(rng.randrange(0, 300)), CLOSE_PROTOCOL_ERROR)
        for _ in range(FLOOD_SIZE)
    ]


def _bytes(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


def _name(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghij") for _ in range(rng.randrange(1, 12)))


def _wrong_shape_makers() -> list[tuple[str, int, Callable[[random.Random], bytes | str]]]:
    """(label, expected close code, maker) for each kind of wrong-shape frame."""
    decode_error = CLOSE_PROTOCOL_ERROR
    not_allowed = CLOSE_POLICY_VIOLATION
    return [
        # Not a frame at all.
        ("text message", decode_error, lambda r: encode(Ping(r.randrange(100))).hex()),
        (
            "text message",
            decode_error,
            lambda r: "".join(r.choice("xyz{}[]") for _ in range(r.randrange(1, 50))),
        ),
        ("not an array", decode_error, lambda r: pack(r.randrange(-(2**40), 2**40))),
        ("not an array", decode_error, lambda r: pack(_name(r))),
        ("not an array", decode_error, lambda r: pack(None)),
        ("not an array", decode_error, lambda r: pack(r.random())),
        ("map frame", decode_error, lambda r: pack({"t": "ping", "nonce": r.randrange(100)})),
        ("empty array", decode_error, lambda r: pack([])),
        (
            "trailing bytes",
            decode_error,
            lambda r: encode(Ping(r.randrange(100))) + _bytes(r, 1 + r.randrange(8)),
        ),
        # Wrong tag.
        ("unknown tag", decode_error, lambda r: pack(["x-" + _name(r), r.randrange(100)])),
        ("tag case", decode_error, lambda r: pack(["PING", r.randrange(100)])),
        ("tag type", decode_error, lambda r: pack([r.randrange(1000), r.randrange(100)])),
        ("tag type", decode_error, lambda r: pack([_bytes(r, 4), r.randrange(100)])),
        # Wrong field types, sizes and counts.
        ("ping nonce type", decode_error, lambda r: pack(["ping", _name(r)])),
        ("ping nonce negative", decode_error, lambda r: pack(["ping", -1 - r.randrange(1000)])),
        ("ping nonce too big", decode_error, lambda r: pack(["ping", 2**63 + r.randrange(1000)])),
        ("ping nonce float", decode_error, lambda r: pack(["ping", r.random() + 0.5])),
        ("ping nonce nil", decode_error, lambda r: pack(["ping", None])),
        ("ping nonce bool", decode_error, lambda r: pack(["ping", True])),
        ("ping missing field", decode_error, lambda r: pack(["ping"])),
        (
            "ping extra field",
            decode_error,
            lambda r: pack(["ping", r.randrange(100), r.randrange(100)]),
        ),
        ("nested arrays", decode_error, lambda r: pack(["ping", [[[r.randrange(9)]]]])),
        ("subscribe empty name", decode_error, lambda r: pack(["subscribe", ""])),
        ("subscribe space", decode_error, lambda r: pack(["subscribe", _name(r) + " " + _name(r)])),
        ("subscribe control char", decode_error, lambda r: pack(["subscribe", _name(r) + "\x00"])),
        (
            "subscribe long name",
            decode_error,
            lambda r: pack(["subscribe", "g" * (65 + r.randrange(50))]),
        ),
        ("subscribe int name", decode_error, lambda r: pack(["subscribe", r.randrange(1000)])),
        (
            "login version type",
            decode_error,
            lambda r: pack(["login", "1", _bytes(r, 40), _bytes(r, 64)]),
        ),
        ("login empty box", decode_error, lambda r: pack(["login", 1, b"", _bytes(r, 64)])),
        (
            "login short signature",
            decode_error,
            lambda r: pack(["login", 1, _bytes(r, 40), _bytes(r, r.randrange(64))]),
        ),
        (
            "login extra field",
            decode_error,
            lambda r: pack(["login", 1, _bytes(r, 40), _bytes(r, 64), 0]),
        ),
        (
            "message short id",
            decode_error,
            lambda r: pack(["msg", "g", "u", _bytes(r, r.randrange(16)), b"box"]),
        ),
        ("message empty box", decode_error, lambda r: pack(["msg", "g", "u", _bytes(r, 16), b""])),
        (
            "message text box",
            decode_error,
            lambda r: pack(["msg", "g", "u", _bytes(r, 16), _name(r)]),
        ),
        (
            "invite missing field",
            decode_error,
            lambda r: pack(["invite", "g", "a", "b", _bytes(r, 48)]),
        ),
        # Well-formed login that fails on the relay.
        (
            "login other version",
            decode_error,
            lambda r: encode(Login(2 + r.randrange(100), _bytes(r, 80), _bytes(r, 64))),
        ),
        (
            "login garbage box",
            not_allowed,
            lambda r: encode(Login(1, _bytes(r, 48 + r.randrange(100)), _bytes(r, 64))),
        ),
        # Relay-only frames sent by a client.
        (
            "hello from client",
            not_allowed,
            lambda r: encode(Hello(1, _bytes(r, 10), _bytes(r, 32))),
        ),
        (
            "welcome from client",
            not_allowed,
            lambda r: encode(Welcome(_bytes(r, 10), _bytes(r, 64))),
        ),
        ("roster from client", not_allowed, lambda r: encode(Roster(_bytes(r, 10), _bytes(r, 64)))),
        ("notice from client", not_allowed, lambda r: encode(Notice(_bytes(r, 10), _bytes(r, 64)))),
        ("ack from client", not_allowed, lambda r: encode(Ack(_bytes(r, 16)))),
        ("subscribed from client", not_allowed, lambda r: encode(Subscribed(_name(r)))),
        ("invited from client", not_allowed, lambda r: encode(Invited(_name(r), _name(r)))),
        ("error from client", not_allowed, lambda r: encode(Error(_name(r), _name(r)))),
        ("pong from client", not_allowed, lambda r: encode(Pong(r.randrange(1000)))),
        # Frames a logged-in client may send, before login.
        (
            "message before login",
            not_allowed,
            lambda r: encode(GroupMessage(_name(r), _name(r), _bytes(r, 16), _bytes(r, 40))),
        ),
        (
            "invite before login",
            not_allowed,
            lambda r: encode(Invite(_name(r), _name(r), _name(r), _bytes(r, 48), _bytes(r, 64))),
        ),
        ("subscribe before login", not_allowed, lambda r: encode(Subscribe(_name(r)))),
        ("unsubscribe before login", not_allowed, lambda r: encode(Unsubscribe(_name(r)))),
    ]


def wrong_shape_inputs(rng: random.Random) -> list[BadInput]:
    makers = _wrong_shape_makers()
    inputs = []
    for index in range(FLOOD_SIZE):
        label, code, make = makers[index % len(makers)]
        inputs.append(BadInput(label, make(rng), code))
    return inputs


@dataclass(frozen=True)
class Outcome:
    bad: BadInput
    code: int | None


async def send_bad_input(url: str, bad: BadInput) -> Outcome:
    async with open_raw(url) as ws:
        hello = await read_frame(ws)
        assert isinstance(hello, Hello)
        await ws.send_message(bad.data)
        return Outcome(bad, await wait_closed(ws))


async def flood(url: str, inputs: list[BadInput]) -> list[Outcome]:
    """Send each input on its own connection, FLOOD_BATCH connections at a time."""
    outcomes: list[Outcome] = []
    pending = iter(inputs)

    async def worker() -> None:
        for bad in pending:
            outcomes.append(await send_bad_input(url, bad))

    async with trio.open_nursery() as nursery:
        for _ in range(FLOOD_BATCH):
            nursery.start_soon(worker)
    return outcomes


def rejections_per_connection(caplog: pytest.LogCaptureFixture) -> Counter[int]:
    counts: Counter[int] = Counter()
    for record in caplog.records:
        match = re.match(r"rejected frame conn=(\d+) ", record.getMessage())
        if record.name == "t2t.relay" and match:
            counts[int(match.group(1))] += 1
    return counts


async def test_bad_input_flood(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="t2t.relay")
    rng = random.Random(20240607)
    inputs = random_bytes_inputs(rng) + wrong_shape_inputs(rng)

    async with (
        running_relay(tmp_path) as relay,
        relay.client("alice") as alice,
        relay.client("bob") as bob,
    ):
        bob_inbox = Inbox(bob, InviteReceived, MessageReceived)
        await alice.invite("bob", "team")
        await bob_inbox.wait_for(InviteReceived)

        with trio.fail_after(50):
            outcomes = await flood(relay.url, inputs)
        await wait_until(lambda: relay.relay.connection_count == 2)

        msg_id = await alice.send("team", "after the flood")
        received = await bob_inbox.wait_for(MessageReceived)

    counts = rejections_per_connection(caplog)
    assert len(outcomes) == 2 * FLOOD_SIZE
    assert [o for o in outcomes if o.code not in REJECT_CODES] == []
    assert [(o.bad.label, o.code) for o in outcomes if o.code != o.bad.expected_code] == []
    assert len(counts) == 2 * FLOOD_SIZE
    assert {conn: n for conn, n in counts.items() if n != 1} == {}
    assert received.msg_id == msg_id


async def test_two_bad_frames_one_rejection(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="t2t.relay")
    async with running_relay(tmp_path) as relay, open_raw(relay.url) as ws:
        await read_frame(ws)
        await ws.send_message(b"\xc1 not msgpack")
        await ws.send_message(encode(Pong(1)))
        code = await wait_closed(ws)
        await wait_until(lambda: relay.relay.connection_count == 0)

    assert code == CLOSE_PROTOCOL_ERROR
    assert rejections_per_connection(caplog) == Counter({1: 1})


async def test_oversized_message_before_login(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="t2t.relay")
    async with running_relay(tmp_path, max_message_size=4096) as relay, open_raw(relay.url) as ws:
        await read_frame(ws)
        await ws.send_message(b"\x00" * 4097)
        code = await wait_closed(ws)
        await wait_until(lambda: relay.relay.connection_count == 0)

    assert code == CLOSE_MESSAGE_TOO_BIG
    assert rejections_per_connection(caplog) == Counter({1: 1})


async def test_oversized_message_from_client(tmp_path):
    async with (
        running_relay(tmp_path, max_message_size=4096) as relay,
        relay.client("alice") as alice,
        relay.client("bob") as bob,
    ):
        bob_inbox = Inbox(bob, InviteReceived, MessageReceived)
        await alice.invite("bob", "team")
        await bob_inbox.wait_for(InviteReceived)

        # alice's client assumes the default 64 KiB limit, so it sends.
        with trio.fail_after(10), pytest.raises(DisconnectedError) as info:
            await alice.send("team", "x" * 5000)
        closed = alice.closed

        # bob's connection is unaffected.
        small = await bob.send("team", "small")

    assert info.value.code == CLOSE_MESSAGE_TOO_BIG
    assert closed is not None
    assert closed.code == CLOSE_MESSAGE_TOO_BIG
    assert len(small) == 16


async def test_oversized_send_refused_locally(tmp_path):
    async with (
        running_relay(tmp_path, max_message_size=4096) as relay,
        relay.client("alice", max_message_size=4096) as alice,
        relay.client("bob", max_message_size=4096) as bob,
    ):
        bob_inbox = Inbox(bob, InviteReceived, MessageReceived)
        await alice.invite("bob", "team")
        await bob_inbox.wait_for(InviteReceived)

        with pytest.raises(SendError) as info:
            await alice.send("team", "x" * 5000)
        small = await alice.send("team", "small")
        received = await bob_inbox.wait_for(MessageReceived)
        closed = alice.closed

    assert info.value.code == "message-too-large"
    assert received.msg_id == small
    assert closed is None


# Slow consumer ----------------------------------------------------------------

PAYLOAD = "p" * 48_000  # each message is about 48 KB, under the 64 KiB limit
# Upper bound on messages before the drop. In trial runs on Linux loopback the
# relay dropped the slow subscriber after 12 messages.
MAX_MESSAGES = 2_000


def slow_consumer_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if "dropping slow consumer" in record.getMessage()
    ]


async def test_slow_consumer_dropped(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="t2t.relay")
    async with (
        running_relay(tmp_path, queue_size=8, close_timeout=0.5) as relay,
        raw_session(relay.url, relay.ca_file, "slow"),
        relay.client("alice") as alice,
        relay.client("carol") as carol,
    ):
        carol_inbox = Inbox(carol, InviteReceived, MessageReceived)
        await alice.invite("carol", "team")
        await carol_inbox.wait_for(InviteReceived)
        # The relay subscribes slow's session with the invite. From here on
        # slow reads nothing, so its socket buffers and then its queue fill.
        await alice.invite("slow", "team")

        sent: list[bytes] = []
        with trio.fail_after(40):
            while not slow_consumer_records(caplog) and len(sent) < MAX_MESSAGES:
                sent.append(await alice.send("team", PAYLOAD))
            for _ in range(10):
                sent.append(await alice.send("team", PAYLOAD))
        await carol_inbox.wait_count(MessageReceived, len(sent), timeout=30)
        await wait_until(lambda: carol.roster.get("slow") is False, timeout=10)
        alice_closed = alice.closed
        carol_closed = carol.closed

    records = slow_consumer_records(caplog)
    assert len(records) == 1
    assert "user=slow" in records[0]
    assert [event.msg_id for event in carol_inbox.of(MessageReceived)] == sent
    assert alice_closed is None
    assert carol_closed is None


# Timeouts ---------------------------------------------------------------------


def run_clock_at_real_speed(real_speed: bool) -> None:
    """Switch the MockClock between wall-clock speed and jumping over idle time."""
    clock = trio.lowlevel.current_clock()
    assert isinstance(clock, trio.testing.MockClock)
    if real_speed:
        clock.autojump_threshold = math.inf
        clock.rate = 1.0
    else:
        clock.rate = 0.0
        clock.autojump_threshold = 0


async def wait_close_reason(ws: WebSocketConnection, timeout: float) -> CloseReason:
    """Read and drop frames until the relay closes ``ws``, then return the close reason."""
    with trio.fail_after(timeout):
        while True:
            try:
                await ws.get_message()
            except ConnectionClosed as exc:
                return exc.reason


class TestTimeouts:
    """Timeouts measured on a MockClock that jumps whenever every task waits."""

    @pytest.fixture
    def anyio_backend(self):
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})

    async def test_login_timeout(self, tmp_path):
        async with (
            running_relay(tmp_path, login_timeout=10, idle_timeout=60) as relay,
            open_raw(relay.url) as ws,
        ):
            await read_frame(ws)
            start = trio.current_time()
            reason = await wait_close_reason(ws, timeout=100)
            elapsed = trio.current_time() - start

        assert reason.code == CLOSE_POLICY_VIOLATION
        assert reason.reason == "no login within 10 s"
        assert elapsed >= 10

    async def test_pings_do_not_extend_login(self, tmp_path):
        async with (
            running_relay(tmp_path, login_timeout=10, idle_timeout=60) as relay,
            open_raw(relay.url) as ws,
        ):
            await read_frame(ws)
            pongs = 0
            reason: CloseReason | None = None
            with trio.fail_after(100):
                try:
                    for nonce in range(1, 100):
                        await ws.send_message(encode(Ping(nonce)))
                        assert await read_frame(ws) == Pong(nonce)
                        pongs += 1
                        await trio.sleep(1)
                except ConnectionClosed as exc:
                    reason = exc.reason

        assert reason is not None
        assert reason.code == CLOSE_POLICY_VIOLATION
        assert reason.reason == "no login within 10 s"
        assert pongs >= 9

    async def test_idle_timeout(self, tmp_path):
        async with running_relay(tmp_path, idle_timeout=30) as relay:
            run_clock_at_real_speed(True)
            start = trio.current_time()  # before the login, the last frame alice sends
            async with raw_session(relay.url, relay.ca_file, "alice") as alice:
                run_clock_at_real_speed(False)
                reason = await wait_close_reason(alice.ws, timeout=100)
                elapsed = trio.current_time() - start
            await wait_until(lambda: relay.relay.connection_count == 0)

        assert reason.code == CLOSE_NORMAL
        assert reason.reason == "idle for 30 s"
        assert elapsed >= 30

    @pytest.mark.parametrize("heartbeat", ["websocket-ping", "ping-frame"])
    async def test_pings_reset_idle_timer(self, tmp_path, heartbeat):
        # The t2t client sends WebSocket pings, and trio-websocket replies to
        # them without passing anything to the relay. Older clients send Ping
        # frames. Both must count as activity.
        async with running_relay(tmp_path, idle_timeout=30) as relay:
            run_clock_at_real_speed(True)
            async with raw_session(relay.url, relay.ca_file, "alice") as alice:
                run_clock_at_real_speed(False)
                for _ in range(6):  # 120 s, four idle timeouts
                    await trio.sleep(20)
                    with trio.fail_after(5):
                        if heartbeat == "websocket-ping":
                            await alice.ws.ping()
                        else:
                            await alice.sync()
                last_ping = trio.current_time()
                connections_while_pinging = relay.relay.connection_count
                reason = await wait_close_reason(alice.ws, timeout=100)
                silent = trio.current_time() - last_ping

        assert connections_while_pinging == 1
        assert reason.code == CLOSE_NORMAL
        assert reason.reason == "idle for 30 s"
        assert 30 <= silent < 31

    async def test_heartbeat_keeps_alive(self, tmp_path):
        async with running_relay(tmp_path, idle_timeout=30) as relay:
            run_clock_at_real_speed(True)
            async with (
                raw_session(relay.url, relay.ca_file, "quiet") as quiet,
                relay.client("alive", heartbeat_interval=5, heartbeat_timeout=2) as alive,
            ):
                run_clock_at_real_speed(False)
                # Without pings, quiet is closed after 30 s, and alive outlives it fourfold.
                quiet_reason = await wait_close_reason(quiet.ws, timeout=100)
                await trio.sleep(120)
                alive_closed = alive.closed
                connections = relay.relay.connection_count

        assert quiet_reason.code == CLOSE_NORMAL
        assert alive_closed is None
        assert connections == 1

    async def test_client_closes_without_pongs(self, tmp_path):
        async with running_relay(tmp_path, idle_timeout=600) as relay:
            assert relay.relay.port is not None
            async with tcp_proxy(relay.relay.port) as proxy:
                run_clock_at_real_speed(True)
                async with connect(
                    proxy.url,
                    user="alice",
                    password="pw-alice",
                    ca=relay.ca_file,
                    state_dir=tmp_path / "alice",
                    heartbeat_interval=20,
                    heartbeat_timeout=10,
                ) as alice:
                    run_clock_at_real_speed(False)
                    await trio.sleep(65)  # three pings, each with its pong
                    closed_while_answered = alice.closed
                    proxy.drop_replies = True  # the relay now looks dead to alice
                    start = trio.current_time()
                    with trio.fail_after(100):
                        while alice.closed is None:  # noqa: ASYNC110 (no event to wait on)
                            await trio.sleep(0.5)
                    elapsed = trio.current_time() - start
                    disconnected = alice.closed

        assert closed_while_answered is None
        assert disconnected.code == CLOSE_NORMAL
        assert disconnected.reason == "no heartbeat reply within 10 s"
        assert 10 <= elapsed <= 31  # the next ping within 20 s, then 10 s without its pong


# Transport ----------------------------------------------------------------------


async def test_fast_path_over_timestamped_stream(tmp_path):
    # The relay hands trio-websocket a TimestampedStream, and the raw writer
    # in t2t/server/framing.py must still find trio-websocket's stream and
    # lock on it, else every frame silently takes the slower send_message path.
    async with (
        running_relay(tmp_path) as relay,
        raw_session(relay.url, relay.ca_file, "alice") as alice,
    ):
        [conn] = relay.relay._connections.values()
        raw_writer = conn.raw
        await alice.sync()  # the pong goes out through the raw writer

    assert raw_writer is not None


async def test_silent_tcp_connection_closed(tmp_path):
    # A TCP connection that never sends the opening handshake gets
    # close_timeout seconds, then the relay closes it.
    async with running_relay(tmp_path, close_timeout=0.5) as relay:
        port = relay.relay.port
        assert port is not None
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        start = trio.current_time()
        with trio.fail_after(5):
            data = await stream.receive_some()
        elapsed = trio.current_time() - start
        await stream.aclose()
        connections = relay.relay.connection_count

    assert data == b""
    assert elapsed >= 0.5
    assert connections == 0


async def test_handshake_rejected_during_shutdown(tmp_path):
    async with running_relay(tmp_path) as relay:
        relay.relay.shutdown()
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_raw(relay.url):
                pass

    assert rejected.value.status_code == 503
    assert rejected.value.body == b"relay shutting down"


# Closing races ------------------------------------------------------------------


@pytest.mark.anyio
async def test_enqueue_after_writer_stopped():
    # A roster push or fanout can reach a connection whose writer has just
    # closed its queue; that must not raise into the relay's nursery.
    from t2t.server.outbox import Outbox

    conn = Outbox(1, object(), queue_size=4)  # type: ignore[arg-type]
    await conn.outbox_receive.aclose()

    assert conn.enqueue(b"frame")
    assert conn.closing


@pytest.mark.anyio
async def test_peer_of_disconnected_stream():
    # The relay logs the peer address of each new connection; a peer that is
    # already gone must not turn that log line into an exception.
    from t2t.server.transport import TimestampedStream

    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    with sock:
        stream = TimestampedStream(trio.SocketStream(sock))

        peer = stream.peer

    assert peer.startswith("unknown")


# Peers that break off around the handshake or the close -----------------------

_HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: relay.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
_MASKED_TEXT_HI = b"\x81\x82\x00\x00\x00\x00hi"  # a text frame, which the relay closes with 1002
_MASKED_PING = b"\x89\x81\x00\x00\x00\x00k"


async def _break_off(port: int, misbehaviour: str) -> None:
    """Open a raw TCP connection to the relay and misbehave in one of three ways."""
    sock = trio.socket.socket()
    await sock.connect(("127.0.0.1", port))
    with sock:
        await sock.send(_HANDSHAKE)
        if misbehaviour == "reset":
            # SO_LINGER with a zero timeout turns close() into a TCP reset.
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        elif misbehaviour == "ping while closing":
            await sock.recv(4096)  # 101 Switching Protocols
            await sock.send(_MASKED_TEXT_HI)
            await trio.sleep(0.3)  # the relay has sent its close frame by now
            await sock.send(_MASKED_PING)
            await trio.sleep(0.3)


@pytest.mark.anyio
@pytest.mark.parametrize("misbehaviour", ["reset", "close", "ping while closing"])
async def test_peer_breaking_off_spares_relay(tmp_path, caplog, misbehaviour):
    caplog.set_level(logging.INFO, logger="t2t.relay")
    with trio.fail_after(30):
        async with (
            running_relay(tmp_path) as relay,
            relay.client("alice") as alice,
            relay.client("bob") as bob,
        ):
            inbox = Inbox(bob, InviteReceived, MessageReceived)
            await alice.invite("bob", "team")
            await inbox.wait_for(InviteReceived)
            port = int(relay.url.rsplit(":", 1)[1])
            for _ in range(3):
                await _break_off(port, misbehaviour)
            await wait_until(lambda: relay.relay.connection_count == 2)
            await alice.send("team", "still here")
            received = await inbox.wait_for(MessageReceived)

    assert received.text == "still here"
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert failures == []
    # The address is read at accept time, so a line about a peer that has
    # gone still names it. A reset that arrives before the accept leaves no
    # address to read.
    if misbehaviour != "reset":
        assert not any("peer=unknown" in r.getMessage() for r in caplog.records)
