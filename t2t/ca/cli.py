"""Command-line interface of ``python -m t2t.ca``: init, sign and verify.

Exit status: 0 on success, 1 when ``verify`` rejects the certificate, and 2
for a usage error or a file that is missing, unreadable, malformed or would be
overwritten. Every failure prints one line to stderr and no traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

import msgspec

from t2t.crypto.cert import CertificateBody, issue_certificate, verify_certificate
from t2t.crypto.keys import (
    CERTIFICATE_LABEL,
    KeyPair,
    PublicIdentity,
    fingerprint,
    load_key_pair,
    load_public_identity,
    read_armored,
    save_key_pair,
    save_public_identity,
    write_armored,
)
from t2t.errors import (
    CertificateError,
    CertificateExpiredError,
    CertificateNameMismatchError,
    CertificateNotYetValidError,
    KeyFileError,
    TamperedCertificateError,
    UntrustedCertificateError,
)
from t2t.frames import MAX_NAME_LENGTH, Name

PROG: Final = "python -m t2t.ca"
CA_KEY_FILE: Final = "ca.key"
CA_PUBLIC_FILE: Final = "ca.pub"
DEFAULT_CERTIFICATE_FILE: Final = "relay.cert"
# 100 years. A longer window only delays the rotation that a leaked relay key
# needs, and dates past the year 9999 cannot be printed.
MAX_DAYS: Final = 36500

EXIT_OK: Final = 0
EXIT_REJECTED: Final = 1
EXIT_USAGE: Final = 2

# Short names for each rejection reason, printed as "FAIL (<kind>)".
_REJECTION_KINDS: Final[tuple[tuple[type[CertificateError], str], ...]] = (
    (UntrustedCertificateError, "untrusted"),
    (TamperedCertificateError, "tampered"),
    (CertificateExpiredError, "expired"),
    (CertificateNotYetValidError, "not yet valid"),
    (CertificateNameMismatchError, "name mismatch"),
)

_Loaded = TypeVar("_Loaded")


class _CommandError(Exception):
    """A failure the user can fix. :func:`main` prints it and returns status 2."""


# Argument types -----------------------------------------------------------


def _parse_days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid number of days {text!r}; pass a whole number such as 365"
        ) from None
    if days < 1:
        raise argparse.ArgumentTypeError(
            f"must be positive, got {days}; pass a whole number from 1 to {MAX_DAYS}"
        )
    if days > MAX_DAYS:
        raise argparse.ArgumentTypeError(
            f"must be at most {MAX_DAYS} (100 years), got {days}; sign for a shorter period"
        )
    return days


def _parse_relay_name(text: str) -> str:
    # The same constraint that clients apply when they decode a certificate.
    try:
        return msgspec.convert(text, Name)
    except msgspec.ValidationError:
        raise argparse.ArgumentTypeError(
            f"invalid relay name {text!r}; use 1 to {MAX_NAME_LENGTH} characters "
            "without whitespace or control characters"
        ) from None


# Parser -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with the init, sign and verify subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Manage the certificate authority (CA) that vouches for t2t relays. "
            "Clients hold the CA public key and trust a relay only if its "
            "certificate verifies against it."
        ),
        epilog=(
            "exit status: 0 on success, 1 if verify rejects the certificate, "
            "2 for a usage error or a missing, unreadable or malformed file"
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = commands.add_parser(
        "init",
        help="create a new CA key pair",
        description=(
            f"Create a new CA key pair: {CA_KEY_FILE} (private, mode 0600) and "
            f"{CA_PUBLIC_FILE} (public, for clients). Prints the CA fingerprint."
        ),
    )
    init.add_argument(
        "--dir",
        type=Path,
        default=Path("."),
        help="folder to write the key files into, created if missing (default: current folder)",
    )
    init.add_argument(
        "--force",
        action="store_true",
        help=(
            f"replace an existing {CA_KEY_FILE}. The old key is lost, and certificates "
            "it signed no longer verify against the new public key"
        ),
    )

    sign = commands.add_parser(
        "sign",
        help="issue a certificate for a relay's public key",
        description=(
            "Issue a certificate that binds a relay's public key to its name. "
            "It is valid from one minute before now until --days days later."
        ),
    )
    sign.add_argument(
        "relay_public",
        type=Path,
        metavar="RELAY_PUBLIC_FILE",
        help="the relay's public key file (an armored T2T PUBLIC KEY block)",
    )
    sign.add_argument(
        "--name",
        required=True,
        type=_parse_relay_name,
        help=(
            f"relay name that clients expect, 1 to {MAX_NAME_LENGTH} characters without whitespace"
        ),
    )
    sign.add_argument(
        "--days",
        required=True,
        type=_parse_days,
        metavar="N",
        help=f"validity period in days from now, a whole number from 1 to {MAX_DAYS}",
    )
    sign.add_argument(
        "--ca-key",
        type=Path,
        default=Path(CA_KEY_FILE),
        metavar="PATH",
        help=f"CA private key file written by init (default: {CA_KEY_FILE})",
    )
    sign.add_argument(
        "--out",
        type=Path,
        default=Path(DEFAULT_CERTIFICATE_FILE),
        metavar="PATH",
        help=(
            "certificate file to write, replaced if it exists "
            f"(default: {DEFAULT_CERTIFICATE_FILE})"
        ),
    )

    verify = commands.add_parser(
        "verify",
        help="check a certificate as a client would",
        description=(
            "Check a certificate against a CA public key and the current time. "
            "Prints OK and the certificate's fields, or the reason for rejecting it."
        ),
    )
    verify.add_argument(
        "certificate",
        type=Path,
        metavar="CERT",
        help="certificate file written by sign (an armored T2T CERTIFICATE block)",
    )
    verify.add_argument(
        "--ca",
        required=True,
        type=Path,
        metavar="ROOT_PUBLIC",
        help=f"trusted CA public key file ({CA_PUBLIC_FILE} written by init)",
    )
    verify.add_argument(
        "--name",
        type=_parse_relay_name,
        default=None,
        help="relay name the certificate must contain (default: accept any name)",
    )
    return parser


# File helpers -------------------------------------------------------------


def _load(loader: Callable[[Path], _Loaded], path: Path, fix: str) -> _Loaded:
    """Call ``loader(path)`` and turn a KeyFileError into a message that ends with ``fix``."""
    try:
        return loader(path)
    except KeyFileError as exc:
        message = str(exc)
    # Some KeyFileError messages already end with a question such as "is this
    # the right file?". The fix then follows as a sentence of its own.
    if message.endswith("?"):
        raise _CommandError(f"{message} {fix[0].upper()}{fix[1:]}")
    raise _CommandError(f"{message}; {fix}")


def _write(path: Path, save: Callable[[Path], None]) -> None:
    try:
        save(path)
    except OSError as exc:
        raise _CommandError(
            f"{path}: cannot write file: {exc.strerror or exc}; "
            "check that the folder is writable and the path is not a folder"
        ) from None


def _format_utc(timestamp: int) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))
    except (OverflowError, OSError, ValueError):
        return f"Unix time {timestamp}"


def _print_certificate(body: CertificateBody) -> None:
    print(f"name: {body.name}")
    print(f"valid from: {_format_utc(body.not_before)}")
    print(f"valid until: {_format_utc(body.not_after)}")
    print(f"relay fingerprint: {fingerprint(body.sign_key)}")
    print(f"CA fingerprint: {fingerprint(body.issuer)}")


def _rejection_kind(error: CertificateError) -> str:
    for error_type, kind in _REJECTION_KINDS:
        if isinstance(error, error_type):
            return kind
    return "rejected"


# Subcommands --------------------------------------------------------------


def run_init(directory: Path, *, force: bool) -> int:
    """Create ``ca.key`` and ``ca.pub`` in ``directory`` and print their paths."""
    if directory.exists() and not directory.is_dir():
        raise _CommandError(f"{directory}: not a folder; pass --dir with a folder path")
    key_path = directory / CA_KEY_FILE
    public_path = directory / CA_PUBLIC_FILE
    if (key_path.exists() or key_path.is_symlink()) and not force:
        raise _CommandError(
            f"{key_path}: file already exists; pass --force to replace it "
            "(certificates signed with the old key then stop verifying)"
        )

    pair = KeyPair.generate()
    # The public file goes first. If writing the private key then fails, an
    # existing ca.key is untouched and a rerun without --force still works
    # when there was none.
    _write(public_path, lambda path: save_public_identity(path, pair.public))
    _write(key_path, lambda path: save_key_pair(path, pair))

    print(f"CA private key: {key_path} (mode 0600, keep it secret)")
    print(f"CA public key: {public_path} (give it to every client)")
    print(f"CA fingerprint: {pair.public.fingerprint()}")
    return EXIT_OK


def run_sign(relay_public: Path, *, name: str, days: int, ca_key: Path, out: Path) -> int:
    """Issue a certificate for the relay key in ``relay_public`` and write it to ``out``."""
    relay: PublicIdentity = _load(
        load_public_identity,
        relay_public,
        "pass the relay's public key file, not its private key or a certificate",
    )
    ca: KeyPair = _load(
        load_key_pair,
        ca_key,
        f"pass the CA private key with --ca-key, or create one with '{PROG} init'",
    )
    try:
        certificate = issue_certificate(ca, relay, name, days=days)
    except ValueError as exc:
        raise _CommandError(f"cannot issue a certificate for {name!r}: {exc}") from None
    _write(out, lambda path: write_armored(path, CERTIFICATE_LABEL, certificate, private=False))

    # Decode what was written, so the printed fields are the certificate's own.
    body = verify_certificate(certificate, ca.public.sign_key, expected_name=name)
    print(f"certificate: {out}")
    _print_certificate(body)
    return EXIT_OK


def run_verify(certificate_path: Path, *, ca_public: Path, name: str | None) -> int:
    """Verify a certificate file. Return 0 if it is valid now and 1 if it is not."""
    ca: PublicIdentity = _load(
        load_public_identity,
        ca_public,
        f"pass the CA public key ({CA_PUBLIC_FILE}) written by '{PROG} init' with --ca",
    )
    data: bytes = _load(
        lambda path: read_armored(path, CERTIFICATE_LABEL),
        certificate_path,
        f"pass a certificate file written by '{PROG} sign'",
    )
    try:
        body = verify_certificate(data, ca.sign_key, expected_name=name)
    except CertificateError as exc:
        print(f"FAIL ({_rejection_kind(exc)}): {certificate_path}: {exc}", file=sys.stderr)
        return EXIT_REJECTED

    print("OK")
    _print_certificate(body)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run the CA tool on ``argv`` (``sys.argv[1:]`` by default) and return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse exits with 0 after --help and with 2 after a usage error.
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE

    try:
        if args.command == "init":
            return run_init(Path(args.dir), force=bool(args.force))
        if args.command == "sign":
            return run_sign(
                Path(args.relay_public),
                name=str(args.name),
                days=int(args.days),
                ca_key=Path(args.ca_key),
                out=Path(args.out),
            )
        return run_verify(
            Path(args.certificate),
            ca_public=Path(args.ca),
            name=None if args.name is None else str(args.name),
        )
    except _CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
