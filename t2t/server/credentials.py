"""Loading the relay's key and certificate, or creating a development CA.

Two ways to run a relay:

- Production: ``--cert`` names a certificate signed by your own CA with
  ``python -m t2t.ca sign``. The relay checks it matches its key and is
  within its validity window before it listens.
- Development (no ``--cert``): the relay creates a CA and a certificate for
  itself in its data folder on first start, and reuses them afterwards. Anyone
  who can read that folder can impersonate the relay, which is why the relay
  logs a warning naming the CA file to give clients.
"""

from __future__ import annotations

import logging
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from t2t.crypto.cert import Certificate, CertificateBody, issue_certificate, verify_certificate
from t2t.crypto.keys import (
    CERTIFICATE_LABEL,
    KeyPair,
    load_key_pair,
    load_public_identity,
    read_armored,
    save_key_pair,
    save_public_identity,
    write_armored,
)
from t2t.errors import CertificateError, KeyFileError

log = logging.getLogger("t2t.relay")

DEV_CA_DIR: Final = "dev-ca"
DEV_CERT_DAYS: Final = 365
RENEW_BEFORE: Final = (
    7 * 86400
)  # reissue a development certificate this close to expiry, in seconds


class SetupError(Exception):
    """The relay cannot start with the given key and certificate files."""


@dataclass(frozen=True, slots=True)
class Credentials:
    key: KeyPair
    certificate: bytes
    body: CertificateBody
    ca_public_file: Path | None  # set in development mode: the file clients need


def load_or_create_key(path: Path) -> tuple[KeyPair, bool]:
    """Load the relay key, or create it (mode 0600) with its public file beside it.

    Returns:
        The key pair and whether it was created now.
    """
    if path.exists():
        return load_key_pair(path), False
    key = KeyPair.generate()
    save_key_pair(path, key)
    save_public_identity(public_file_for(path), key.public)
    log.info("created relay key %s", path)
    return key, True


def public_file_for(key_path: Path) -> Path:
    return key_path.with_suffix(".pub")


def _decode_certificate(data: bytes, source: Path) -> CertificateBody:
    try:
        cert = msgspec.msgpack.decode(data, type=Certificate)
        return msgspec.msgpack.decode(cert.body, type=CertificateBody)
    except msgspec.DecodeError as exc:
        raise SetupError(f"{source}: not a t2t certificate: {exc}") from None


def load_production(cert_path: Path, key_path: Path, ca_path: Path | None) -> Credentials:
    """Load a CA-signed certificate and the key it names.

    Raises:
        SetupError: if the key was just created (the message holds the exact
            signing command), or the certificate is missing, invalid, expired,
            not yet valid, or names another key.
    """
    key, created = load_or_create_key(key_path)
    if created or not cert_path.exists():
        command = shlex.join(
            [
                "python",
                "-m",
                "t2t.ca",
                "sign",
                str(public_file_for(key_path)),
                "--name",
                "RELAY_NAME",
                "--days",
                "365",
                "--out",
                str(cert_path),
            ]
        )
        raise SetupError(
            f"certificate {cert_path} not found. Sign the relay key with your CA, then start "
            f"the relay again:\n    {command}\n"
            "(replace RELAY_NAME with the name clients connect to)"
        )
    try:
        data = read_armored(cert_path, CERTIFICATE_LABEL)
    except KeyFileError as exc:
        raise SetupError(str(exc)) from None
    body = _decode_certificate(data, cert_path)
    if body.sign_key != key.public.sign_key or body.box_key != key.public.box_key:
        raise SetupError(
            f"{cert_path} certifies another key than {key_path} "
            f"({key.public.fingerprint()}); sign {public_file_for(key_path)} again"
        )
    if ca_path is not None:
        try:
            ca = load_public_identity(ca_path)
            verify_certificate(data, ca.sign_key, expected_name=None)
        except (KeyFileError, CertificateError) as exc:
            raise SetupError(f"{cert_path}: {exc}") from None
    now = time.time()
    if now > body.not_after:
        raise SetupError(f"{cert_path} expired at {_utc(body.not_after)}; sign a new certificate")
    if now < body.not_before:
        raise SetupError(f"{cert_path} is not valid until {_utc(body.not_before)}; check the clock")
    return Credentials(key, data, body, None)


def load_development(data_dir: Path, key_path: Path, name: str) -> Credentials:
    """Create or reuse a development CA and relay certificate under ``data_dir``."""
    ca_dir = data_dir / DEV_CA_DIR
    ca_key_path, ca_public_path = ca_dir / "ca.key", ca_dir / "ca.pub"
    cert_path = data_dir / "relay.cert"
    if ca_key_path.exists():
        ca = load_key_pair(ca_key_path)
    else:
        ca = KeyPair.generate()
        save_key_pair(ca_key_path, ca)
        save_public_identity(ca_public_path, ca.public)
    key, _ = load_or_create_key(key_path)

    body: CertificateBody | None = None
    if cert_path.exists():
        data = read_armored(cert_path, CERTIFICATE_LABEL)
        body = _decode_certificate(data, cert_path)
        stale = (
            body.name != name
            or body.sign_key != key.public.sign_key
            or body.issuer != ca.public.sign_key
            or body.not_after - time.time() < RENEW_BEFORE
        )
        if stale:
            body = None
    if body is None:
        data = issue_certificate(ca, key.public, name, days=DEV_CERT_DAYS)
        write_armored(cert_path, CERTIFICATE_LABEL, data, private=False)
        body = _decode_certificate(data, cert_path)
        log.info("issued development certificate %s for name=%r", cert_path, name)
    return Credentials(key, data, body, ca_public_path)


def _utc(timestamp: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))
