"""t2t: end-to-end encrypted group messaging over a relay, built on trio.

Start with :func:`connect`; run a relay with ``python -m t2t.server``.
"""

from t2t._version import __version__
from t2t.client.connect import connect
from t2t.client.connection import Client
from t2t.errors import (
    CertificateError,
    CertificateExpiredError,
    CertificateNameMismatchError,
    CertificateNotYetValidError,
    ConflictError,
    CryptoError,
    DisconnectedError,
    KeyFileError,
    ProtocolError,
    ProtocolVersionError,
    SendError,
    T2TError,
    TamperedCertificateError,
    UntrustedCertificateError,
)
from t2t.events import (
    ClientEvent,
    Conflict,
    Disconnected,
    Event,
    InviteReceived,
    MessageReceived,
    MessageRejected,
    RosterChanged,
)

__all__ = [
    "CertificateError",
    "CertificateExpiredError",
    "CertificateNameMismatchError",
    "CertificateNotYetValidError",
    "Client",
    "ClientEvent",
    "Conflict",
    "ConflictError",
    "CryptoError",
    "Disconnected",
    "DisconnectedError",
    "Event",
    "InviteReceived",
    "KeyFileError",
    "MessageReceived",
    "MessageRejected",
    "ProtocolError",
    "ProtocolVersionError",
    "RosterChanged",
    "SendError",
    "T2TError",
    "TamperedCertificateError",
    "UntrustedCertificateError",
    "__version__",
    "connect",
]
