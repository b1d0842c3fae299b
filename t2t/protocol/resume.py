"""Resume tokens: let a returning client skip the password hash.

argon2id makes every password login cost tens of milliseconds of CPU on the
relay, on purpose. A client that reconnects (after a network drop, or many
clients after a relay restart) can instead present the token from its last
welcome. A token is useful only together with the identity key it was issued
to, because the login that carries it must also be signed by that key over a
fresh challenge; a stolen token file alone does not log anyone in.

Tokens live only in the relay's memory, so a relay restart invalidates them
and clients fall back to their password. Each token is single-use: a
successful resume issues a new one.

The login still carries the password, and a token is accepted only with the
password it was issued with, compared through an HMAC under a key that
exists only in this relay process. So a wrong password fails as before (it
falls through to the argon2id check), and nothing that leaves the relay
helps anyone guess passwords faster than argon2id allows.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

TOKEN_SIZE: Final = 32  # bytes


@dataclass(frozen=True, slots=True)
class _Issued:
    digest: bytes  # SHA-256 of the token: the relay keeps no usable copy
    sign_key: bytes  # the identity key the token is bound to
    password_mac: bytes  # HMAC of token and password under this process's key
    expires: float  # Unix time


class ResumeTokens:
    """Issue and check resume tokens, one live token per user.

    Args:
        ttl: Token lifetime in seconds; 0 disables resume tokens.
        now: Clock returning Unix time, replaceable in tests.
    """

    def __init__(self, ttl: float, now: Callable[[], float]) -> None:
        if ttl < 0:
            raise ValueError(f"resume token lifetime must not be negative, got {ttl}")
        self._ttl = ttl
        self._now = now
        self._issued: dict[str, _Issued] = {}
        self._mac_key = secrets.token_bytes(32)

    def _password_mac(self, token: bytes, password: str) -> bytes:
        return hmac.new(self._mac_key, token + password.encode("utf-8"), hashlib.sha256).digest()

    def issue(self, user: str, sign_key: bytes, password: str) -> tuple[bytes, int]:
        """Return a new token for ``user`` and its expiry time, replacing any older one.

        Returns ``(b"", 0)`` when tokens are disabled.
        """
        if self._ttl == 0:
            return b"", 0
        token = secrets.token_bytes(TOKEN_SIZE)
        expires = self._now() + self._ttl
        self._issued[user] = _Issued(
            hashlib.sha256(token).digest(),
            sign_key,
            self._password_mac(token, password),
            expires,
        )
        return token, int(expires)

    def redeem(self, user: str, token: bytes, sign_key: bytes, password: str) -> bool:
        """Consume ``token``; return whether it is valid for this user, key and password."""
        issued = self._issued.get(user)
        if issued is None or not token:
            return False
        digest = hashlib.sha256(token).digest()
        if not hmac.compare_digest(digest, issued.digest):
            return False
        del self._issued[user]
        password_ok = hmac.compare_digest(self._password_mac(token, password), issued.password_mac)
        return password_ok and issued.sign_key == sign_key and self._now() < issued.expires
