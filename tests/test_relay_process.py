"""End to end against ``python -m t2t.server`` running as a subprocess.

Rules under test:

- Three clients in two groups exchange messages both ways. Each receiver
  gets the decrypted text with the verified sender, and no message reaches
  a client outside its group.
- SIGTERM closes every client connection with 1001, and the process exits
  with status 0 within 5 seconds.
- Accounts, passwords and group membership survive a restart.
- A missing, expired or not yet valid ``--cert`` exits with status 2 before
  listening, and a missing certificate's error shows the exact signing
  command. So does a port that is already in use.
- ``--help`` exits 0 and gives the units of the limits.

Test rules: each relay listens on 127.0.0.1 only. A subprocess cannot report
the port that ``--port 0`` picked, so the test binds a socket to port 0,
closes it and passes that port, and retries once with another port if the
relay cannot bind it. The relay writes its log to a file in tmp_path, each
process is killed in a finally block if it is still running, and every wait
is bounded.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from _relayio_helpers import Inbox, raw_session
from t2t.client import Client, connect
from t2t.crypto.cert import issue_certificate
from t2t.crypto.keys import CERTIFICATE_LABEL, KeyPair, save_key_pair, write_armored
from t2t.errors import CLOSE_GOING_AWAY, ConflictError
from t2t.events import Disconnected, InviteReceived, MessageReceived

REPO_ROOT = Path(__file__).resolve().parent.parent
FAST_HASH_ARGS = ["--hash-ops", "1", "--hash-memory", "8"]  # argon2id: 1 pass over 8 MiB
STARTUP_TIMEOUT = 20.0  # seconds for the interpreter to start and the relay to listen
EXIT_TIMEOUT = 5.0  # seconds the relay may take to exit after SIGTERM
CLI_TIMEOUT = 30.0  # seconds for a relay run that fails before listening

_CA_PATTERN = re.compile(r"development CA in use: give clients the CA public key file (\S+) ")
_LISTENING_PATTERN = re.compile(r"relay listening on (ws://127\.0\.0\.1:\d+)")
_BIND_FAILURES = ("cannot listen on", "Address already in use")


def relay_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "t2t.server", *args]


def relay_env() -> dict[str, str]:
    """The environment with this checkout first on PYTHONPATH."""
    paths = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def pick_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the relay command for a case that ends before it listens."""
    return subprocess.run(
        relay_command(*args),
        cwd=tmp_path,
        env=relay_env(),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


@dataclass
class RelayProcess:
    process: trio.Process
    url: str
    ca_file: Path
    log_file: Path

    async def log(self) -> str:
        return await trio.Path(self.log_file).read_text(errors="replace")

    async def wait_exit(self, timeout: float) -> int:
        """Wait for the process to exit and return its status."""
        with trio.fail_after(timeout):
            return await self.process.wait()


async def _stop(process: trio.Process) -> None:
    """Kill the process if it still runs and reap it, even inside a cancelled scope."""
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.kill()
        await process.wait()


async def _launch(
    data_dir: Path, log_file: Path, extra_args: tuple[str, ...]
) -> tuple[trio.Process, str]:
    """Start one relay process and return it with its log once it listens or exits."""
    port = pick_free_port()
    command = relay_command(
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        *FAST_HASH_ARGS,
        *extra_args,
    )
    log_path = trio.Path(log_file)
    with log_file.open("wb") as log_handle:
        process = await trio.lowlevel.open_process(
            command,
            cwd=data_dir.parent,
            env=relay_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log_handle,
        )
    try:
        with trio.fail_after(STARTUP_TIMEOUT):
            while True:
                log = await log_path.read_text(errors="replace")
                if _LISTENING_PATTERN.search(log) or process.returncode is not None:
                    return process, log
                await trio.sleep(0.05)
    except BaseException:
        await _stop(process)
        raise


@asynccontextmanager
async def relay_process(
    data_dir: Path, name: str = "relay", *extra_args: str
) -> AsyncIterator[RelayProcess]:
    """Run ``python -m t2t.server`` on a free 127.0.0.1 port until the block exits."""
    await trio.Path(data_dir).mkdir(parents=True, exist_ok=True)
    log_file = data_dir.parent / f"{name}.log"
    process, log = await _launch(data_dir, log_file, extra_args)
    if process.returncode is not None and any(text in log for text in _BIND_FAILURES):
        # Another program took the port between the probe and the relay's bind.
        process, log = await _launch(data_dir, log_file, extra_args)
    try:
        listening = _LISTENING_PATTERN.search(log)
        ca = _CA_PATTERN.search(log)
        assert listening is not None, f"relay did not start:\n{log}"
        assert ca is not None, f"relay did not name its development CA:\n{log}"
        yield RelayProcess(process, listening.group(1), Path(ca.group(1)), log_file)
    finally:
        await _stop(process)


@asynccontextmanager
async def client(
    relay: RelayProcess, tmp_path: Path, user: str, password: str | None = None
) -> AsyncIterator[Client]:
    async with connect(
        relay.url,
        user=user,
        password=password if password is not None else f"pw-{user}",
        ca=relay.ca_file,
        state_dir=tmp_path / f"client-{user}",
    ) as connected:
        yield connected


def watch(connected: Client) -> Inbox:
    return Inbox(connected, InviteReceived, MessageReceived, Disconnected)


def from_sender(group: str, sender: str, msg_id: bytes):
    return lambda e: e.group == group and e.sender == sender and e.msg_id == msg_id


# Running relay ----------------------------------------------------------------


@pytest.mark.anyio
async def test_three_clients_two_groups(tmp_path):
    async with (
        relay_process(tmp_path / "data") as relay,
        client(relay, tmp_path, "alice") as alice,
        client(relay, tmp_path, "bob") as bob,
        client(relay, tmp_path, "carol") as carol,
    ):
        inbox = {"alice": watch(alice), "bob": watch(bob), "carol": watch(carol)}
        await alice.invite("bob", "red")
        await alice.invite("carol", "red")
        await bob.invite("carol", "blue")
        invites = [
            await inbox["bob"].wait_for(InviteReceived, lambda e: e.group == "red"),
            await inbox["carol"].wait_for(InviteReceived, lambda e: e.group == "red"),
            await inbox["carol"].wait_for(InviteReceived, lambda e: e.group == "blue"),
        ]

        blue_from_carol = await carol.send("blue", "blue from carol")
        blue_from_bob = await bob.send("blue", "blue from bob")
        red_from_alice = await alice.send("red", "red from alice")
        red_from_carol = await carol.send("red", "red from carol")

        bob_blue = await inbox["bob"].wait_for(
            MessageReceived, from_sender("blue", "carol", blue_from_carol)
        )
        carol_blue = await inbox["carol"].wait_for(
            MessageReceived, from_sender("blue", "bob", blue_from_bob)
        )
        bob_red = await inbox["bob"].wait_for(
            MessageReceived, from_sender("red", "alice", red_from_alice)
        )
        carol_red = await inbox["carol"].wait_for(
            MessageReceived, from_sender("red", "alice", red_from_alice)
        )
        alice_red = await inbox["alice"].wait_for(
            MessageReceived, from_sender("red", "carol", red_from_carol)
        )
        bob_red_reply = await inbox["bob"].wait_for(
            MessageReceived, from_sender("red", "carol", red_from_carol)
        )
        # alice got carol's last message, so any blue message routed to her
        # earlier would be in her inbox by now.
        alice_groups = {event.group for event in inbox["alice"].of(MessageReceived)}
        carol_senders = {event.sender for event in inbox["carol"].of(MessageReceived)}

    assert invites == [
        InviteReceived("red", "alice", True),
        InviteReceived("red", "alice", True),
        InviteReceived("blue", "bob", True),
    ]
    assert bob_blue.text == "blue from carol"
    assert carol_blue.text == "blue from bob"
    assert bob_red.text == "red from alice"
    assert carol_red.text == "red from alice"
    assert alice_red.text == "red from carol"
    assert bob_red_reply.text == "red from carol"
    assert alice_groups == {"red"}
    assert carol_senders == {"alice", "bob"}


@pytest.mark.anyio
async def test_sigterm_closes_with_1001(tmp_path):
    async with relay_process(tmp_path / "data") as relay:
        async with (
            client(relay, tmp_path, "alice") as alice,
            client(relay, tmp_path, "bob") as bob,
        ):
            inboxes = [watch(alice), watch(bob)]
            relay.process.send_signal(signal.SIGTERM)
            disconnects = [await inbox.wait_for(Disconnected) for inbox in inboxes]
        status = await relay.wait_exit(EXIT_TIMEOUT)
        log = await relay.log()

    assert [event.code for event in disconnects] == [CLOSE_GOING_AWAY, CLOSE_GOING_AWAY]
    assert status == 0
    assert "received SIGTERM" in log
    assert "relay stopped" in log
    assert "Traceback" not in log


@pytest.mark.anyio
async def test_sigterm_exits_despite_stalled_write(tmp_path):
    # A member that never reads leaves the relay's writer for it blocked in
    # a socket write, which no closing handshake can get past. With a long
    # --send-timeout that write outlasts the shutdown grace, and the relay
    # must still exit within EXIT_TIMEOUT.
    async with (
        relay_process(tmp_path / "data", "relay", "--send-timeout", "30") as relay,
        raw_session(relay.url, relay.ca_file, "stalled"),
        client(relay, tmp_path, "alice") as alice,
    ):
        await alice.invite("stalled", "team")
        with trio.move_on_after(3):  # until the socket buffers are full
            while True:
                await alice.send("team", "z" * 20_000)
        relay.process.send_signal(signal.SIGTERM)
        status = await relay.wait_exit(EXIT_TIMEOUT)

    assert status == 0


@pytest.mark.anyio
async def test_sigterm_logs_1001(tmp_path):
    async with relay_process(tmp_path / "data") as relay:
        async with client(relay, tmp_path, "alice") as alice:
            inbox = watch(alice)
            relay.process.send_signal(signal.SIGTERM)
            await inbox.wait_for(Disconnected)
        await relay.wait_exit(EXIT_TIMEOUT)
        log = await relay.log()

    assert "connection closed conn=1 user=alice code=1001" in log


@pytest.mark.anyio
async def test_state_survives_restart(tmp_path):
    data_dir = tmp_path / "data"
    async with relay_process(data_dir, "first") as relay:
        async with client(relay, tmp_path, "alice") as alice, client(relay, tmp_path, "bob") as bob:
            bob_inbox = watch(bob)
            await alice.invite("bob", "team")
            await bob_inbox.wait_for(InviteReceived)
        relay.process.send_signal(signal.SIGTERM)
        first_status = await relay.wait_exit(EXIT_TIMEOUT)

    async with relay_process(data_dir, "second") as relay:
        with trio.fail_after(10), pytest.raises(ConflictError) as info:
            async with client(relay, tmp_path, "alice", password="wrong password"):
                pass
        # Both clients subscribe to "team" again while logging in.
        async with client(relay, tmp_path, "alice") as alice, client(relay, tmp_path, "bob") as bob:
            alice_inbox, bob_inbox = watch(alice), watch(bob)
            to_bob = await alice.send("team", "after the restart")
            to_alice = await bob.send("team", "welcome back")
            bob_received = await bob_inbox.wait_for(MessageReceived)
            alice_received = await alice_inbox.wait_for(MessageReceived)
            roster = alice.roster

    assert first_status == 0
    assert "wrong password" in str(info.value)
    assert roster == {"alice": True, "bob": True}
    assert bob_received.msg_id == to_bob
    assert bob_received.sender == "alice"
    assert alice_received.msg_id == to_alice
    assert alice_received.text == "welcome back"


# Startup failures -------------------------------------------------------------


def test_missing_cert_prints_sign_command(tmp_path):
    data_dir = tmp_path / "data"
    cert = tmp_path / "relay.cert"

    result = run_cli(tmp_path, "--port", "0", "--data-dir", str(data_dir), "--cert", str(cert))

    key = data_dir / "relay.key"
    command = shlex.join(
        [
            "python",
            "-m",
            "t2t.ca",
            "sign",
            str(data_dir / "relay.pub"),
            "--name",
            "RELAY_NAME",
            "--days",
            "365",
            "--out",
            str(cert),
        ]
    )
    assert result.returncode == 2
    assert command in result.stderr
    assert "Traceback" not in result.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not cert.exists()


@pytest.mark.parametrize(
    ("offset_days", "message"),
    [(-10, "expired at"), (10, "is not valid until")],
    ids=["expired", "not-yet-valid"],
)
def test_cert_outside_validity_exits_2(tmp_path, offset_days: int, message: str):
    ca, relay_key = KeyPair.generate(), KeyPair.generate()
    key_file, cert_file = tmp_path / "relay.key", tmp_path / "relay.cert"
    save_key_pair(key_file, relay_key)
    certificate = issue_certificate(
        ca, relay_key.public, "127.0.0.1", days=1, now=time.time() + offset_days * 86400
    )
    write_armored(cert_file, CERTIFICATE_LABEL, certificate, private=False)

    result = run_cli(
        tmp_path,
        "--port",
        "0",
        "--data-dir",
        str(tmp_path / "data"),
        "--cert",
        str(cert_file),
        "--key",
        str(key_file),
    )

    assert result.returncode == 2
    assert message in result.stderr
    assert str(cert_file) in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_exits_2(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            tmp_path, "--port", str(port), "--data-dir", str(tmp_path / "data"), *FAST_HASH_ARGS
        )

    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1 port {port}" in result.stderr
    assert "relay stopped" not in result.stderr  # it never started
    assert "Traceback" not in result.stderr


def test_help_gives_units(tmp_path):
    result = run_cli(tmp_path, "--help")

    assert result.returncode == 0
    assert "seconds" in result.stdout
    assert "bytes" in result.stdout
    assert "MiB" in result.stdout


@pytest.mark.anyio
async def test_send_timeout_above_request_timeout_warns(tmp_path):
    async with relay_process(tmp_path / "data", "relay", "--send-timeout", "40") as relay:
        log = await relay.log()

    assert "--send-timeout 40 s is not below the clients' default request timeout of 30 s" in log


def test_data_dir_that_is_a_file_exits_2(tmp_path):
    not_a_folder = tmp_path / "data"
    not_a_folder.write_text("a file, not a folder")

    result = run_cli(tmp_path, "--port", "0", "--data-dir", str(not_a_folder), *FAST_HASH_ARGS)

    assert result.returncode == 2
    assert f"cannot use the data folder {not_a_folder}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not_a_folder.read_text() == "a file, not a folder"
