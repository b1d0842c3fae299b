"""Fanout: N members in one group, S of them sending M messages each.

Modes:

- ``raw``: raw-frame clients (see :mod:`bench.raw`) with no per-message
  crypto, against both the t2t relay and the bare reference relay, so the
  report can give t2t's throughput as a ratio of the ceiling.
- ``client``: the public :func:`t2t.connect` client, so latency runs from
  the sender calling ``send`` to the receiver's callback holding verified
  plaintext. Only the t2t relay speaks this protocol.

Pacing: ``blast`` sends as fast as the relay accepts; ``--rate R`` spreads R
messages per second evenly over the senders. Against the t2t relay, a sender
has at most ``--window`` unacknowledged messages (the client's default
window); the reference relay sends no acknowledgements, so there the sender
is paced by TCP alone.
"""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

import t2t
from bench.common import Progress, RelayProcess, latency_summary, percentile, run_relay
from bench.raw import RawClient, message_id, raw_session
from t2t.client.connection import DEFAULT_WINDOW

GROUP = "bench"
MAX_BODY_SIZE = 60_000  # bytes; the encrypted frame must stay under the relay's 64 KiB limit
SETTLE_SECONDS = 3.0  # wait this long without a new delivery before counting the rest as lost


@dataclass
class FanoutParams:
    members: int = 50
    senders: int = 5
    messages: int = 500  # per sender
    body_size: int = 64  # bytes of text per message
    rate: float | None = None  # total messages per second; None for blast
    window: int = DEFAULT_WINDOW  # unacknowledged messages per sender (t2t relay only)
    full_receivers: int | None = None  # client mode: receivers that run the full client

    def __post_init__(self) -> None:
        if self.members < 2:
            raise ValueError(f"--members must be at least 2, got {self.members}")
        if not 1 <= self.senders <= self.members:
            raise ValueError(f"--senders must be between 1 and --members, got {self.senders}")
        if self.messages < 1:
            raise ValueError(f"--messages must be at least 1, got {self.messages}")
        if self.body_size < 16:
            raise ValueError(f"--body-size must be at least 16 bytes, got {self.body_size}")
        if self.full_receivers is not None and not (
            1 <= self.full_receivers <= self.members - self.senders
        ):
            raise ValueError(
                "--full-receivers must be between 1 and members - senders, "
                f"got {self.full_receivers}"
            )
        if self.window < 1:
            raise ValueError(f"--window must be at least 1, got {self.window}")
        if self.body_size > MAX_BODY_SIZE:
            raise ValueError(
                f"--body-size must be at most {MAX_BODY_SIZE} bytes to fit the relay's "
                f"64 KiB message limit, got {self.body_size}"
            )
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"--rate must be positive, got {self.rate}")

    @property
    def expected(self) -> int:
        return self.senders * self.messages * (self.members - 1)


@dataclass
class _Tally:
    """Send times by (sender, sequence); receipts by (sender, sequence, receiver)."""

    expected: int
    sent: dict[tuple[int, int], float] = field(default_factory=dict)
    received: Counter[tuple[int, int, int]] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)  # paced runs: how late each send started
    deliveries: int = 0
    first_send: float = 0.0
    last_send: float = 0.0
    last_receive: float = 0.0
    advance: Any = lambda n=1: None

    def record(self, sender: int, sequence: int, receiver: int, at: float) -> None:
        self.received[(sender, sequence, receiver)] += 1
        self.deliveries += 1
        sent = self.sent.get((sender, sequence))
        if sent is not None:
            self.latencies.append(at - sent)
        self.last_receive = at
        self.advance()


async def _pace(
    params: FanoutParams, sender: int, send_one: Any, tally: _Tally, *, pipelined: bool
) -> None:
    """Send one sender's messages, blast or paced, and record each send time.

    With ``pipelined``, each send runs in its own task, because the t2t
    client's ``send`` returns only when the relay acknowledges; the client's
    window then bounds how many are in flight, as it does for applications.
    The send time is taken in that task, right before ``send`` is called, so
    the scheduler turn that starts the task is not counted as latency.

    Paced runs also record how late each send started against its schedule
    (``tally.lags``). Latency excludes that lag, so a load process that
    falls behind shows up there and in the achieved send rate.
    """
    interval = None if params.rate is None else params.senders / params.rate
    start = trio.current_time()
    # Pipelined sends take a window slot before their time is recorded, so a
    # blast measures the system, not the sender's own backlog of unstarted
    # sends: like the client's send(), the sender waits while the window is full.
    slots = trio.Semaphore(params.window)

    async def send_in_slot(sequence: int) -> None:
        try:
            tally.sent[(sender, sequence)] = trio.current_time()
            await send_one(sequence)
        finally:
            slots.release()

    async with trio.open_nursery() as nursery:
        for sequence in range(params.messages):
            if interval is not None:
                due = start + sequence * interval
                await trio.sleep_until(due)
                tally.lags.append(trio.current_time() - due)
            if pipelined:
                await slots.acquire()
                nursery.start_soon(send_in_slot, sequence)
            else:
                tally.sent[(sender, sequence)] = trio.current_time()
                await send_one(sequence)
    tally.last_send = max(tally.last_send, trio.current_time())


async def _await_deliveries(tally: _Tally) -> None:
    """Wait for every delivery, or until none arrives for SETTLE_SECONDS."""
    last_count, last_change = -1, trio.current_time()
    while tally.deliveries < tally.expected:
        await trio.sleep(0.05)
        if tally.deliveries != last_count:
            last_count, last_change = tally.deliveries, trio.current_time()
        elif trio.current_time() - last_change > SETTLE_SECONDS:
            return


def _metrics(
    params: FanoutParams, tally: _Tally, relay: RelayProcess, cpu_before: float
) -> dict[str, Any]:
    cpu = relay.cpu_seconds() - cpu_before
    unique = len(tally.received)
    elapsed = max(tally.last_receive - tally.first_send, 1e-9)
    send_elapsed = max(tally.last_send - tally.first_send, 1e-9)
    metrics: dict[str, Any] = {
        "deliveries_per_s": tally.deliveries / elapsed,
        "sends_per_s": params.senders * params.messages / send_elapsed,
        **latency_summary(tally.latencies),
        "relay_cpu_s_per_1k_deliveries": cpu / max(tally.deliveries, 1) * 1000,
        "relay_peak_rss_mib": relay.peak_rss_bytes() / 2**20,
        "deliveries": tally.deliveries,
        "lost": tally.expected - unique,
        "duplicated": tally.deliveries - unique,
        "latencies_ms": [latency * 1000 for latency in tally.latencies],
    }
    if tally.lags:
        metrics["send_lag_p99_ms"] = percentile(sorted(tally.lags), 0.99) * 1000
    return metrics


async def run_raw(kind: str, params: FanoutParams, progress: Progress) -> dict[str, Any]:
    """Run fanout with raw-frame clients against ``kind`` (t2t or reference)."""
    # Logins are not measured here, so the cheapest argon2id cost saves time.
    relay_args = ["--hash-ops", "1", "--hash-memory", "8"] if kind == "t2t" else []
    window = params.window if kind == "t2t" else None
    tally = _Tally(
        params.expected, advance=progress.task(f"fanout raw, {kind} relay", params.expected)
    )

    async with (
        run_relay(kind, extra_args=relay_args) as relay,
        trio.open_nursery() as nursery,
    ):
        with tempfile.TemporaryDirectory() as state:

            async def member(index: int, task_status: Any) -> None:
                async with raw_session(
                    relay.url,
                    f"member{index}",
                    ca_file=relay.ca_file,
                    state_dir=Path(state),
                    window=window,
                ) as client:

                    def on_message(msg_id: bytes, at: float) -> None:
                        sender = int.from_bytes(msg_id[:4], "big")
                        sequence = int.from_bytes(msg_id[4:12], "big")
                        tally.record(sender, sequence, index, at)

                    client.on_message = on_message
                    task_status.started(client)
                    await client.read()

            members: list[RawClient] = [
                await nursery.start(member, i) for i in range(params.members)
            ]
            if kind == "t2t":
                await members[0].create_group(GROUP)
                for other in members[1:]:
                    await members[0].invite(other.user, GROUP)

            cpu_before = relay.cpu_seconds()
            relay.reset_peak_rss()
            tally.first_send = trio.current_time()
            async with trio.open_nursery() as senders:
                for sender in range(params.senders):

                    async def send_one(sequence: int, sender: int = sender) -> None:
                        client = members[sender]
                        frame = client.message_frame(
                            GROUP, params.body_size, message_id(sender, sequence)
                        )
                        await client.send(frame)

                    senders.start_soon(
                        partial(_pace, pipelined=False), params, sender, send_one, tally
                    )
            await _await_deliveries(tally)
            metrics = _metrics(params, tally, relay, cpu_before)
            nursery.cancel_scope.cancel()
    return metrics


async def run_client(params: FanoutParams, progress: Progress) -> dict[str, Any]:
    """Run fanout with the public t2t client, crypto included, against the t2t relay.

    The senders are full clients. With ``full_receivers`` set, only that many
    receivers are full clients too and the rest are raw-frame clients: one
    load process cannot give every receiver its own CPU the way separate
    devices would, and verifying each message N-1 times in one process
    would measure the load generator instead of the system. Latency then
    comes from the full receivers only; loss and duplicates from all.
    """
    tally = _Tally(
        params.expected, advance=progress.task("fanout client, t2t relay", params.expected)
    )
    full = (
        params.members if params.full_receivers is None else params.senders + params.full_receivers
    )
    sent_ids: dict[bytes, tuple[int, int]] = {}
    raw_receipts: list[tuple[bytes, int, float]] = []

    async with run_relay("t2t") as relay, trio.open_nursery() as nursery:
        ca_file = relay.ca_file
        assert ca_file is not None
        with tempfile.TemporaryDirectory() as state:

            async def member(index: int, task_status: Any) -> None:
                async with t2t.connect(
                    relay.url,
                    user=f"member{index}",
                    password=f"bench-member{index}",
                    ca=ca_file,
                    state_dir=Path(state) / f"member{index}",
                    window=params.window,
                ) as client:

                    def on_message(event: t2t.MessageReceived) -> None:
                        sender, sequence, _ = event.text.split(":", 2)
                        tally.record(int(sender), int(sequence), index, trio.current_time())

                    client.on(t2t.MessageReceived, on_message)
                    task_status.started(client)
                    await trio.sleep_forever()

            async def raw_member(index: int, task_status: Any) -> None:
                async with raw_session(
                    relay.url,
                    f"member{index}",
                    ca_file=relay.ca_file,
                    state_dir=Path(state),
                    window=None,
                ) as client:

                    def on_message(msg_id: bytes, at: float) -> None:
                        raw_receipts.append((msg_id, index, at))
                        tally.deliveries += 1
                        tally.last_receive = at
                        tally.advance()

                    client.on_message = on_message
                    task_status.started(client)
                    await client.read()

            members: list[t2t.Client] = [await nursery.start(member, i) for i in range(full)]
            raw_users = [
                (await nursery.start(raw_member, i)).user for i in range(full, params.members)
            ]
            for user in [other.user for other in members[1:]] + raw_users:
                await members[0].invite(user, GROUP)

            cpu_before = relay.cpu_seconds()
            relay.reset_peak_rss()
            tally.first_send = trio.current_time()
            async with trio.open_nursery() as senders:
                for sender in range(params.senders):

                    async def send_one(sequence: int, sender: int = sender) -> None:
                        prefix = f"{sender}:{sequence}:"
                        text = prefix + "x" * max(0, params.body_size - len(prefix))
                        msg_id = await members[sender].send(GROUP, text)
                        sent_ids[msg_id] = (sender, sequence)

                    senders.start_soon(
                        partial(_pace, pipelined=True), params, sender, send_one, tally
                    )
            await _await_deliveries(tally)
            for msg_id, receiver, _ in raw_receipts:
                sender, sequence = sent_ids.get(msg_id, (-1, -1))
                tally.received[(sender, sequence, receiver)] += 1
            metrics = _metrics(params, tally, relay, cpu_before)
            metrics["full_receivers"] = full - params.senders
            nursery.cancel_scope.cancel()
    return metrics
