"""Limits on password logins, so that guessing and floods stay cheap for the relay.

Every password login costs the relay an argon2id hash, tens of milliseconds
of CPU by design. Without limits, anyone who can reach the relay could
guess one account's password at full speed, or keep the hash threads busy
so that nobody else can log in. The guard enforces, per user id:

- one password check at a time (a second concurrent login is refused);
- after ``max_failures`` wrong passwords within ``window`` seconds, further
  attempts are refused without hashing until the window has passed.

The relay shell adds a global bound on queued hashes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

DEFAULT_MAX_FAILURES: Final = 5
DEFAULT_WINDOW: Final = 60.0  # seconds
MAX_TRACKED_USERS: Final = 100_000  # failure records kept before old ones are dropped


@dataclass(slots=True)
class _Failures:
    count: int
    first: float  # Unix time of the first failure in the current window


class LoginGuard:
    """Track password checks in progress and recent failures per user id."""

    def __init__(
        self,
        now: Callable[[], float],
        *,
        max_failures: int = DEFAULT_MAX_FAILURES,
        window: float = DEFAULT_WINDOW,
    ) -> None:
        self._now = now
        self._max_failures = max_failures
        self._window = window
        self._checking: set[str] = set()
        self._failures: dict[str, _Failures] = {}

    def refusal(self, user: str) -> str | None:
        """Return why a password login for ``user`` must be refused now, or None."""
        if user in self._checking:
            return f"another login for user {user!r} is being checked; try again in a moment"
        record = self._failures.get(user)
        if record is None:
            return None
        remaining = record.first + self._window - self._now()
        if remaining <= 0:
            del self._failures[user]
            return None
        if record.count >= self._max_failures:
            return (
                f"too many wrong passwords for user {user!r}; "
                f"try again in {max(1, round(remaining))} s"
            )
        return None

    def started(self, user: str) -> None:
        self._checking.add(user)

    def finished(self, user: str, *, ok: bool) -> None:
        """Record the outcome of a password check that :meth:`started`."""
        self._checking.discard(user)
        if ok:
            self._failures.pop(user, None)
            return
        record = self._failures.get(user)
        now = self._now()
        if record is None or now - record.first >= self._window:
            if len(self._failures) >= MAX_TRACKED_USERS:
                # Forget the oldest record rather than grow without bound.
                del self._failures[next(iter(self._failures))]
            self._failures[user] = _Failures(1, now)
        else:
            record.count += 1

    def abandoned(self, user: str) -> None:
        """Forget a check whose connection closed before it finished."""
        self._checking.discard(user)
