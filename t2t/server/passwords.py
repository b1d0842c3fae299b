"""Password hashing with argon2id (libsodium's ``crypto_pwhash``).

The relay stores only the argon2id hash string, which embeds its own salt and
cost parameters, so raising the cost later still verifies old hashes. The
default cost is t=2 passes over m=19 MiB, the minimum that the OWASP Password
Storage Cheat Sheet recommends for argon2id. Hashing takes tens of
milliseconds of CPU, so the relay runs it in worker threads with bounded
concurrency and never on the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import nacl.exceptions
import nacl.pwhash

MIB: Final = 1024 * 1024
DEFAULT_OPSLIMIT: Final = 2
DEFAULT_MEMLIMIT: Final = 19 * MIB
# Upper bounds: a hash runs shielded from cancellation, so a cost far above
# libsodium's "sensitive" level (4 passes, 1 GiB) would stall logins and
# shutdown for minutes.
MAX_OPSLIMIT: Final = 10
MAX_MEMLIMIT: Final = 1024 * MIB


@dataclass(frozen=True, slots=True)
class HashCost:
    """argon2id cost: ``opslimit`` passes over ``memlimit`` bytes of memory."""

    opslimit: int = DEFAULT_OPSLIMIT
    memlimit: int = DEFAULT_MEMLIMIT

    def __post_init__(self) -> None:
        low_ops = nacl.pwhash.argon2id.OPSLIMIT_MIN
        if not low_ops <= self.opslimit <= MAX_OPSLIMIT:
            raise ValueError(
                f"argon2id passes (--hash-ops) must be between {low_ops} and {MAX_OPSLIMIT}, "
                f"got {self.opslimit}"
            )
        low_memory = nacl.pwhash.argon2id.MEMLIMIT_MIN
        if not low_memory <= self.memlimit <= MAX_MEMLIMIT:
            raise ValueError(
                f"argon2id memory (--hash-memory) must be between {low_memory // 1024} KiB "
                f"and {MAX_MEMLIMIT // MIB} MiB, got {self.memlimit / MIB:g} MiB"
            )


def hash_password(password: str, cost: HashCost) -> str:
    """Return the argon2id hash string of ``password``. Blocks for the hash time."""
    hashed = nacl.pwhash.argon2id.str(
        password.encode("utf-8"), opslimit=cost.opslimit, memlimit=cost.memlimit
    )
    return hashed.decode("ascii")


def verify_password(password_hash: str, password: str) -> bool:
    """Return whether ``password`` matches ``password_hash``. Blocks for the hash time."""
    try:
        return nacl.pwhash.verify(password_hash.encode("ascii"), password.encode("utf-8"))
    except nacl.exceptions.InvalidkeyError:
        return False
