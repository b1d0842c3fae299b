"""Login: C clients connect and log in at once with the public client.

Each client runs :func:`t2t.connect` with its own state folder, and stays
connected until every client is online, so the relay carries all C sessions
at the end. ``--kind new`` registers C new accounts. ``--kind returning``
logs the same users in again, with the same state folders and passwords,
against the same relay process. ``both`` runs the two phases in that order.
A returning client presents the resume token from its last welcome, which
the client library saves in its state folder, and the relay then skips the
password hash; ``--resume-ttl 0`` turns tokens off on the relay, so that
returning users cost a hash as well.

The relay rejects a login with close code 1013 (try again later) while too
many password checks are queued (its ``--max-pending-logins``). A rejected
client retries after an exponential backoff with full jitter, up to
MAX_ATTEMPTS times, and the report counts the rejections.

Identity keys are created before the clock starts, as an installed client
would already have one, so the timings cover the network login only. The
relay keeps its default argon2id cost (t=2, m=19 MiB) unless ``--hash-ops``
or ``--hash-memory`` is given. Its ``--login-timeout`` is raised to
LOGIN_TIMEOUT seconds, because this scenario measures how fast a burst of
logins is served, not which of them the default 10 s timeout would reject.
Its ``--max-accounts`` is set to fit the clients, for the same reason.

Roster bytes: every login makes the relay push a new signed roster, which
lists every account, to every online client (several logins within the
relay's ``--roster-debounce`` share one push). A raw-frame observer
connection logs in first and records the size of every roster version the
relay publishes, WebSocket header included. Each client records the version
of every roster it receives (its RosterChanged events), and the scenario
adds up the observer's size of each received version. The total is the
roster bytes the relay sent to the C clients during the phase. The observer
is one more account, so rosters list C + 1 users, and its own copies are not
counted. Rosters pushed after the phase settles (for example when clients
disconnect) are not counted either.
"""

from __future__ import annotations

import math
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec
import trio

import t2t
from bench.common import Progress, RelayProcess, Result, run_relay
from bench.raw import raw_session
from bench.wire import WireClosed, WireSocket
from t2t.client.state import IDENTITY_FILE, load_or_create_identity
from t2t.errors import T2TError
from t2t.frames import Ping, Roster, RosterBody, decode_frame, encode

KINDS: Final = ("new", "returning", "both")
LOGIN_TIMEOUT: Final = 120.0  # seconds for one client's login, on both sides
SETTLE_QUIET: Final = 1.0  # seconds without a new roster before a phase counts as settled
SETTLE_TIMEOUT: Final = 60.0  # seconds to wait for the rosters to settle
OBSERVER: Final = "roster-observer"
OBSERVER_HEARTBEAT: Final = 20.0  # seconds between the observer's pings
CLOSE_TRY_AGAIN_LATER: Final = 1013  # WebSocket close code of a relay too busy to log us in
MAX_ATTEMPTS: Final = 100  # logins tried per client before it counts as failed
RETRY_BASE_DELAY: Final = 0.1  # seconds; the backoff limit doubles from here per rejection
RETRY_MAX_DELAY: Final = 2.0  # seconds; the highest backoff limit
RELAY_EXIT_WAIT: Final = 5.0  # seconds to wait for a relay that closed the observer to exit

_roster_decoder: Final = msgspec.msgpack.Decoder(RosterBody)


@dataclass
class LoginParams:
    clients: int = 200
    kind: str = "both"
    hash_ops: int | None = None  # argon2id passes; None keeps the relay default
    hash_memory: int | None = None  # argon2id memory in MiB; None keeps the relay default
    hash_threads: int | None = None  # None keeps the relay default
    resume_ttl: float | None = None  # seconds; 0 disables resume tokens; None keeps the default
    max_pending_logins: int | None = None  # None keeps the relay default

    def __post_init__(self) -> None:
        if self.clients < 1:
            raise ValueError(f"--clients must be at least 1, got {self.clients}")
        if self.kind not in KINDS:
            raise ValueError(f"--kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("hash_ops", "hash_memory", "hash_threads", "max_pending_logins"):
            value = getattr(self, name)
            if value is not None and value < 1:
                option = "--" + name.replace("_", "-")
                raise ValueError(f"{option} must be at least 1, got {value}")
        if self.resume_ttl is not None and not (
            math.isfinite(self.resume_ttl) and self.resume_ttl >= 0
        ):
            raise ValueError(f"--resume-ttl must not be negative, got {self.resume_ttl}")

    def relay_args(self) -> list[str]:
        # The observer is one more account than the clients.
        args = ["--login-timeout", str(LOGIN_TIMEOUT), "--max-accounts", str(self.clients + 1)]
        for name in (
            "hash_ops",
            "hash_memory",
            "hash_threads",
            "resume_ttl",
            "max_pending_logins",
        ):
            value = getattr(self, name)
            if value is not None:
                args += ["--" + name.replace("_", "-"), str(value)]
        return args


def websocket_frame_size(payload: int) -> int:
    """Return the bytes of an unmasked WebSocket frame with ``payload`` bytes (RFC 6455)."""
    if payload < 126:
        return 2 + payload
    if payload < 65536:
        return 4 + payload
    return 10 + payload


class RosterObserver:
    """A logged-in raw connection that records every roster the relay publishes."""

    def __init__(self, ws: WireSocket, relay: RelayProcess) -> None:
        self._ws = ws
        self._relay = relay
        self.sizes: dict[int, int] = {}  # roster version -> WebSocket frame bytes
        self.online: frozenset[str] = frozenset()  # online users in the newest roster
        self.last_roster_at = trio.current_time()

    async def run(self) -> None:
        """Read rosters and send a ping every OBSERVER_HEARTBEAT seconds, until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._heartbeat)
            while True:
                try:
                    batch = await self._ws.get_messages()
                except WireClosed as exc:
                    raise RuntimeError(await self._closed_message(exc)) from None
                for data in batch:
                    frame = decode_frame(data)
                    if isinstance(frame, Roster):
                        body = _roster_decoder.decode(frame.body)
                        self.sizes[body.version] = websocket_frame_size(len(data))
                        self.online = frozenset(e.user for e in body.entries if e.online)
                        self.last_roster_at = trio.current_time()

    async def _closed_message(self, exc: WireClosed) -> str:
        # A relay that crashed writes its traceback as it exits, so wait for
        # the exit before run_relay prints the end of the relay's log.
        process = self._relay.process
        with trio.move_on_after(RELAY_EXIT_WAIT):
            await process.wait()
        status = (
            "is still running"
            if process.returncode is None
            else (f"exited with status {process.returncode}")
        )
        return (
            f"the relay closed the roster observer's connection ({exc}) and {status}; "
            "the end of the relay log, printed before this traceback, may say why"
        )

    async def _heartbeat(self) -> None:
        # The relay closes connections that send nothing for its idle timeout.
        nonce = 0
        while True:
            await trio.sleep(OBSERVER_HEARTBEAT)
            nonce += 1
            await self._ws.send_message(encode(Ping(nonce)))

    def _settled(self, condition: Callable[[frozenset[str]], bool]) -> bool:
        quiet = trio.current_time() - self.last_roster_at >= SETTLE_QUIET
        return quiet and condition(self.online)

    async def wait_settled(self, condition: Callable[[frozenset[str]], bool]) -> bool:
        """Wait until the newest roster meets ``condition`` and none came for SETTLE_QUIET s.

        Returns False if that did not happen within SETTLE_TIMEOUT seconds.
        """
        with trio.move_on_after(SETTLE_TIMEOUT):
            # Polled, because the condition includes the time since the last roster.
            while not self._settled(condition):  # noqa: ASYNC110
                await trio.sleep(0.05)
            return True
        return False


@dataclass
class _Phase:
    """Per-client records of one phase, indexed by client number."""

    clients: int
    start: float = field(default_factory=trio.current_time)
    online_at: dict[int, float] = field(default_factory=dict)  # seconds after start
    failures: dict[int, str] = field(default_factory=dict)
    roster_versions: list[list[int]] = field(default_factory=list)
    rejected_events: int = 0
    busy_rejections: int = 0  # logins the relay rejected with close code 1013, then retried
    finished: trio.Event = field(default_factory=trio.Event)  # every client online or failed
    release: trio.Event = field(default_factory=trio.Event)  # clients may disconnect

    def __post_init__(self) -> None:
        self.roster_versions = [[] for _ in range(self.clients)]

    def check_finished(self) -> None:
        if len(self.online_at) + len(self.failures) == self.clients:
            self.finished.set()


def _user(index: int) -> str:
    return f"user{index}"


async def _client(
    index: int, relay: RelayProcess, folder: Path, phase: _Phase, advance: Any
) -> None:
    """Log one client in, retrying while the relay is busy; stay online until released."""
    assert relay.ca_file is not None
    deadline = trio.current_time() + LOGIN_TIMEOUT
    failure: Exception | None = None
    for attempt in range(MAX_ATTEMPTS):
        try:
            async with t2t.connect(
                relay.url,
                user=_user(index),
                password=f"bench-password-{index}",
                ca=relay.ca_file,
                state_dir=folder / _user(index),
                connect_timeout=max(deadline - trio.current_time(), 1.0),
            ) as client:
                phase.online_at[index] = trio.current_time() - phase.start
                advance()
                phase.check_finished()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_record_rosters, client, phase, phase.roster_versions[index])
                    await phase.release.wait()
                    nursery.cancel_scope.cancel()
            return
        except t2t.DisconnectedError as exc:
            if index in phase.online_at:
                return  # the connection closed after the login, which this phase ignores
            failure = exc
            if exc.code != CLOSE_TRY_AGAIN_LATER or trio.current_time() >= deadline:
                break
            # Exponential backoff with full jitter, as a well-behaved client retries.
            phase.busy_rejections += 1
            limit = min(RETRY_MAX_DELAY, RETRY_BASE_DELAY * 2**attempt)
            await trio.sleep(random.uniform(0, limit))
        except (T2TError, TimeoutError) as exc:
            if index in phase.online_at:
                return
            failure = exc
            break
    phase.failures[index] = repr(failure)
    phase.check_finished()


async def _record_rosters(client: t2t.Client, phase: _Phase, versions: list[int]) -> None:
    # events() replays what arrived since the login, so the first roster counts too.
    async for event in client.events():
        if isinstance(event, t2t.RosterChanged):
            versions.append(event.version)
        elif isinstance(event, t2t.MessageRejected):
            phase.rejected_events += 1


async def _run_phase(
    name: str,
    params: LoginParams,
    relay: RelayProcess,
    observer: RosterObserver,
    folder: Path,
    progress: Progress,
) -> dict[str, Any]:
    """Log every client in at once, wait for the rosters to settle, then disconnect all."""
    users = frozenset(_user(i) for i in range(params.clients))
    advance = progress.task(f"login, {name} accounts", params.clients)
    versions_before = set(observer.sizes)
    cpu_before = relay.cpu_seconds()
    generator_cpu_before = time.process_time()
    phase = _Phase(params.clients)
    async with trio.open_nursery() as nursery:
        for index in range(params.clients):
            nursery.start_soon(_client, index, relay, folder, phase, advance)
        with trio.move_on_after(LOGIN_TIMEOUT + 10):
            await phase.finished.wait()
        online = frozenset(_user(i) for i in phase.online_at)
        settled = await observer.wait_settled(lambda seen: online <= seen)
        relay_cpu = relay.cpu_seconds() - cpu_before
        generator_cpu = time.process_time() - generator_cpu_before
        received = [list(versions) for versions in phase.roster_versions]
        # Rosters published from here on come from the disconnects, not the logins.
        published = {v: size for v, size in observer.sizes.items() if v not in versions_before}
        phase.release.set()
    offline = await observer.wait_settled(lambda seen: not (seen & users))
    if not offline:
        raise RuntimeError(f"clients of the {name} phase still online after {SETTLE_TIMEOUT} s")
    metrics = _phase_metrics(params, phase, published, received, relay_cpu, settled)
    metrics["generator_cpu_s"] = generator_cpu
    return metrics


def _phase_metrics(
    params: LoginParams,
    phase: _Phase,
    published: dict[int, int],
    received: list[list[int]],
    relay_cpu: float,
    settled: bool,
) -> dict[str, Any]:
    logins = len(phase.online_at)
    times = sorted(phase.online_at.values())
    seconds = times[-1] if times else 0.0
    sized = [published[v] for versions in received for v in versions if v in published]
    pushes = sum(len(versions) for versions in received)
    roster_bytes = sum(sized)
    return {
        "clients": params.clients,
        "failed_logins": len(phase.failures),
        "busy_rejections": phase.busy_rejections,
        "seconds_to_all_online": seconds,
        "logins_per_s": logins / seconds if seconds > 0 else 0.0,
        "median_login_s": statistics.median(times) if times else 0.0,
        "roster_versions_published": len(published),
        "roster_pushes_per_client": pushes / max(logins, 1),
        "roster_bytes": roster_bytes,
        "roster_bytes_per_login": roster_bytes / max(logins, 1),
        "last_roster_bytes": published[max(published)] if published else 0,
        "unsized_roster_pushes": pushes - len(sized),
        "rejected_events": phase.rejected_events,
        "relay_cpu_s": relay_cpu,
        "relay_cpu_ms_per_login": relay_cpu / max(logins, 1) * 1000,
        "settled": settled,
        "failures": sorted(set(phase.failures.values()))[:5],
        "online_times_s": times,
    }


def _row(name: str, metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "accounts": name,
        "clients": metrics["clients"],
        "rejected_1013": metrics["busy_rejections"],
        "failed": metrics["failed_logins"],
        "s_to_all_online": metrics["seconds_to_all_online"],
        "logins_per_s": metrics["logins_per_s"],
        "roster_pushes_per_client": metrics["roster_pushes_per_client"],
        "roster_kib_per_login": metrics["roster_bytes_per_login"] / 1024,
        "roster_mib_total": metrics["roster_bytes"] / 2**20,
        "last_roster_kib": metrics["last_roster_bytes"] / 1024,
        "relay_cpu_s": metrics["relay_cpu_s"],
        "generator_cpu_s": metrics["generator_cpu_s"],
    }


async def run(params: LoginParams, progress: Progress) -> Result:
    """Run the login scenario against one t2t relay process."""
    phases = ["new", "returning"] if params.kind == "both" else [params.kind]
    metrics: dict[str, Any] = {}
    notes: list[str] = []
    async with run_relay("t2t", extra_args=params.relay_args()) as relay:
        with tempfile.TemporaryDirectory(prefix="t2t-bench-login-") as tmp:
            folder = Path(tmp)
            for index in range(params.clients):
                load_or_create_identity(folder / _user(index) / IDENTITY_FILE)
            async with (
                raw_session(
                    relay.url, OBSERVER, ca_file=relay.ca_file, state_dir=folder, window=None
                ) as raw,
                trio.open_nursery() as nursery,
            ):
                observer = RosterObserver(raw.ws, relay)
                nursery.start_soon(observer.run)
                if phases == ["returning"]:
                    # Register the accounts first; this phase is not reported.
                    await _run_phase("new", params, relay, observer, folder, progress)
                for name in phases:
                    metrics[name] = await _run_phase(
                        name, params, relay, observer, folder, progress
                    )
                nursery.cancel_scope.cancel()
    for name, phase in metrics.items():
        if phase["failed_logins"]:
            notes.append(f"{name}: {phase['failed_logins']} logins failed: {phase['failures']}")
        if not phase["settled"]:
            notes.append(f"{name}: rosters did not settle within {SETTLE_TIMEOUT:g} s")
    rows = [_row(name, phase) for name, phase in metrics.items()]
    return Result("login", vars(params), metrics, rows, notes)
