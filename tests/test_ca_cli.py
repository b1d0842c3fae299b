"""Tests for ``python -m t2t.ca``, mostly run in-process through ``main``.

Rules under test:

- ``init`` writes ca.key with mode 0600 and ca.pub, and never replaces an
  existing ca.key unless ``--force`` is given.
- ``sign`` writes a certificate that verifies against the CA for the given
  name and number of days, and rejects a non-positive ``--days``.
- ``verify`` prints OK and exits 0 for a valid certificate, and prints the
  kind of rejection and the reason to stderr and exits 1 otherwise.
- A missing, mislabelled or corrupt file prints ``error: <path>: ...`` with a
  fix and exits 2, never with a traceback. Usage errors also exit 2.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from t2t.ca import main
from t2t.crypto.cert import issue_certificate, verify_certificate
from t2t.crypto.keys import (
    CERTIFICATE_LABEL,
    KeyPair,
    load_key_pair,
    load_public_identity,
    read_armored,
    save_public_identity,
    write_armored,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DAY = 86400


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    """A folder with ca.key and ca.pub written by ``init``."""
    assert main(["init", "--dir", str(tmp_path)]) == 0
    return tmp_path


@pytest.fixture
def relay_public(tmp_path: Path) -> Path:
    """A relay public key file, as the relay writes it."""
    path = tmp_path / "relay.pub"
    save_public_identity(path, KeyPair.generate().public)
    return path


def sign(ca_dir: Path, relay_public: Path, *extra: str) -> int:
    return main(
        [
            "sign",
            str(relay_public),
            "--name",
            "relay1",
            "--days",
            "30",
            "--ca-key",
            str(ca_dir / "ca.key"),
            "--out",
            str(ca_dir / "relay.cert"),
            *extra,
        ]
    )


def verify(ca_dir: Path, *extra: str) -> int:
    return main(["verify", str(ca_dir / "relay.cert"), "--ca", str(ca_dir / "ca.pub"), *extra])


# init -----------------------------------------------------------------------


def test_init_writes_key_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["init", "--dir", str(tmp_path)]) == 0

    pair = load_key_pair(tmp_path / "ca.key")
    output = capsys.readouterr().out
    assert load_public_identity(tmp_path / "ca.pub") == pair.public
    assert str(tmp_path / "ca.key") in output
    assert str(tmp_path / "ca.pub") in output
    assert pair.public.fingerprint() in output


def test_init_key_mode_0600(tmp_path: Path):
    assert main(["init", "--dir", str(tmp_path)]) == 0

    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600


def test_init_default_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)

    assert main(["init"]) == 0
    assert (tmp_path / "ca.key").is_file()
    assert (tmp_path / "ca.pub").is_file()


def test_init_creates_dir(tmp_path: Path):
    target = tmp_path / "new" / "ca"

    assert main(["init", "--dir", str(target)]) == 0
    assert (target / "ca.key").is_file()


def test_init_keeps_existing_key(ca_dir: Path, capsys: pytest.CaptureFixture[str]):
    key_path = ca_dir / "ca.key"
    before = key_path.read_bytes()
    capsys.readouterr()

    assert main(["init", "--dir", str(ca_dir)]) == 2

    error = capsys.readouterr().err
    assert str(key_path) in error
    assert "--force" in error
    assert "Traceback" not in error
    assert key_path.read_bytes() == before


def test_init_force_replaces_key(ca_dir: Path):
    key_path = ca_dir / "ca.key"
    before = key_path.read_bytes()

    assert main(["init", "--dir", str(ca_dir), "--force"]) == 0

    assert key_path.read_bytes() != before
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert load_public_identity(ca_dir / "ca.pub") == load_key_pair(key_path).public


def test_init_dir_is_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")

    assert main(["init", "--dir", str(not_a_dir)]) == 2
    assert str(not_a_dir) in capsys.readouterr().err


# sign -----------------------------------------------------------------------


def test_sign_writes_certificate(ca_dir: Path, relay_public: Path):
    assert sign(ca_dir, relay_public) == 0

    data = read_armored(ca_dir / "relay.cert", CERTIFICATE_LABEL)
    ca = load_public_identity(ca_dir / "ca.pub")
    body = verify_certificate(data, ca.sign_key, expected_name="relay1")
    assert body.sign_key == load_public_identity(relay_public).sign_key
    assert body.not_after - body.not_before == pytest.approx(30 * DAY + 60, abs=2)
    assert stat.S_IMODE((ca_dir / "relay.cert").stat().st_mode) == 0o644


def test_sign_prints_fields(ca_dir: Path, relay_public: Path, capsys: pytest.CaptureFixture[str]):
    capsys.readouterr()

    assert sign(ca_dir, relay_public) == 0

    output = capsys.readouterr().out
    assert str(ca_dir / "relay.cert") in output
    assert "name: relay1" in output
    assert load_public_identity(relay_public).fingerprint() in output


def test_sign_default_paths(ca_dir: Path, relay_public: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(ca_dir)

    assert main(["sign", str(relay_public), "--name", "relay1", "--days", "1"]) == 0
    assert (ca_dir / "relay.cert").is_file()


@pytest.mark.parametrize("days", ["0", "-5"])
def test_sign_rejects_days(
    ca_dir: Path, relay_public: Path, capsys: pytest.CaptureFixture[str], days: str
):
    assert (
        main(
            [
                "sign",
                str(relay_public),
                "--name",
                "r",
                "--days",
                days,
                "--ca-key",
                str(ca_dir / "ca.key"),
            ]
        )
        == 2
    )

    error = capsys.readouterr().err
    assert days in error
    assert "positive" in error
    assert not (ca_dir / "relay.cert").exists()


@pytest.mark.parametrize("days", ["1.5", "ten", "36501"])
def test_sign_rejects_bad_days(ca_dir: Path, relay_public: Path, days: str):
    assert sign(ca_dir, relay_public, "--days", days) == 2


def test_sign_rejects_name(ca_dir: Path, relay_public: Path, capsys: pytest.CaptureFixture[str]):
    assert sign(ca_dir, relay_public, "--name", "two words") == 2

    assert "'two words'" in capsys.readouterr().err


def test_sign_missing_relay_file(ca_dir: Path, capsys: pytest.CaptureFixture[str]):
    missing = ca_dir / "missing.pub"

    assert sign(ca_dir, missing) == 2

    error = capsys.readouterr().err
    assert error.startswith(f"error: {missing}: ")
    assert "not found" in error
    assert "Traceback" not in error


def test_sign_missing_ca_key(
    tmp_path: Path, relay_public: Path, capsys: pytest.CaptureFixture[str]
):
    assert sign(tmp_path, relay_public) == 2

    error = capsys.readouterr().err
    assert str(tmp_path / "ca.key") in error
    assert "init" in error


def test_sign_private_key_as_relay(ca_dir: Path, capsys: pytest.CaptureFixture[str]):
    # The CA private key is not a relay public key file.
    assert sign(ca_dir, ca_dir / "ca.key") == 2

    error = capsys.readouterr().err
    assert str(ca_dir / "ca.key") in error
    assert "T2T PUBLIC KEY" in error


def test_sign_corrupt_ca_key(ca_dir: Path, relay_public: Path, capsys: pytest.CaptureFixture[str]):
    (ca_dir / "ca.key").write_text(
        "-----BEGIN T2T PRIVATE KEY-----\nAAAA\n-----END T2T PRIVATE KEY-----\n"
    )

    assert sign(ca_dir, relay_public) == 2

    error = capsys.readouterr().err
    assert str(ca_dir / "ca.key") in error
    assert "corrupt" in error
    assert "Traceback" not in error


# verify ---------------------------------------------------------------------


def test_verify_ok(ca_dir: Path, relay_public: Path, capsys: pytest.CaptureFixture[str]):
    assert sign(ca_dir, relay_public) == 0
    capsys.readouterr()

    assert verify(ca_dir, "--name", "relay1") == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "OK"
    assert "name: relay1" in lines
    assert any(line.startswith("valid from: ") for line in lines)
    assert any(line.startswith("valid until: ") for line in lines)
    assert f"relay fingerprint: {load_public_identity(relay_public).fingerprint()}" in lines


def test_verify_expired(ca_dir: Path, relay_public: Path, capsys: pytest.CaptureFixture[str]):
    ca = load_key_pair(ca_dir / "ca.key")
    relay = load_public_identity(relay_public)
    data = issue_certificate(ca, relay, "relay1", days=1, now=time.time() - 10 * DAY)
    write_armored(ca_dir / "relay.cert", CERTIFICATE_LABEL, data, private=False)
    capsys.readouterr()

    assert verify(ca_dir) == 1

    captured = capsys.readouterr()
    assert captured.out == ""
    assert "expired" in captured.err
    assert str(ca_dir / "relay.cert") in captured.err


def test_verify_not_yet_valid(ca_dir: Path, relay_public: Path, capsys: pytest.CaptureFixture[str]):
    ca = load_key_pair(ca_dir / "ca.key")
    data = issue_certificate(
        ca, load_public_identity(relay_public), "relay1", days=1, now=time.time() + 10 * DAY
    )
    write_armored(ca_dir / "relay.cert", CERTIFICATE_LABEL, data, private=False)
    capsys.readouterr()

    assert verify(ca_dir) == 1
    assert "not yet valid" in capsys.readouterr().err


def test_verify_wrong_ca(ca_dir: Path, relay_public: Path, capsys: pytest.CaptureFixture[str]):
    assert sign(ca_dir, relay_public) == 0
    other_ca = ca_dir / "other.pub"
    save_public_identity(other_ca, KeyPair.generate().public)
    capsys.readouterr()

    assert main(["verify", str(ca_dir / "relay.cert"), "--ca", str(other_ca)]) == 1
    assert "untrusted" in capsys.readouterr().err


def test_verify_tampered_file(ca_dir: Path, relay_public: Path, capsys: pytest.CaptureFixture[str]):
    assert sign(ca_dir, relay_public) == 0
    path = ca_dir / "relay.cert"
    data = bytearray(read_armored(path, CERTIFICATE_LABEL))
    data[data.index(b"relay1") + 5] ^= 0x01  # "relay1" becomes "relay0"
    write_armored(path, CERTIFICATE_LABEL, bytes(data), private=False)
    capsys.readouterr()

    assert verify(ca_dir) == 1
    assert "tampered" in capsys.readouterr().err


def test_verify_name_mismatch(ca_dir: Path, relay_public: Path, capsys: pytest.CaptureFixture[str]):
    assert sign(ca_dir, relay_public) == 0
    capsys.readouterr()

    assert verify(ca_dir, "--name", "relay2") == 1
    assert "name mismatch" in capsys.readouterr().err


def test_verify_missing_certificate(ca_dir: Path, capsys: pytest.CaptureFixture[str]):
    assert verify(ca_dir) == 2

    error = capsys.readouterr().err
    assert error.startswith(f"error: {ca_dir / 'relay.cert'}: ")
    assert "Traceback" not in error


def test_verify_missing_ca(ca_dir: Path, relay_public: Path, capsys: pytest.CaptureFixture[str]):
    assert sign(ca_dir, relay_public) == 0
    (ca_dir / "ca.pub").unlink()
    capsys.readouterr()

    assert verify(ca_dir) == 2
    assert str(ca_dir / "ca.pub") in capsys.readouterr().err


def test_verify_key_as_certificate(ca_dir: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["verify", str(ca_dir / "ca.pub"), "--ca", str(ca_dir / "ca.pub")]) == 2

    assert "T2T CERTIFICATE" in capsys.readouterr().err


# Usage ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [[], ["nope"], ["sign", "relay.pub"], ["verify", "relay.cert"], ["init", "--bogus"]],
)
def test_usage_error_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]):
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv", [["--help"], ["init", "--help"], ["sign", "--help"], ["verify", "--help"]]
)
def test_help_exits_0(argv: list[str], capsys: pytest.CaptureFixture[str]):
    assert main(argv) == 0
    assert "usage:" in capsys.readouterr().out


def test_help_gives_units(capsys: pytest.CaptureFixture[str]):
    main(["sign", "--help"])

    assert "in days" in capsys.readouterr().out


def test_module_runs_as_script(tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "t2t.ca"]

    help_run = subprocess.run(
        [*command, "--help"], env=env, capture_output=True, text=True, timeout=30
    )
    init_run = subprocess.run(
        [*command, "init", "--dir", str(tmp_path / "ca")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert help_run.returncode == 0, help_run.stderr
    assert "init" in help_run.stdout
    assert init_run.returncode == 0, init_run.stderr
    assert (tmp_path / "ca" / "ca.key").is_file()
