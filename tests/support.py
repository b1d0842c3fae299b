"""Shared helpers for tests that run a real relay on 127.0.0.1.

Rules for every test in this suite: traffic goes only to 127.0.0.1 on port 0
(a free port the OS picks), state lives in pytest's tmp_path, and every test
runs under the pytest-timeout limit set in pyproject.toml. Password hashing
uses the minimum argon2id cost so that the suite stays fast; the default
cost is tested on its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import trio

from t2t.client import Client, connect
from t2t.server.config import RelayConfig
from t2t.server.credentials import Credentials, load_development
from t2t.server.passwords import HashCost
from t2t.server.relay import Relay
from t2t.server.storage import Store

FAST_HASH = HashCost(opslimit=1, memlimit=8192)


@dataclass
class RunningRelay:
    relay: Relay
    url: str
    ca_file: Path
    data_dir: Path
    credentials: Credentials

    @asynccontextmanager
    async def client(
        self, user: str, password: str | None = None, **kwargs: Any
    ) -> AsyncIterator[Client]:
        """Connect ``user`` with its own state folder under the relay's data folder."""
        kwargs.setdefault("state_dir", self.data_dir / f"client-{user}")
        async with connect(
            self.url,
            user=user,
            password=password if password is not None else f"pw-{user}",
            ca=self.ca_file,
            **kwargs,
        ) as client:
            yield client


@asynccontextmanager
async def running_relay(data_dir: Path, **config: Any) -> AsyncIterator[RunningRelay]:
    """Run a relay with a development CA in ``data_dir`` until the block exits."""
    credentials = load_development(data_dir, data_dir / "relay.key", "127.0.0.1")
    assert credentials.ca_public_file is not None
    relay_config = replace(RelayConfig(port=0, hash_cost=FAST_HASH), **config)
    store = Store(data_dir / "relay.sqlite3")
    relay = Relay(relay_config, credentials.key, credentials.certificate, store)
    try:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(relay.serve)
            yield RunningRelay(
                relay, f"ws://127.0.0.1:{port}", credentials.ca_public_file, data_dir, credentials
            )
            nursery.cancel_scope.cancel()
    finally:
        store.close()


@dataclass
class TcpProxy:
    """A TCP proxy on 127.0.0.1. Set ``drop_replies`` to discard the bytes the relay sends."""

    url: str
    drop_replies: bool = False


@asynccontextmanager
async def tcp_proxy(relay_port: int) -> AsyncIterator[TcpProxy]:
    """Forward connections from a free port on 127.0.0.1 to ``relay_port``."""

    async def handle(client: trio.SocketStream) -> None:
        relay = await trio.open_tcp_stream("127.0.0.1", relay_port)
        async with client, relay, trio.open_nursery() as nursery:

            async def forward(
                source: trio.SocketStream, sink: trio.SocketStream, dropping: Any
            ) -> None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    async for data in source:
                        if not dropping():
                            await sink.send_all(data)
                nursery.cancel_scope.cancel()  # one side closed, so close both

            nursery.start_soon(forward, client, relay, lambda: False)
            nursery.start_soon(forward, relay, client, lambda: proxy.drop_replies)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        proxy = TcpProxy(f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}")
        yield proxy
        nursery.cancel_scope.cancel()


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    """Poll ``predicate()`` every 10 ms until it is true or ``timeout`` seconds pass."""
    with trio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 (polls state that has no event)
            await trio.sleep(0.01)
