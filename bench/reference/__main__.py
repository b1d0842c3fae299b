"""Run the bare relay: ``python -m bench.reference --port PORT``."""

from __future__ import annotations

import argparse
import signal

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

MAX_MESSAGE_SIZE = 64 * 1024  # bytes, the same limit as the t2t relay's default


async def serve(host: str, port: int) -> None:
    connections: set[WebSocketConnection] = set()

    async def handle(request: WebSocketRequest) -> None:
        ws = await request.accept()
        connections.add(ws)
        try:
            while True:
                message = await ws.get_message()
                for other in list(connections):
                    if other is not ws:
                        try:
                            await other.send_message(message)
                        except ConnectionClosed:
                            connections.discard(other)
        except ConnectionClosed:
            pass
        finally:
            connections.discard(ws)

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: serve_websocket(handle, host, port, None, max_message_size=MAX_MESSAGE_SIZE)
            )
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reference",
        description="Bare trio-websocket relay: forwards every message to all other connections.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    args = parser.parse_args()
    trio.run(serve, args.host, args.port)


main()
