"""The blocking ChatClient, driven from plain synchronous test functions.

The relay runs in its own trio thread through a second anyio blocking portal,
so these tests exercise the same thread layout as a non-async program. Every
wait has a timeout, under the pytest-timeout limit set in pyproject.toml.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from anyio.from_thread import start_blocking_portal
from trio_websocket import WebSocketRequest, serve_websocket

from support import RunningRelay, running_relay
from t2t.client import ChatClient
from t2t.client.state import GROUP_KEYS_FILE, load_group_keys
from t2t.errors import ConflictError, DisconnectedError
from t2t.events import (
    Conflict,
    Disconnected,
    Event,
    InviteReceived,
    MessageReceived,
    RosterChanged,
)

WAIT = 5.0  # seconds to wait for any one event
FAST: dict[str, Any] = {"connect_timeout": WAIT, "request_timeout": WAIT}  # connect() options


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RunningRelay]:
    """Run a relay in a background trio thread until the test ends."""
    with (
        start_blocking_portal(backend="trio", name="test-relay") as portal,
        portal.wrap_async_context_manager(running_relay(tmp_path)) as running,
    ):
        yield running


@pytest.fixture
def make_client(relay: RunningRelay) -> Iterator[Callable[..., ChatClient]]:
    """Return a factory of ChatClients for ``relay``, and stop every one after the test."""
    created: list[ChatClient] = []

    def make(user: str, **kwargs: Any) -> ChatClient:
        kwargs.setdefault("pwd", f"pw-{user}")
        client = ChatClient(
            id=user,
            server_url=relay.url,
            ca_file=relay.ca_file,
            state_dir=relay.data_dir / f"client-{user}",
            **FAST,
            **kwargs,
        )
        created.append(client)
        return client

    yield make
    for client in created:
        client.stop()


def collect(client: ChatClient, kind: str | type[Event]) -> tuple[list[Any], threading.Event]:
    """Register a callback that stores each ``kind`` event and sets the returned flag."""
    events: list[Any] = []
    arrived = threading.Event()

    def store(event: Any) -> None:
        events.append(event)
        arrived.set()

    client.callback(kind, store)
    return events, arrived


def wait_for(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll ``predicate()`` every 10 ms and return whether it became true within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def new_threads(before: set[threading.Thread]) -> list[str]:
    """Name the live threads not in ``before``, other than trio's idle worker threads.

    Trio keeps worker threads (the relay hashes passwords in them) alive for a
    while after use, so they are not a leak.
    """
    return sorted(
        thread.name
        for thread in set(threading.enumerate()) - before
        if not thread.name.startswith("Trio thread")
    )


def test_invite_then_message(make_client: Callable[..., ChatClient]) -> None:
    alice = make_client("alice")
    bob = make_client("bob")
    messages, got_message = collect(bob, "message")
    invites, got_invite = collect(bob, "invite")

    alice.run()
    bob.run()
    assert wait_for(lambda: alice.roster.get("bob") is True)
    alice.handshake("bob", "team")
    assert got_invite.wait(WAIT)
    msg_id = alice.send("team", "hi")
    assert got_message.wait(WAIT)

    assert isinstance(msg_id, bytes)
    assert messages[0].text == "hi"
    assert messages[0].sender == "alice"
    assert messages[0].group == "team"
    assert messages[0].msg_id == msg_id
    assert invites[0] == InviteReceived("team", "alice", True)
    assert alice.groups == ["team"]
    assert bob.groups == ["team"]
    assert bob.roster == {"alice": True, "bob": True}


def test_callback_registered_after_run(make_client: Callable[..., ChatClient]) -> None:
    alice = make_client("alice")
    bob = make_client("bob")
    alice.run()
    bob.run()
    messages, got_message = collect(bob, MessageReceived)
    rosters, got_roster = collect(bob, "roster")

    alice.handshake("bob", "team")
    alice.send("team", "late")
    assert got_message.wait(WAIT)

    assert messages[0].text == "late"
    alice.stop()
    assert got_roster.wait(WAIT)
    assert wait_for(lambda: bob.roster.get("alice") is False)
    assert all(isinstance(event, RosterChanged) for event in rosters)


def test_attribute_configuration(relay: RunningRelay) -> None:
    client = ChatClient()
    client.id = "alice"
    client.pwd = "pw-alice"
    client.server_url = relay.url
    client.ca_file = relay.ca_file
    client.state_dir = relay.data_dir / "client-alice"
    try:
        client.run()
        assert client.roster == {"alice": True}
        assert client.groups == []
    finally:
        client.stop()


def test_context_manager_runs_and_stops(relay: RunningRelay) -> None:
    before = set(threading.enumerate())
    settings: dict[str, Any] = {"server_url": relay.url, "ca_file": relay.ca_file, **FAST}
    with ChatClient(id="alice", pwd="pw-alice", state_dir=relay.data_dir / "a", **settings) as c:
        assert c.roster == {"alice": True}

    assert new_threads(before) == []
    with pytest.raises(RuntimeError, match="call run"):
        c.send("team", "after stop")


@pytest.mark.parametrize("missing", ["id", "pwd", "server_url", "ca_file"])
def test_missing_setting_named(relay: RunningRelay, missing: str) -> None:
    settings: dict[str, Any] = {
        "id": "alice",
        "pwd": "pw-alice",
        "server_url": relay.url,
        "ca_file": relay.ca_file,
    }
    del settings[missing]
    client = ChatClient(**settings)

    with pytest.raises(ValueError, match=f"ChatClient.{missing} is not set"):
        client.run()


def test_unknown_option_rejected() -> None:
    with pytest.raises(TypeError, match="colour"):
        ChatClient(id="alice", colour="blue")


def test_wrong_password_raises_conflict(make_client: Callable[..., ChatClient]) -> None:
    make_client("alice").run()  # registers alice with pw-alice
    before = set(threading.enumerate())
    intruder = make_client("alice", pwd="wrong")

    with pytest.raises(ConflictError):
        intruder.run()

    assert new_threads(before) == []
    with pytest.raises(RuntimeError, match="call run"):
        intruder.send("team", "hi")


def test_stop_is_idempotent(make_client: Callable[..., ChatClient]) -> None:
    before = set(threading.enumerate())
    alice = make_client("alice")
    alice.stop()  # before run()
    alice.run()
    assert new_threads(before) == ["t2t-client-alice"]
    alice.stop()
    alice.stop()

    assert new_threads(before) == []


def test_run_again_after_stop(make_client: Callable[..., ChatClient]) -> None:
    alice = make_client("alice")
    alice.run()
    with pytest.raises(RuntimeError, match="already running"):
        alice.run()
    alice.stop()
    alice.run()

    assert alice.roster == {"alice": True}


def test_raising_callback_is_logged(
    make_client: Callable[..., ChatClient], caplog: pytest.LogCaptureFixture
) -> None:
    alice = make_client("alice")
    bob = make_client("bob")

    def fail(event: MessageReceived) -> None:
        raise RuntimeError(f"callback failed on {event.text}")

    bob.callback("message", fail)
    messages, got_message = collect(bob, "message")
    alice.run()
    bob.run()
    alice.handshake("bob", "team")

    with caplog.at_level(logging.ERROR, logger="t2t.client"):
        alice.send("team", "first")
        assert got_message.wait(WAIT)
        got_message.clear()
        alice.send("team", "second")
        assert got_message.wait(WAIT)

    assert [event.text for event in messages] == ["first", "second"]
    failures = [record for record in caplog.records if "callback" in record.getMessage()]
    assert len(failures) == 2
    assert failures[0].exc_info is not None
    assert "callback failed on first" in str(failures[0].exc_info[1])
    bob_id = bob.send("team", "still working")
    assert isinstance(bob_id, bytes)


def test_request_callback_declines_invite(make_client: Callable[..., ChatClient]) -> None:
    alice = make_client("alice")
    bob = make_client("bob")
    decision_requests: list[InviteReceived] = []

    def decline(invite: InviteReceived) -> bool:
        decision_requests.append(invite)
        return False

    bob.callback("request", decline)
    invites, got_invite = collect(bob, "invite")
    alice.run()
    bob.run()
    alice.handshake("bob", "team")
    assert got_invite.wait(WAIT)

    assert decision_requests == [InviteReceived("team", "alice", False)]
    assert invites == [InviteReceived("team", "alice", False)]
    assert bob.groups == []
    assert "team" not in load_group_keys(Path(str(bob.state_dir)) / GROUP_KEYS_FILE)


def test_request_callback_accepts_invite(make_client: Callable[..., ChatClient]) -> None:
    alice = make_client("alice")
    bob = make_client("bob")
    bob.callback("request", lambda invite: invite.inviter == "alice")
    invites, got_invite = collect(bob, "invite")
    alice.run()
    bob.run()
    alice.handshake("bob", "team")
    assert got_invite.wait(WAIT)

    assert invites == [InviteReceived("team", "alice", True)]
    assert bob.groups == ["team"]


def test_blocking_call_in_callback_raises(make_client: Callable[..., ChatClient]) -> None:
    alice = make_client("alice")
    bob = make_client("bob")
    errors: list[BaseException] = []
    rosters: list[dict[str, bool]] = []
    done = threading.Event()

    def reply(event: MessageReceived) -> None:
        rosters.append(bob.roster)
        try:
            bob.send(event.group, "echo")
        except RuntimeError as exc:
            errors.append(exc)
        done.set()

    bob.callback("message", reply)
    alice.run()
    bob.run()
    alice.handshake("bob", "team")
    alice.send("team", "ping")
    assert done.wait(WAIT)

    assert len(errors) == 1
    assert "from a callback" in str(errors[0])
    assert rosters == [{"alice": True, "bob": True}]


def test_unknown_callback_type_rejected() -> None:
    client = ChatClient()

    with pytest.raises(ValueError, match=r"'message'.*'request'"):
        client.callback("messages", print)
    with pytest.raises(TypeError, match=r"event name or a t2t\.events class"):
        client.callback(int, print)  # type: ignore[type-var]


def test_async_callback_rejected() -> None:
    async def on_message(event: MessageReceived) -> None:
        pass

    with pytest.raises(TypeError, match="coroutine function"):
        ChatClient().callback("message", on_message)


def test_replaced_session_reaches_callbacks(make_client: Callable[..., ChatClient]) -> None:
    first = make_client("alice")
    conflicts, got_conflict = collect(first, "conflict")
    closes, got_close = collect(first, "disconnected")
    first.run()
    second = make_client("alice")
    second.run()

    assert got_conflict.wait(WAIT)
    assert got_close.wait(WAIT)
    assert conflicts == [Conflict("replaced", "this session was replaced by a new login")]
    assert isinstance(closes[0], Disconnected)
    first.stop()  # the connection has already ended; stop() must not raise
    assert second.roster == {"alice": True}


def test_relay_shutdown_reaches_callbacks(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    with start_blocking_portal(backend="trio", name="test-relay") as portal:
        relay_context = portal.wrap_async_context_manager(running_relay(tmp_path))
        relay = relay_context.__enter__()
        settings: dict[str, Any] = {"server_url": relay.url, "ca_file": relay.ca_file, **FAST}
        alice = ChatClient(id="alice", pwd="pw-alice", state_dir=tmp_path / "a", **settings)
        bob = ChatClient(id="bob", pwd="pw-bob", state_dir=tmp_path / "b", **settings)
        closes, got_close = collect(alice, "disconnected")
        try:
            try:
                alice.run()
                bob.run()
                alice.handshake("bob", "team")
            finally:
                relay_context.__exit__(None, None, None)

            assert got_close.wait(WAIT)
            assert isinstance(closes[0], Disconnected)
            with pytest.raises(DisconnectedError):
                alice.send("team", "hi")
        finally:
            alice.stop()  # the connection has already ended; stop() must not raise
            bob.stop()

    assert new_threads(before) == []


def test_run_again_keeps_groups(make_client: Callable[..., ChatClient]) -> None:
    alice = make_client("alice")
    make_client("bob").run()
    alice.run()
    alice.handshake("bob", "team")
    alice.stop()
    alice.run()

    assert alice.groups == ["team"]
    assert isinstance(alice.send("team", "back again"), bytes)


@asynccontextmanager
async def silent_relay() -> AsyncIterator[int]:
    """Accept WebSocket connections on 127.0.0.1 but never send the relay's hello."""

    async def never_answer(request: WebSocketRequest) -> None:
        await request.accept()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, never_answer, "127.0.0.1", 0, None)
        yield server.port
        nursery.cancel_scope.cancel()


def test_silent_relay_times_out(relay: RunningRelay, tmp_path: Path) -> None:
    before = set(threading.enumerate())
    with (
        start_blocking_portal(backend="trio", name="test-silent") as portal,
        portal.wrap_async_context_manager(silent_relay()) as port,
    ):
        client = ChatClient(
            id="alice",
            pwd="pw-alice",
            server_url=f"ws://127.0.0.1:{port}",
            ca_file=relay.ca_file,
            state_dir=tmp_path / "client-alice",
            connect_timeout=1.0,
        )
        with pytest.raises(TimeoutError, match="did not finish within 1 s"):
            client.run()

    assert new_threads(before) == []


def test_unreachable_relay_raises(relay: RunningRelay, tmp_path: Path) -> None:
    # Bind and close a socket to get a local port that nothing listens on.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    before = set(threading.enumerate())
    client = ChatClient(
        id="alice",
        pwd="pw-alice",
        server_url=f"ws://127.0.0.1:{port}",
        ca_file=relay.ca_file,
        state_dir=tmp_path / "client-alice",
        **FAST,
    )

    with pytest.raises(DisconnectedError, match="cannot connect"):
        client.run()

    assert new_threads(before) == []
