"""Relay limits and timeouts: :class:`RelayConfig`."""

from __future__ import annotations

import math
import ssl
from dataclasses import dataclass, field
from typing import Final

from t2t.protocol.relay import DEFAULT_MAX_ACCOUNTS, DEFAULT_RESUME_TTL
from t2t.server.passwords import HashCost

KIB: Final = 1024


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """Relay limits and timeouts. Times are in seconds, sizes in bytes."""

    host: str = "127.0.0.1"
    port: int = 8765  # 0 picks a free port; see Relay.port
    max_message_size: int = 64 * KIB  # larger inbound messages close with 1009
    # Outbound frames queued per connection. A short queue keeps latency low
    # under overload: once it is full the sender's reader waits, and the
    # wait reaches the sender through its window of unacknowledged messages.
    queue_size: int = 32
    # A queue full for this long, or a message unwritten this long, drops the
    # connection as a slow consumer.
    send_timeout: float = 5.0
    max_pending_logins: int = 64  # password checks queued at once; more are refused with 1013
    max_accounts: int = DEFAULT_MAX_ACCOUNTS  # registrations beyond this are refused
    # Close a connection that sends no bytes for this long: three client
    # heartbeat intervals of 30 s, so a client must miss two pings in a row.
    idle_timeout: float = 90.0
    login_timeout: float = 10.0  # close a connection that has not logged in by then
    close_timeout: float = 2.0  # how long a closing handshake may take
    roster_debounce: float = 0.05  # gather roster changes for this long before one push
    hash_threads: int = 2  # password hashes running at once
    hash_cost: HashCost = field(default_factory=HashCost)
    resume_ttl: float = DEFAULT_RESUME_TTL  # resume token lifetime; 0 disables tokens
    ssl_context: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        for name in ("idle_timeout", "login_timeout", "close_timeout", "send_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(
                    f"{_option(name)} must be a positive number of seconds, got {value}"
                )
        for name in ("roster_debounce", "resume_ttl"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{_option(name)} must be zero or more seconds, got {value}")
        if self.max_message_size < KIB:
            raise ValueError(
                f"max_message_size must be at least {KIB} bytes, got {self.max_message_size}"
            )
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {self.queue_size}")
        if self.max_accounts < 1:
            raise ValueError(f"max_accounts must be at least 1, got {self.max_accounts}")
        if self.max_pending_logins < 1:
            raise ValueError(
                f"max_pending_logins must be at least 1, got {self.max_pending_logins}"
            )
        if self.hash_threads < 1:
            raise ValueError(f"hash_threads must be at least 1, got {self.hash_threads}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")


def _option(field_name: str) -> str:
    """Name a config field together with its command line option."""
    return f"{field_name} (--{field_name.replace('_', '-')})"
