"""Open a client connection: :func:`connect`."""

from __future__ import annotations

import logging
import math
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    DisconnectionTimeout,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from t2t.client.connection import (
    DEFAULT_EVENT_BUFFER,
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_HEARTBEAT_TIMEOUT,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_WINDOW,
    MIN_INBOUND_MESSAGE_SIZE,
    Client,
    InviteDecision,
)
from t2t.client.state import (
    GROUP_KEYS_FILE,
    IDENTITY_FILE,
    RESUME_FILE,
    load_group_keys,
    load_or_create_identity,
    load_resume_tokens,
    save_resume_tokens,
)
from t2t.crypto.keys import load_public_identity
from t2t.errors import (
    CLOSE_POLICY_VIOLATION,
    CertificateError,
    DisconnectedError,
    ProtocolError,
)
from t2t.frames import MAX_PASSWORD_LENGTH, validate_name
from t2t.protocol.client import ClientProtocol

log = logging.getLogger("t2t.client")


@asynccontextmanager
async def connect(
    url: str,
    *,
    user: str,
    password: str,
    ca: Path | str,
    state_dir: Path | str | None = None,
    key_file: Path | str | None = None,
    group_keys_file: Path | str | None = None,
    relay_name: str | None = None,
    accept_invite: InviteDecision | None = None,
    window: int = DEFAULT_WINDOW,
    event_buffer: int = DEFAULT_EVENT_BUFFER,
    connect_timeout: float = 10.0,
    request_timeout: float = 30.0,
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Client]:
    """Connect to a relay, log in, and yield a :class:`Client`.

    Args:
        url: ``ws://host:port`` or ``wss://host:port``.
        user: Our user id; the first login registers it.
        password: Our password. It is sealed to the relay's certified key.
        ca: The CA public key file that signed the relay certificate.
        state_dir: Folder for ``identity.key``, ``group_keys.json`` and
            ``resume.json``
            (created with mode 0600). Defaults to ``./t2t-<user>``.
        key_file, group_keys_file: Override the two file paths.
        relay_name: The name the certificate must carry; defaults to the
            URL's host.
        accept_invite: Called with each verified invite; return False to
            decline. Invites are accepted when this is None.
        window: Maximum unacknowledged messages; further sends wait.
        event_buffer: Events buffered for the application before the client
            disconnects as a slow consumer.
        connect_timeout: Seconds allowed for connecting and logging in.
        request_timeout: Seconds to wait for the relay's reply to a request.
        heartbeat_interval: Seconds between WebSocket pings. The relay
            closes a connection that sends nothing for its idle timeout.
        heartbeat_timeout: Seconds to wait for the pong before closing the
            connection with 1000.
        max_message_size: Largest message sent or accepted, in bytes; keep it
            equal to the relay's ``--max-message-size``.
        ssl_context: TLS settings for ``wss://`` URLs, for example to trust a
            private TLS CA; the system defaults when None.

    Raises:
        CertificateError: the relay certificate failed a check.
        ConflictError: the relay rejected the login (for example a wrong
            password), or replaced this session and no handler took the
            :class:`Conflict` event.
        DisconnectedError: the relay closed the connection during login.
        KeyFileError: a key file is missing or malformed.
        TimeoutError: the login did not finish within ``connect_timeout``.
    """
    validate_name(user, "user")
    _validate_password(password)
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    if event_buffer < 1:
        raise ValueError(f"event_buffer must be at least 1, got {event_buffer}")
    for name, value in (
        ("connect_timeout", connect_timeout),
        ("request_timeout", request_timeout),
        ("heartbeat_interval", heartbeat_interval),
        ("heartbeat_timeout", heartbeat_timeout),
    ):
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a positive number of seconds, got {value}")
    if heartbeat_timeout >= heartbeat_interval:
        raise ValueError(
            f"heartbeat_timeout ({heartbeat_timeout} s) must be shorter than "
            f"heartbeat_interval ({heartbeat_interval} s)"
        )
    host = urlsplit(url).hostname
    if host is None:
        raise ValueError(f"relay URL {url!r} has no host; use ws://HOST:PORT")

    folder = Path(state_dir) if state_dir is not None else Path(f"t2t-{user}")
    identity = load_or_create_identity(Path(key_file) if key_file else folder / IDENTITY_FILE)
    keys_path = Path(group_keys_file) if group_keys_file else folder / GROUP_KEYS_FILE
    resume_path = folder / RESUME_FILE
    protocol = ClientProtocol(
        user=user,
        password=password,
        identity=identity,
        ca_key=_load_ca_key(Path(ca)),
        relay_name=relay_name if relay_name is not None else host,
        group_keys=load_group_keys(keys_path),
        resume_tokens=load_resume_tokens(resume_path),
    )

    connected = False
    block_error: BaseException | None = None  # what the caller's block raised, if anything
    try:
        async with open_websocket_url(
            url,
            ssl_context=ssl_context,
            # Rosters list every account and can outgrow the relay's limit on
            # client messages, so accept larger messages from the relay.
            max_message_size=max(max_message_size, MIN_INBOUND_MESSAGE_SIZE),
            connect_timeout=connect_timeout,
            disconnect_timeout=2.0,
        ) as ws:
            connected = True
            client = Client(
                ws,
                protocol,
                group_keys_file=keys_path,
                window=window,
                event_buffer=event_buffer,
                request_timeout=request_timeout,
                heartbeat_interval=heartbeat_interval,
                heartbeat_timeout=heartbeat_timeout,
                accept_invite=accept_invite,
                max_message_size=max_message_size,
            )
            await _log_in(client, ws, url, connect_timeout)
            try:
                save_resume_tokens(resume_path, protocol.resume_tokens)
            except OSError as exc:
                log.warning("cannot save resume token to %s: %s", resume_path, exc)
            async with trio.open_nursery() as nursery:
                await nursery.start(client._run)
                await client._subscribe_known_groups()
                try:
                    yield client
                except BaseException as exc:
                    block_error = exc
                    raise
                nursery.cancel_scope.cancel()
    except DisconnectionTimeout as exc:
        # The session is over either way: the relay did not confirm the
        # close in time, for example because it was waiting on a slow member.
        log.warning("relay %s did not confirm the close within 2 s; closed anyway", url)
        if block_error is not None:
            raise block_error from exc  # what ended the block comes first
    except (OSError, HandshakeError) as exc:
        if connected:
            raise
        raise DisconnectedError(None, f"cannot connect to {url}: {exc!r}") from None
    except BaseExceptionGroup as group:
        # Nurseries wrap even a single failure in a group. Callers expect to
        # catch ConflictError, or their own exception from the block,
        # directly, so unwrap a group of one.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


async def _log_in(client: Client, ws: WebSocketConnection, url: str, timeout: float) -> None:
    try:
        with trio.fail_after(timeout):
            await client._handshake()
    except trio.TooSlowError:
        raise TimeoutError(f"login to {url} did not finish within {timeout:g} s") from None
    except (CertificateError, ProtocolError) as exc:
        code = exc.code if isinstance(exc, ProtocolError) else CLOSE_POLICY_VIOLATION
        with trio.move_on_after(2):
            await ws.aclose(code, str(exc)[:120])
        raise
    log.info("logged in user=%s relay=%s", client.user, url)


def _validate_password(password: str) -> None:
    length = len(password)
    if not 1 <= length <= MAX_PASSWORD_LENGTH:
        raise ValueError(
            f"password must be 1 to {MAX_PASSWORD_LENGTH} characters, got {length} characters"
        )
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("password is not valid Unicode text (it has a lone surrogate)") from None


def _load_ca_key(path: Path) -> bytes:
    return load_public_identity(path).sign_key
