"""Relay certificates: a CA's Ed25519 signature over the relay's keys and name.

This replaces X.509 with a structure small enough to audit. A certificate
binds the relay's two public keys to a name and a validity window, and names
the CA key that signed it. Clients hold the CA public key out of band and
call :func:`verify_certificate` before they send any credentials.
"""

from __future__ import annotations

import time
from typing import Annotated, Final

import msgspec
from msgspec import Meta

from t2t.crypto.keys import KeyPair, PublicIdentity, fingerprint, verify_signature
from t2t.errors import (
    CertificateExpiredError,
    CertificateNameMismatchError,
    CertificateNotYetValidError,
    TamperedCertificateError,
    UntrustedCertificateError,
)
from t2t.frames import Name, PublicKey, Signature

CERTIFICATE_VERSION: Final = 1
MAX_CERTIFICATE_DAYS: Final = 36500  # keeps not_after far inside MessagePack's int64
# Domain separation: a certificate signature can never be mistaken for any
# other signature made with the same CA key.
_CERT_DOMAIN: Final = b"t2t/v1/certificate\x00"


class CertificateBody(msgspec.Struct, array_like=True, forbid_unknown_fields=True, frozen=True):
    """Certificate contents that the CA signs. Times are Unix seconds."""

    version: int
    name: Name
    sign_key: PublicKey
    box_key: PublicKey
    not_before: int
    not_after: int
    issuer: PublicKey  # the CA's Ed25519 public key


class Certificate(msgspec.Struct, array_like=True, forbid_unknown_fields=True, frozen=True):
    """An encoded :class:`CertificateBody` and the CA's signature over it."""

    body: Annotated[bytes, Meta(min_length=1)]
    signature: Signature


_encoder: Final = msgspec.msgpack.Encoder()
_certificate_decoder: Final = msgspec.msgpack.Decoder(Certificate)
_body_decoder: Final = msgspec.msgpack.Decoder(CertificateBody)


def issue_certificate(
    ca: KeyPair,
    relay: PublicIdentity,
    name: str,
    *,
    days: float,
    now: float | None = None,
) -> bytes:
    """Sign a certificate for ``relay`` and return its encoded bytes.

    The certificate is valid from one minute before ``now`` (to tolerate
    small clock differences between relay and clients) until ``days`` later.

    Raises:
        ValueError: if ``days`` is not positive or ``name`` is not a valid name.
    """
    if not 0 < days <= MAX_CERTIFICATE_DAYS:
        raise ValueError(f"days must be between 1 and {MAX_CERTIFICATE_DAYS}, got {days}")
    issued = time.time() if now is None else now
    body = CertificateBody(
        version=CERTIFICATE_VERSION,
        name=name,
        sign_key=relay.sign_key,
        box_key=relay.box_key,
        not_before=int(issued) - 60,
        not_after=int(issued + days * 86400),
        issuer=ca.public.sign_key,
    )
    # Round-trip through the decoder so the name constraint is enforced here
    # and not first by a client.
    try:
        encoded = _encoder.encode(_body_decoder.decode(_encoder.encode(body)))
    except msgspec.ValidationError as exc:
        raise ValueError(f"invalid certificate field: {exc}") from None
    return _encoder.encode(Certificate(encoded, ca.sign(_CERT_DOMAIN + encoded)))


def verify_certificate(
    data: bytes,
    ca_key: bytes,
    *,
    expected_name: str | None,
    now: float | None = None,
) -> CertificateBody:
    """Check a certificate against a trusted CA key and return its body.

    Args:
        data: The encoded certificate.
        ca_key: The trusted CA's Ed25519 public key.
        expected_name: The relay name the caller intended to reach, or
            ``None`` to skip the name check (only the CA tool does this).
        now: The current Unix time; the system clock by default.

    Raises:
        UntrustedCertificateError: another CA issued it.
        TamperedCertificateError: it does not decode, or the CA signature
            does not verify.
        CertificateNotYetValidError: ``now`` is before not-before.
        CertificateExpiredError: ``now`` is after not-after.
        CertificateNameMismatchError: it names another relay.
    """
    try:
        cert = _certificate_decoder.decode(data)
        body = _body_decoder.decode(cert.body)
    except msgspec.DecodeError as exc:
        raise TamperedCertificateError(f"certificate does not decode: {exc}") from None

    if body.issuer != ca_key:
        raise UntrustedCertificateError(
            f"certificate was issued by CA {fingerprint(body.issuer)}, "
            f"but the trusted CA is {fingerprint(ca_key)}; pass the right CA file"
        )
    if not verify_signature(ca_key, _CERT_DOMAIN + cert.body, cert.signature):
        raise TamperedCertificateError(
            "certificate signature does not verify against the trusted CA; "
            "it was altered after signing"
        )
    if body.version != CERTIFICATE_VERSION:
        raise TamperedCertificateError(f"unsupported certificate version {body.version}")

    current = time.time() if now is None else now
    if current < body.not_before:
        raise CertificateNotYetValidError(
            f"certificate for {body.name!r} is not valid until {_utc(body.not_before)}; "
            "check the clock on this machine"
        )
    if current > body.not_after:
        raise CertificateExpiredError(
            f"certificate for {body.name!r} expired at {_utc(body.not_after)}; "
            "sign a new one with 'python -m t2t.ca sign'"
        )
    if expected_name is not None and body.name != expected_name:
        raise CertificateNameMismatchError(
            f"certificate is for relay {body.name!r}, but we expected {expected_name!r}; "
            "pass relay_name= or connect to the right address"
        )
    return body


def _utc(timestamp: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))
