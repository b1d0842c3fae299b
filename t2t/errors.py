"""Exceptions raised by t2t.

Every error derives from :class:`T2TError`. The names say whose fault it
was: a ``Certificate*`` error means the relay cannot be trusted, a
:class:`ProtocolError` means the peer broke the wire protocol (and carries the
WebSocket close code to send), and :class:`ConflictError` means the relay
rejected our login.
"""

from __future__ import annotations

from typing import Final

# WebSocket close codes (RFC 6455, section 7.4.1) used by both sides.
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_POLICY_VIOLATION: Final = 1008
CLOSE_MESSAGE_TOO_BIG: Final = 1009
CLOSE_INTERNAL_ERROR: Final = 1011
CLOSE_TRY_AGAIN_LATER: Final = 1013


class T2TError(Exception):
    """Base class of every exception that t2t raises on purpose."""


class CryptoError(T2TError):
    """A signature, MAC or sealed box failed to verify or open."""


class CertificateError(CryptoError):
    """The relay certificate cannot be trusted. Subclasses say why."""


class UntrustedCertificateError(CertificateError):
    """The certificate was issued by a CA other than the one we trust."""


class TamperedCertificateError(CertificateError):
    """The certificate's CA signature does not verify, so it was altered or forged."""


class CertificateExpiredError(CertificateError):
    """The current time is after the certificate's not-after time."""


class CertificateNotYetValidError(CertificateError):
    """The current time is before the certificate's not-before time."""


class CertificateNameMismatchError(CertificateError):
    """The certificate names a relay other than the one we connected to."""


class KeyFileError(T2TError):
    """A key, certificate or state file is missing, unreadable or malformed."""


def close_details(reason: object) -> tuple[int | None, str]:
    """Return the code and a readable reason from a trio-websocket ``CloseReason`` or None."""
    if reason is None:
        return None, "connection lost without a close frame"
    code = getattr(reason, "code", None)
    text = getattr(reason, "reason", None) or getattr(reason, "name", "") or ""
    return code, str(text)


class ProtocolError(T2TError):
    """The peer sent something the protocol forbids.

    Attributes:
        code: The WebSocket close code that the receiver closes the connection with.
        reason: A short reason, sent in the close frame and logged.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{reason} (close code {code})")
        self.code = code
        self.reason = reason


class ProtocolVersionError(ProtocolError):
    """The two sides speak different protocol versions."""


class ConflictError(T2TError):
    """The relay rejected the login, for example because the password is wrong."""


class SendError(T2TError):
    """The relay refused a message or invite. ``code`` is the relay's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} (relay error {code!r})")
        self.code = code
        self.message = message


class DisconnectedError(T2TError):
    """The connection to the relay is closed.

    Attributes:
        code: The WebSocket close code, or ``None`` if the connection dropped
            without a close frame.
        reason: The close reason given by the relay, or a description of the
            local failure.
    """

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"disconnected from relay: {reason} (close code {code})")
        self.code = code
        self.reason = reason
