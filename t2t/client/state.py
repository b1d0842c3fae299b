"""The client's state folder: its identity key and the group keys it holds.

Both files are secret and written atomically with mode 0600. The group key
file is JSON mapping each group id to its base64 key, so that it can be
backed up and inspected with ordinary tools.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Final

from t2t.crypto.group import GROUP_KEY_SIZE
from t2t.crypto.keys import KeyPair, load_key_pair, save_key_pair, write_file_atomic
from t2t.errors import KeyFileError
from t2t.protocol.client import ResumeToken

IDENTITY_FILE: Final = "identity.key"
GROUP_KEYS_FILE: Final = "group_keys.json"
RESUME_FILE: Final = "resume.json"


def load_or_create_identity(path: Path) -> KeyPair:
    """Load the identity key, or create one (mode 0600) if the file does not exist."""
    if path.exists():
        return load_key_pair(path)
    identity = KeyPair.generate()
    save_key_pair(path, identity)
    return identity


def load_group_keys(path: Path) -> dict[str, bytes]:
    """Read the group key file; a missing file means no groups yet.

    Raises:
        KeyFileError: if the file exists but is not a valid group key file.
            The file is left untouched so that no key is lost.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read group keys: {exc}") from None
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("top level is not an object")
        keys = {str(group): base64.b64decode(value, validate=True) for group, value in raw.items()}
    except (ValueError, TypeError, binascii.Error) as exc:
        raise KeyFileError(
            f"{path}: not a valid group key file ({exc}); fix or move it away, "
            "the client never overwrites it"
        ) from None
    for group, key in keys.items():
        if len(key) != GROUP_KEY_SIZE:
            raise KeyFileError(
                f"{path}: key for group {group!r} is {len(key)} bytes, expected {GROUP_KEY_SIZE}"
            )
    return keys


def save_group_keys(path: Path, keys: dict[str, bytes]) -> None:
    encoded = {group: base64.b64encode(key).decode("ascii") for group, key in sorted(keys.items())}
    write_file_atomic(path, json.dumps(encoded, indent=2, ensure_ascii=False) + "\n", private=True)


def load_resume_tokens(path: Path) -> dict[bytes, ResumeToken]:
    """Read saved resume tokens by relay key; a missing or unreadable file means none.

    Tokens only save a password hash on the relay, so a damaged file is
    ignored (with the password used instead) rather than treated as an error.
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {
            bytes.fromhex(relay): ResumeToken(
                base64.b64decode(entry["token"]), int(entry["expires"])
            )
            for relay, entry in raw.items()
        }
    except (OSError, ValueError, TypeError, KeyError, AttributeError, binascii.Error):
        return {}


def save_resume_tokens(path: Path, tokens: dict[bytes, ResumeToken]) -> None:
    encoded = {
        relay.hex(): {
            "token": base64.b64encode(saved.token).decode("ascii"),
            "expires": saved.expires,
        }
        for relay, saved in tokens.items()
    }
    write_file_atomic(path, json.dumps(encoded, indent=2) + "\n", private=True)
