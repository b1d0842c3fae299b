"""Key pairs and the armored files that store keys and certificates.

A :class:`KeyPair` is an Ed25519 signing key plus the X25519 key derived
from it (libsodium's ``crypto_sign_ed25519_sk_to_curve25519``). The Ed25519
half signs; the X25519 half opens sealed boxes. Deriving one from the other
means a single public identity (both public keys) can be checked for
consistency by anyone.

Files are PEM-style: a ``-----BEGIN T2T …-----`` line, base64, and an
``-----END …-----`` line. Private key files are created with mode 0600 and
written atomically, so a crash never leaves a half-written key behind.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.signing

from t2t.errors import CryptoError, KeyFileError
from t2t.frames import KEY_SIZE

PRIVATE_KEY_LABEL: Final = "T2T PRIVATE KEY"
PUBLIC_KEY_LABEL: Final = "T2T PUBLIC KEY"
CERTIFICATE_LABEL: Final = "T2T CERTIFICATE"
PRIVATE_FILE_MODE: Final = 0o600


@dataclass(frozen=True, slots=True)
class PublicIdentity:
    """The two public keys of a :class:`KeyPair`."""

    sign_key: bytes  # Ed25519 verify key, 32 bytes
    box_key: bytes  # X25519 public key, 32 bytes

    def __post_init__(self) -> None:
        if len(self.sign_key) != KEY_SIZE or len(self.box_key) != KEY_SIZE:
            raise CryptoError(
                f"public keys must be {KEY_SIZE} bytes each, "
                f"got {len(self.sign_key)} and {len(self.box_key)}"
            )

    @classmethod
    def from_sign_key(cls, sign_key: bytes) -> PublicIdentity:
        """Build the identity whose X25519 key is derived from ``sign_key``.

        Raises:
            CryptoError: if ``sign_key`` is not a valid Ed25519 public key.
        """
        try:
            box_key = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(sign_key)
        except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
            raise CryptoError(f"invalid Ed25519 public key: {exc}") from None
        return cls(sign_key, box_key)

    def is_consistent(self) -> bool:
        """Return whether ``box_key`` is the X25519 counterpart of ``sign_key``."""
        try:
            return PublicIdentity.from_sign_key(self.sign_key).box_key == self.box_key
        except CryptoError:
            return False

    def fingerprint(self) -> str:
        """Return a short hex digest of the signing key, for logs and prompts."""
        return fingerprint(self.sign_key)

    def to_bytes(self) -> bytes:
        return self.sign_key + self.box_key

    @classmethod
    def from_bytes(cls, data: bytes) -> PublicIdentity:
        if len(data) != 2 * KEY_SIZE:
            raise CryptoError(f"a public identity is {2 * KEY_SIZE} bytes, got {len(data)}")
        return cls(data[:KEY_SIZE], data[KEY_SIZE:])


class KeyPair:
    """An Ed25519 signing key and its X25519 counterpart.

    Never log or print a KeyPair's private halves: ``repr`` shows only the
    public fingerprint.
    """

    __slots__ = ("box", "public", "signing")

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        self.signing = signing_key
        self.box = signing_key.to_curve25519_private_key()
        self.public = PublicIdentity(bytes(signing_key.verify_key), bytes(self.box.public_key))

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(nacl.signing.SigningKey.generate())

    def sign(self, message: bytes) -> bytes:
        """Return the detached 64-byte Ed25519 signature of ``message``."""
        return self.signing.sign(message).signature

    def to_bytes(self) -> bytes:
        """Return the private key material: the Ed25519 seed then the X25519 key."""
        return bytes(self.signing) + bytes(self.box)

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyPair:
        """Load a key pair written by :meth:`to_bytes`.

        Raises:
            CryptoError: if the length is wrong or the X25519 half does not
                match the Ed25519 seed, which means the file is corrupt.
        """
        if len(data) != 2 * KEY_SIZE:
            raise CryptoError(f"a private key is {2 * KEY_SIZE} bytes, got {len(data)}")
        pair = cls(nacl.signing.SigningKey(data[:KEY_SIZE]))
        if bytes(pair.box) != data[KEY_SIZE:]:
            raise CryptoError("the X25519 key does not match the Ed25519 seed")
        return pair

    def __repr__(self) -> str:
        return f"KeyPair(fingerprint={self.public.fingerprint()!r})"


def verify_signature(sign_key: bytes, message: bytes, signature: bytes) -> bool:
    """Return whether ``signature`` is a valid Ed25519 signature of ``message``."""
    try:
        nacl.signing.VerifyKey(sign_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        return False
    return True


def fingerprint(sign_key: bytes) -> str:
    """Return the first 16 hex digits of SHA-256 over a public key."""
    return hashlib.sha256(sign_key).hexdigest()[:16]


# Armored files ------------------------------------------------------------


def armor(label: str, data: bytes) -> str:
    body = base64.encodebytes(data).decode("ascii")
    return f"-----BEGIN {label}-----\n{body}-----END {label}-----\n"


def dearmor(label: str, text: str, *, source: str = "<string>") -> bytes:
    """Return the bytes inside an armored block.

    Raises:
        KeyFileError: naming ``source`` if the block is missing or not base64.
    """
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    start = text.find(begin)
    stop = text.find(end)
    if start < 0 or stop < start:
        raise KeyFileError(f"{source}: no '{begin}' block found; is this the right file?")
    payload = text[start + len(begin) : stop]
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except binascii.Error as exc:
        raise KeyFileError(f"{source}: the {label} block is not valid base64: {exc}") from None


def read_armored(path: Path, label: str) -> bytes:
    """Read an armored file.

    Raises:
        KeyFileError: if the file is missing, unreadable or malformed.
    """
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise KeyFileError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: cannot read file: {exc}") from None
    return dearmor(label, text, source=str(path))


def write_armored(path: Path, label: str, data: bytes, *, private: bool) -> None:
    """Write an armored file atomically. Private files get mode 0600."""
    write_file_atomic(path, armor(label, data), private=private)


def write_file_atomic(path: Path, text: str, *, private: bool) -> None:
    """Write a text file atomically; private files get mode 0600.

    The text goes to a temporary file in the same folder, which is flushed to
    disk and then renamed over ``path``, so readers see the old file or the
    new one and never a partial write.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = PRIVATE_FILE_MODE if private else 0o644
    # mkstemp creates the file with O_EXCL and mode 0600 under an
    # unpredictable name, so no other process can pre-create or symlink it
    # and the secret is never readable by others, even before the rename.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_directory(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _fsync_directory(folder: Path) -> None:
    """Flush a folder entry so that a rename inside it survives a crash."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_key_pair(path: Path) -> KeyPair:
    """Load a private key file.

    Raises:
        KeyFileError: if the file is missing, malformed or corrupt.
    """
    data = read_armored(path, PRIVATE_KEY_LABEL)
    try:
        return KeyPair.from_bytes(data)
    except CryptoError as exc:
        raise KeyFileError(f"{path}: corrupt private key: {exc}") from None


def save_key_pair(path: Path, pair: KeyPair) -> None:
    write_armored(path, PRIVATE_KEY_LABEL, pair.to_bytes(), private=True)


def load_public_identity(path: Path) -> PublicIdentity:
    """Load a public key file written by :func:`save_public_identity`.

    Raises:
        KeyFileError: if the file is missing, malformed or inconsistent.
    """
    data = read_armored(path, PUBLIC_KEY_LABEL)
    try:
        identity = PublicIdentity.from_bytes(data)
    except CryptoError as exc:
        raise KeyFileError(f"{path}: invalid public key: {exc}") from None
    if not identity.is_consistent():
        raise KeyFileError(f"{path}: the X25519 key does not match the Ed25519 key")
    return identity


def save_public_identity(path: Path, identity: PublicIdentity) -> None:
    write_armored(path, PUBLIC_KEY_LABEL, identity.to_bytes(), private=False)
