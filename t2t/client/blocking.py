"""The blocking :class:`ChatClient`, for programs that do not run an event loop.

Scripts, GUIs and REPL sessions often cannot be written as trio code, but the
client in :mod:`t2t.client.connection` is trio-native. ``ChatClient`` is a thin
layer over it: ``run()`` starts trio in a background thread through an anyio
blocking portal and keeps :func:`~t2t.client.connect` open there, and each
blocking method runs the matching coroutine in that thread and waits for it.
It has no protocol logic of its own.

The trade-off: callbacks run in the trio thread, one at a time. While a
callback runs, that connection reads no frames, sends no heartbeat pings and
delivers no other events, so a callback must return quickly. It must not call
``send()``, ``handshake()`` or ``stop()``, because those wait for the trio
thread that the callback occupies. They raise :class:`RuntimeError` there, so
hand such work to another thread instead. Programs that can run trio should use
:func:`~t2t.client.connect` directly.

Example::

    client = ChatClient()
    client.id = "alice"
    client.pwd = "secret"
    client.server_url = "wss://relay.example:8765"
    client.ca_file = "ca.pub"
    client.callback("message", lambda event: print(event.sender, event.text))
    client.run()
    client.handshake("bob", "team")
    client.send("team", "hi")
    client.stop()
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeVar, overload

from anyio.from_thread import BlockingPortal, start_blocking_portal

from t2t.client.connect import connect
from t2t.client.connection import Client
from t2t.events import (
    Conflict,
    Disconnected,
    Event,
    InviteReceived,
    MessageReceived,
    MessageRejected,
    RosterChanged,
)

log = logging.getLogger(__name__)

_E = TypeVar("_E", bound=Event)
_T = TypeVar("_T")

EVENT_TYPES: Final[dict[str, type[Event]]] = {
    "message": MessageReceived,
    "invite": InviteReceived,
    "roster": RosterChanged,
    "rejected": MessageRejected,
    "conflict": Conflict,
    "disconnected": Disconnected,
}
"""Callback type names accepted by :meth:`ChatClient.callback`, mapped to event classes."""

INVITE_DECISION: Final = "request"
"""The callback type whose function decides whether to accept an invite."""

_REQUIRED_SETTINGS: Final = ("id", "pwd", "server_url", "ca_file")

# Keyword arguments of connect() that ChatClient does not set itself, such as
# window or request_timeout. They are passed through unchanged.
_CONNECT_OPTIONS: Final = frozenset(inspect.signature(connect).parameters) - {
    "url",
    "user",
    "password",
    "ca",
    "state_dir",
    "key_file",
    "group_keys_file",
    "relay_name",
    "accept_invite",
}


class ChatClient:
    """A blocking client for one user, running the trio client in a background thread.

    Every setting is an optional keyword argument and a public attribute, so it
    can be configured either way before :meth:`run`. ``id``, ``pwd``,
    ``server_url`` and ``ca_file`` are required. The other settings and the
    extra keyword ``options`` (for example ``request_timeout=5``) are passed to
    :func:`~t2t.client.connect`, which documents them.

    Used as a context manager, it calls :meth:`run` on entry unless it is
    already running, and :meth:`stop` on exit.
    """

    def __init__(
        self,
        *,
        id: str | None = None,
        pwd: str | None = None,
        server_url: str | None = None,
        key_file: Path | str | None = None,
        ca_file: Path | str | None = None,
        group_keys_file: Path | str | None = None,
        state_dir: Path | str | None = None,
        relay_name: str | None = None,
        **options: Any,
    ) -> None:
        unknown = sorted(set(options) - _CONNECT_OPTIONS)
        if unknown:
            raise TypeError(
                f"ChatClient got unexpected keyword arguments {unknown}. "
                f"The connect() options it passes through are {sorted(_CONNECT_OPTIONS)}"
            )
        self.id = id
        self.pwd = pwd
        self.server_url = server_url
        self.key_file = key_file
        self.ca_file = ca_file
        self.group_keys_file = group_keys_file
        self.state_dir = state_dir
        self.relay_name = relay_name
        self.options: dict[str, Any] = options

        # Registration replaces the tuple instead of changing it, so the trio
        # thread can iterate it while another thread registers a callback.
        self._callbacks: tuple[tuple[type[Event], Callable[[Any], object]], ...] = ()
        self._invite_decision: Callable[[InviteReceived], object] | None = None
        self._lock = threading.Lock()

        self._stack: contextlib.ExitStack | None = None
        self._portal: BlockingPortal | None = None
        self._client: Client | None = None
        self._trio_thread: int | None = None

    # Configuration ---------------------------------------------------------

    @overload
    def callback(self, type: type[_E], fn: Callable[[_E], object]) -> None: ...

    @overload
    def callback(self, type: str, fn: Callable[[Any], object]) -> None: ...

    def callback(self, type: str | type[Event], fn: Callable[[Any], object]) -> None:
        """Register ``fn(event)`` for one type of event, before or after :meth:`run`.

        ``type`` is an event class from :mod:`t2t.events` (subclasses match
        too) or one of the names in :data:`EVENT_TYPES`. Several callbacks may
        share a type, and they run in the order they were registered. An
        exception in a callback is logged and does not affect the client.

        ``type="request"`` registers the invite decision instead: ``fn`` gets an
        :class:`~t2t.events.InviteReceived` whose ``accepted`` is False and
        returns True to accept the invite or False to decline it. A later
        ``"request"`` callback replaces the earlier one. Invites are accepted
        while none is registered, and declined if the function raises.

        Raises:
            ValueError: ``type`` is a string that names no event type.
            TypeError: ``type`` is not an event class, or ``fn`` is not a plain
                function.
        """
        if not callable(fn):
            raise TypeError(f"callback fn must be callable, got {fn!r}")
        if inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"callback fn {fn!r} is a coroutine function, but ChatClient calls callbacks "
                "as plain functions; use Client.on() from t2t.client for async callbacks"
            )
        if type == INVITE_DECISION:
            self._invite_decision = fn
            return
        kind = _event_class(type)
        with self._lock:
            self._callbacks = (*self._callbacks, (kind, fn))

    # Connection ------------------------------------------------------------

    def run(self) -> None:
        """Connect to the relay and log in, then return while the connection runs on.

        The connection lives in a background thread until :meth:`stop`. If
        the login fails, that thread is stopped before the error is raised.

        Raises:
            ValueError: a required setting is missing or invalid.
            RuntimeError: the client is already running.
            ConflictError: the relay rejected the login, for example because
                the password is wrong.
            CertificateError: the relay certificate failed a check.
            DisconnectedError: the relay cannot be reached or closed the
                connection during login.
            KeyFileError: a key file is missing or malformed.
            TimeoutError: the login did not finish within ``connect_timeout``.
        """
        if self._stack is not None:
            raise RuntimeError("ChatClient is already running; call stop() before run()")
        arguments = self._connect_arguments()

        stack = contextlib.ExitStack()
        try:
            portal = stack.enter_context(
                start_blocking_portal(backend="trio", name=f"t2t-client-{self.id}")
            )
            session = portal.wrap_async_context_manager(self._session(arguments))
            client = stack.enter_context(session)
        except BaseException:
            # Passing the error on cancels the login task if it still runs, for
            # example after KeyboardInterrupt, and joins the portal thread.
            stack.__exit__(*sys.exc_info())
            self._trio_thread = None
            raise
        self._stack = stack
        self._portal = portal
        self._client = client

    def stop(self) -> None:
        """Close the connection and stop the background thread.

        Calling it again, or before :meth:`run`, does nothing. Callbacks get no
        ``Disconnected`` event for a connection closed this way. An unexpected
        error that ended the connection task is raised here, after the thread
        has stopped.

        Raises:
            RuntimeError: called from a callback, in the trio thread.
        """
        self._check_not_trio_thread("stop")
        with self._lock:
            stack, self._stack = self._stack, None
            self._portal = None
            self._client = None
        if stack is not None:
            try:
                stack.close()
            finally:
                # Thread ids are reused, so forget the ended trio thread.
                self._trio_thread = None

    def __enter__(self) -> Self:
        if self._stack is None:
            self.run()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # Messaging -------------------------------------------------------------

    def handshake(self, peer: str, group: str) -> None:
        """Invite ``peer`` into ``group``, creating the group if this client has no key for it.

        Blocks until the relay confirms the invite. See
        :meth:`t2t.client.Client.invite` for the errors it raises.
        """
        client, portal = self._connection("handshake")
        portal.call(client.invite, peer, group)

    def send(self, group: str, text: str) -> bytes:
        """Send ``text`` to ``group`` and return the message id.

        Blocks until the relay acknowledges the message. See
        :meth:`t2t.client.Client.send` for the errors it raises.
        """
        client, portal = self._connection("send")
        return portal.call(client.send, group, text)

    @property
    def roster(self) -> dict[str, bool]:
        """Users in the latest verified roster, mapped to whether they are online."""
        return self._read("roster", lambda client: client.roster)

    @property
    def groups(self) -> list[str]:
        """Names of the groups whose key this client holds."""
        return self._read("groups", lambda client: client.groups)

    # Internals -------------------------------------------------------------

    def _connect_arguments(self) -> dict[str, Any]:
        for name in _REQUIRED_SETTINGS:
            if getattr(self, name) is None:
                raise ValueError(
                    f"ChatClient.{name} is not set; pass {name}=... or assign it before run()"
                )
        return {
            "url": self.server_url,
            "user": self.id,
            "password": self.pwd,
            "ca": self.ca_file,
            "state_dir": self.state_dir,
            "key_file": self.key_file,
            "group_keys_file": self.group_keys_file,
            "relay_name": self.relay_name,
            "accept_invite": self._decide_invite,
            **self.options,
        }

    @contextlib.asynccontextmanager
    async def _session(self, arguments: dict[str, Any]) -> AsyncIterator[Client]:
        """Run :func:`connect` in the portal and route its events to our callbacks."""
        self._trio_thread = threading.get_ident()
        async with connect(**arguments) as client:
            # No await separates connect() yielding from this line, so the
            # dispatcher cannot deliver an event before the router is in place.
            client.on(Event, self._deliver)
            yield client

    def _deliver(self, event: Event) -> None:
        """Call the registered callbacks that match ``event``, in the trio thread."""
        handled = False
        for kind, fn in self._callbacks:
            if not isinstance(event, kind):
                continue
            handled = True
            try:
                fn(event)
            except Exception:
                log.exception("callback %r failed on %s", fn, type(event).__name__)
        # Because this router handles every event, the client never raises
        # ConflictError for a replaced session, so this warning is its only trace.
        if isinstance(event, Conflict) and not handled:
            log.warning(
                "relay reported a session conflict (%s): %s; register "
                "callback('conflict', fn) to handle it",
                event.kind,
                event.message,
            )

    def _decide_invite(self, invite: InviteReceived) -> object:
        decide = self._invite_decision
        if decide is None:
            return True
        return decide(invite)

    def _check_not_trio_thread(self, method: str) -> None:
        if self._trio_thread is not None and threading.get_ident() == self._trio_thread:
            raise RuntimeError(
                f"ChatClient.{method}() cannot be called from a callback: callbacks run in "
                "the trio thread, which this call would wait for; call it from another thread"
            )

    def _connection(self, method: str) -> tuple[Client, BlockingPortal]:
        self._check_not_trio_thread(method)
        client, portal = self._client, self._portal
        if client is None or portal is None:
            raise RuntimeError(f"ChatClient.{method}() needs a connection; call run() first")
        return client, portal

    def _read(self, name: str, read: Callable[[Client], _T]) -> _T:
        """Return ``read(client)``, evaluated in the trio thread that owns the client."""
        client = self._client
        if client is not None and threading.get_ident() == self._trio_thread:
            return read(client)
        client, portal = self._connection(name)
        return portal.call(read, client)


def _event_class(kind: str | type[Event]) -> type[Event]:
    """Return the event class that a :meth:`ChatClient.callback` type names."""
    if isinstance(kind, str):
        event_class = EVENT_TYPES.get(kind)
        if event_class is None:
            allowed = ", ".join(repr(name) for name in [*EVENT_TYPES, INVITE_DECISION])
            raise ValueError(f"unknown callback type {kind!r}; use one of {allowed}")
        return event_class
    if inspect.isclass(kind) and issubclass(kind, Event):
        return kind
    raise TypeError(f"callback type must be an event name or a t2t.events class, got {kind!r}")
