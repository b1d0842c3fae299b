"""Idle: hold K logged-in connections that send only heartbeats for T seconds.

The relay runs with a cheap argon2id cost (``--hash-ops 1 --hash-memory
8``), so that thousands of logins take seconds and not minutes, and with
``--max-accounts`` set to K. Clients are raw-frame connections
(:mod:`bench.wire`) with a lighter login than :mod:`bench.raw`'s: the
identity key stays in memory, and a connection counts as logged in once the
relay's signed welcome verifies. From then on the relay treats it as an
online session, exactly as it treats the full client.

Rosters: every login makes the relay push the whole roster, about 80 bytes
per account, to every online session. One push to K sessions is then about
K * K * 80 bytes (8 GB at K = 10,000), and logins spread over a minute cause
many pushes: with 2,000 connections and the relay's default debounce, the
clients received 45.7 GB of rosters while logging in (``--connections 2000
--roster-debounce 0.05`` on a 2-core VM). That is a cost of logging in,
which the login scenario measures, and it would bury the idle figures. So
the relay gets this scenario's ``--roster-debounce`` (by default 3600 s,
longer than the run), and no roster is pushed. Pass ``--roster-debounce
0.05``, the relay's default, to include the pushes.

Heartbeats: each connection sends the heartbeat of the t2t client, a
WebSocket ping with a random 4-byte payload, every ``--heartbeat`` seconds
(by default the client's ``heartbeat_interval``), the K connections spread
evenly over that interval. ``--heartbeat-kind frame`` sends the Ping frame
of older clients instead, to which the relay still replies. The schedule
starts with the first login, so early connections stay inside the relay's
idle timeout while the rest log in.

File descriptors: each connection needs one in this process and one in the
relay. The soft RLIMIT_NOFILE is raised to the hard limit before the relay
starts, and the relay process inherits it. If the hard limit is too low for
K, K is reduced and the result notes it.
"""

from __future__ import annotations

import math
import random
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from bench.common import Progress, RelayProcess, Result, run_relay
from bench.wire import WireClosed, WireSocket, open_wire
from t2t.client.connection import DEFAULT_HEARTBEAT_INTERVAL
from t2t.crypto.keys import KeyPair, load_public_identity
from t2t.errors import T2TError
from t2t.frames import Ping, Pong, Roster, decode_frame, encode
from t2t.protocol.client import ClientProtocol, ClientState, Outgoing
from t2t.server.config import RelayConfig

RELAY_IDLE_TIMEOUT: Final = RelayConfig().idle_timeout  # seconds, the relay's default
HEARTBEAT_KINDS: Final = ("websocket", "frame")  # WebSocket ping, or the Ping frame
RESERVED_FDS: Final = 64  # descriptors kept free for files, pipes and the listening socket
LOGIN_TIMEOUT: Final = 60.0  # seconds for one connection's login
SETUP_TIMEOUT: Final = 900.0  # seconds for all K connections to log in
PONG_GRACE: Final = 2.0  # seconds to wait for outstanding pongs after the hold
RSS_SAMPLES: Final = 20  # relay RSS readings taken while the connections log in


@dataclass
class IdleParams:
    connections: int = 10_000
    seconds: float = 30.0  # length of the hold
    heartbeat: float = DEFAULT_HEARTBEAT_INTERVAL  # seconds between one connection's pings
    heartbeat_kind: str = "websocket"  # one of HEARTBEAT_KINDS
    login_concurrency: int = 32  # logins in flight; keep below the relay's 64 pending logins
    roster_debounce: float = 3600.0  # passed to the relay; see the module docstring

    def __post_init__(self) -> None:
        if self.connections < 1:
            raise ValueError(f"--connections must be at least 1, got {self.connections}")
        if not (math.isfinite(self.seconds) and self.seconds > 0):
            raise ValueError(f"--seconds must be a positive number, got {self.seconds}")
        if not 0 < self.heartbeat < RELAY_IDLE_TIMEOUT:
            raise ValueError(
                f"--heartbeat must be between 0 and the relay's idle timeout of "
                f"{RELAY_IDLE_TIMEOUT:g} s, got {self.heartbeat}"
            )
        if self.heartbeat_kind not in HEARTBEAT_KINDS:
            raise ValueError(
                f"--heartbeat-kind must be one of {', '.join(HEARTBEAT_KINDS)}, "
                f"got {self.heartbeat_kind!r}"
            )
        if self.login_concurrency < 1:
            raise ValueError(
                f"--login-concurrency must be at least 1, got {self.login_concurrency}"
            )
        if not (math.isfinite(self.roster_debounce) and self.roster_debounce >= 0):
            raise ValueError(f"--roster-debounce must not be negative, got {self.roster_debounce}")


def raise_open_file_limit() -> tuple[int, int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (old soft, new soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit still cannot be set as the soft limit, so keep the soft one.
    target = soft if hard == resource.RLIM_INFINITY else hard
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return soft, max(soft, target), hard


@dataclass
class _Tally:
    connections: int
    logged_in: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    closed: int = 0  # connections the relay closed
    pings: int = 0
    pong_frames: int = 0  # Pong frames; WebSocket pongs are counted per connection
    roster_bytes: int = 0
    rss_curve: list[tuple[int, int]] = field(default_factory=list)  # (logged in, relay RSS)
    setup_done: trio.Event = field(default_factory=trio.Event)

    def finish_one(self) -> None:
        if self.logged_in + self.failed == self.connections:
            self.setup_done.set()


class _Connection:
    __slots__ = ("closed", "ws")

    def __init__(self, ws: WireSocket) -> None:
        self.ws = ws
        self.closed = False

    async def read(self, tally: _Tally) -> None:
        try:
            while True:
                for data in await self.ws.get_messages():
                    frame = decode_frame(data)
                    if isinstance(frame, Pong):
                        tally.pong_frames += 1
                    elif isinstance(frame, Roster):
                        tally.roster_bytes += len(data)
        except WireClosed:
            self.closed = True
            tally.closed += 1


async def _log_in(ws: WireSocket, user: str, ca_key: bytes) -> None:
    """Log in with a fresh in-memory identity; return once the welcome verifies."""
    protocol = ClientProtocol(
        user=user,
        password=f"bench-{user}",
        identity=KeyPair.generate(),
        ca_key=ca_key,
        relay_name="127.0.0.1",
        group_keys={},
    )
    with trio.fail_after(LOGIN_TIMEOUT):
        while protocol.state in (ClientState.AWAITING_HELLO, ClientState.AWAITING_WELCOME):
            for output in protocol.receive(await ws.get_message()):
                if isinstance(output, Outgoing):
                    await ws.send_message(output.data)


async def _hold_one(
    index: int,
    relay: RelayProcess,
    ca_key: bytes,
    limiter: trio.CapacityLimiter,
    connections: list[_Connection | None],
    tally: _Tally,
    advance: Any,
) -> None:
    """Open and log in connection ``index``, then read from it until cancelled."""
    try:
        async with limiter:
            ws = await open_wire(relay.url)
            try:
                await _log_in(ws, f"idle{index}", ca_key)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await ws.aclose()
                raise
    except (OSError, WireClosed, T2TError, trio.TooSlowError) as exc:
        tally.failed += 1
        if len(tally.failures) < 5:
            tally.failures.append(repr(exc))
        tally.finish_one()
        return

    connection = connections[index] = _Connection(ws)
    tally.logged_in += 1
    step = max(1, tally.connections // RSS_SAMPLES)
    if tally.logged_in % step == 0 or tally.logged_in == tally.connections:
        tally.rss_curve.append((tally.logged_in, relay.rss_bytes()))
    advance()
    tally.finish_one()
    try:
        await connection.read(tally)
    finally:
        with trio.CancelScope(shield=True):
            await ws.aclose()


async def _heartbeats(
    connections: list[_Connection | None], params: IdleParams, start: float, tally: _Tally
) -> None:
    """Send each logged-in connection a ping every ``heartbeat`` s, spread evenly."""
    count = len(connections)
    rounds = int((SETUP_TIMEOUT + params.seconds) / params.heartbeat) + 2
    websocket = params.heartbeat_kind == "websocket"
    for round_number in range(rounds):
        for index, connection in enumerate(connections):
            await trio.sleep_until(start + (round_number + index / count) * params.heartbeat)
            if connection is None or connection.closed:
                continue
            try:
                if websocket:
                    await connection.ws.ping(random.randbytes(4))
                else:
                    await connection.ws.send_message(encode(Ping(round_number * count + index)))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                continue
            tally.pings += 1


def _pongs(connections: list[_Connection | None], tally: _Tally) -> int:
    """Return the pongs received so far, WebSocket pongs and Pong frames."""
    websocket_pongs = sum(c.ws.pongs_received for c in connections if c is not None)
    return websocket_pongs + tally.pong_frames


def _slope(points: list[tuple[int, int]]) -> float | None:
    """Return the least-squares slope of relay RSS over connections, in bytes."""
    if len({x for x, _ in points}) < 2:
        return None
    xs, ys = zip(*points, strict=True)
    return statistics.linear_regression(xs, ys).slope


async def run(params: IdleParams, progress: Progress) -> Result:
    """Run the idle scenario; the relay inherits the raised RLIMIT_NOFILE."""
    notes: list[str] = []
    old_soft, soft, hard = raise_open_file_limit()
    message = (
        f"RLIMIT_NOFILE: soft limit {old_soft} -> {soft} (hard limit {hard}); "
        "the relay process inherits it"
    )
    print(message, file=sys.stderr)
    notes.append(message)
    count = params.connections
    if count + RESERVED_FDS > soft:
        count = max(1, soft - RESERVED_FDS)
        message = (
            f"--connections reduced from {params.connections} to {count}: the open file limit "
            f"is {soft} and {RESERVED_FDS} descriptors stay reserved"
        )
        print(message, file=sys.stderr)
        notes.append(message)

    relay_args = ["--hash-ops", "1", "--hash-memory", "8", "--max-accounts", str(count)]
    relay_args += ["--roster-debounce", str(params.roster_debounce)]
    tally = _Tally(count)
    connections: list[_Connection | None] = [None] * count
    advance = progress.task(f"idle, log in {count:,} connections", count)
    async with run_relay("t2t", extra_args=relay_args) as relay, trio.open_nursery() as nursery:
        assert relay.ca_file is not None
        ca_key = load_public_identity(relay.ca_file).sign_key
        limiter = trio.CapacityLimiter(params.login_concurrency)
        rss_before = relay.rss_bytes()
        start = trio.current_time()
        generator_cpu_before = time.process_time()
        nursery.start_soon(_heartbeats, connections, params, start, tally)
        for index in range(count):
            nursery.start_soon(
                _hold_one, index, relay, ca_key, limiter, connections, tally, advance
            )
        with trio.move_on_after(SETUP_TIMEOUT):
            await tally.setup_done.wait()
        setup_seconds = trio.current_time() - start
        generator_cpu = time.process_time() - generator_cpu_before

        rss_after = relay.rss_bytes()
        cpu_before = relay.cpu_seconds()
        pings_before, closed_before = tally.pings, tally.closed
        hold = f"  idle, hold {tally.logged_in:,} connections for {params.seconds:g} s"
        print(hold, file=sys.stderr)
        await trio.sleep(params.seconds)
        relay_cpu = relay.cpu_seconds() - cpu_before
        rss_end = relay.rss_bytes()
        pings_in_hold = tally.pings - pings_before
        closed_in_hold = tally.closed - closed_before
        with trio.move_on_after(PONG_GRACE):
            while _pongs(connections, tally) < tally.pings:  # noqa: ASYNC110 - 1,000s of readers
                await trio.sleep(0.05)
        pongs = _pongs(connections, tally)
        nursery.cancel_scope.cancel()

    if tally.failed:
        notes.append(f"{tally.failed} logins failed, for example: {tally.failures}")
    if tally.logged_in + tally.failed < count:
        notes.append(
            f"only {tally.logged_in} of {count} connections logged in within "
            f"{SETUP_TIMEOUT:g} s; the hold ran with those"
        )
    slope = _slope(tally.rss_curve)
    metrics: dict[str, Any] = {
        "connections": tally.logged_in,
        "failed_logins": tally.failed,
        "setup_s": setup_seconds,
        "logins_per_s": tally.logged_in / setup_seconds if setup_seconds > 0 else 0.0,
        "generator_cpu_setup_s": generator_cpu,
        "hold_s": params.seconds,
        "relay_rss_before_mib": rss_before / 2**20,
        "relay_rss_after_mib": rss_after / 2**20,
        "relay_rss_end_mib": rss_end / 2**20,
        "rss_per_connection_kib": (rss_after - rss_before) / max(tally.logged_in, 1) / 1024,
        "rss_per_connection_marginal_kib": None if slope is None else slope / 1024,
        "relay_cpu_s": relay_cpu,
        "relay_cpu_percent": relay_cpu / params.seconds * 100,
        "relay_cpu_ms_per_ping": relay_cpu / max(pings_in_hold, 1) * 1000,
        "heartbeat_kind": params.heartbeat_kind,
        "heartbeat_s": params.heartbeat,
        "pings_in_hold": pings_in_hold,
        "pings_per_s": pings_in_hold / params.seconds,
        "pings_sent": tally.pings,
        "pongs_received": pongs,
        "closed_by_relay": tally.closed,
        "closed_in_hold": closed_in_hold,
        "roster_bytes_received": tally.roster_bytes,
        "open_file_limit": {"old_soft": old_soft, "soft": soft, "hard": hard},
        "rss_curve": [[n, rss / 2**20] for n, rss in tally.rss_curve],
    }
    row = {
        "connections": tally.logged_in,
        "setup_s": setup_seconds,
        "logins_per_s": metrics["logins_per_s"],
        "rss_before_mib": metrics["relay_rss_before_mib"],
        "rss_after_mib": metrics["relay_rss_after_mib"],
        "kib_per_connection": metrics["rss_per_connection_kib"],
        "marginal_kib_per_connection": metrics["rss_per_connection_marginal_kib"] or 0.0,
        "idle_cpu_percent": metrics["relay_cpu_percent"],
        "heartbeat": f"{params.heartbeat_kind} every {params.heartbeat:g} s",
        "pings_per_s": metrics["pings_per_s"],
        "ms_per_ping": metrics["relay_cpu_ms_per_ping"],
        "closed": tally.closed,
    }
    return Result("idle", vars(params), metrics, [row], notes)
