"""Tests for t2t.frames: encoding and decoding of wire frames.

Rules under test:

- Every frame survives encode then decode_frame unchanged.
- decode_frame raises ProtocolError with close code 1002, and nothing else,
  for anything that is not one well-formed binary frame.
- Rejected are text messages, bytes that are not MessagePack, unknown tags,
  wrong field types, missing or extra fields and trailing bytes.
- Also rejected are names that are empty, longer than 64 characters or
  contain whitespace or control characters, and signatures, challenges or
  message ids of the wrong length.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from t2t.errors import CLOSE_PROTOCOL_ERROR, ProtocolError
from t2t.frames import (
    NAME_PATTERN,
    Ack,
    Error,
    GroupMessage,
    Hello,
    Invite,
    Invited,
    Login,
    Notice,
    Ping,
    Pong,
    Roster,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Welcome,
    decode_frame,
    encode,
)


def raw(*items: Any) -> bytes:
    """Encode a MessagePack array without any frame validation."""
    return msgspec.msgpack.encode(list(items))


def assert_protocol_error(data: bytes | str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_frame(data)
    assert info.value.code == CLOSE_PROTOCOL_ERROR
    return info.value


SIG = b"s" * 64
CHALLENGE = b"c" * 32
MSG_ID = b"m" * 16


# Round trips ----------------------------------------------------------------

names = st.text(
    alphabet=st.characters(exclude_categories=("Cc", "Cs", "Cf", "Zs", "Zl", "Zp")),
    min_size=1,
    max_size=64,
).filter(lambda name: re.fullmatch(NAME_PATTERN, name) is not None)
blobs = st.binary(min_size=1, max_size=200)
signatures = st.binary(min_size=64, max_size=64)
int64 = st.integers(-(2**63), 2**63 - 1)
nonces = st.integers(0, 2**63 - 1)

frames = st.one_of(
    st.builds(Hello, int64, blobs, st.binary(min_size=32, max_size=32)),
    st.builds(Welcome, blobs, signatures),
    st.builds(Roster, blobs, signatures),
    st.builds(Notice, blobs, signatures),
    st.builds(Ack, st.binary(min_size=16, max_size=16)),
    st.builds(Subscribed, names),
    st.builds(Invited, names, names),
    st.builds(Error, st.text(), st.text(), st.text(), st.binary()),
    st.builds(Pong, nonces),
    st.builds(Login, int64, blobs, signatures),
    st.builds(Subscribe, names),
    st.builds(Unsubscribe, names),
    st.builds(Ping, nonces),
    st.builds(GroupMessage, names, names, st.binary(min_size=16, max_size=16), blobs),
    st.builds(Invite, names, names, names, blobs, signatures),
)


@given(frame=frames)
def test_frame_round_trip(frame: Any):
    assert decode_frame(encode(frame)) == frame


@given(frame=frames)
def test_frame_round_trip_buffers(frame: Any):
    data = encode(frame)

    assert decode_frame(bytearray(data)) == frame
    assert decode_frame(memoryview(data)) == frame


def test_frame_is_tagged_array():
    assert msgspec.msgpack.decode(encode(Ping(7))) == ["ping", 7]
    assert msgspec.msgpack.decode(encode(Ack(MSG_ID))) == ["ack", MSG_ID]


def test_error_ref_defaults_empty():
    assert decode_frame(raw("error", "full", "group is full")) == Error("full", "group is full")


@pytest.mark.parametrize("name", ["a", "x" * 64, "中文群组", "émile", "user-1_ok.name"])
def test_name_accepted(name: str):
    assert decode_frame(encode(Subscribe(name))) == Subscribe(name)


# Rejections -----------------------------------------------------------------


@given(data=st.binary())
def test_random_bytes_raise_only_protocol_error(data: bytes):
    try:
        decode_frame(data)
    except ProtocolError as exc:
        assert exc.code == CLOSE_PROTOCOL_ERROR


@pytest.mark.parametrize(
    "data", [b"", b"\xc1", b"\xff\xff", b"\x00", b"\x92", b"not msgpack at all", bytes(range(256))]
)
def test_random_bytes_rejected(data: bytes):
    error = assert_protocol_error(data)

    assert "invalid frame" in error.reason


def test_text_message_rejected():
    error = assert_protocol_error(encode(Ping(1)).decode("latin-1"))

    assert "binary" in error.reason


@pytest.mark.parametrize(
    "data",
    [raw("nope", 1), raw("PING", 1), raw(""), raw(), raw(1, 2), raw(None)],
    ids=["unknown", "case", "empty-tag", "empty-array", "int-tag", "nil-tag"],
)
def test_unknown_tag_rejected(data: bytes):
    assert_protocol_error(data)


@pytest.mark.parametrize(
    "data",
    [
        raw("ping", "1"),
        raw("ping", 1.0),
        raw("ping", True),
        raw("ping", None),
        raw("pong", [1]),
        raw("hello", "1", b"cert", CHALLENGE),
        raw("hello", 1, "cert", CHALLENGE),
        raw("subscribe", b"team"),
        raw("subscribe", 7),
        raw("ack", "m" * 16),
        raw("error", 1, "message"),
        raw("error", "code", "message", "team", "not-bytes"),
        raw("msg", "team", "alice", MSG_ID, "box"),
        raw("invite", "team", "alice", "bob", b"key", "s" * 64),
        msgspec.msgpack.encode({"t": "ping", "nonce": 1}),
        msgspec.msgpack.encode("ping"),
    ],
)
def test_wrong_field_type_rejected(data: bytes):
    assert_protocol_error(data)


@pytest.mark.parametrize(
    "data",
    [raw("ping", -1), raw("ping", 2**63), raw("pong", 2**64 - 1)],
    ids=["negative", "above-int64", "max-uint64"],
)
def test_nonce_out_of_range_rejected(data: bytes):
    assert_protocol_error(data)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 65,
        "two words",
        " leading",
        "trailing ",
        "tab\there",
        "new\nline",
        "\n",
        "nul\x00",
        "bell\x07",
        "del\x7f",
        "ideographic\u3000space",
        "no-break\xa0space",
        "line\u2028separator",
        "next\x85line",
    ],
)
def test_bad_name_rejected(name: str):
    assert_protocol_error(raw("subscribe", name))
    assert_protocol_error(raw("msg", name, "alice", MSG_ID, b"box"))
    assert_protocol_error(raw("invite", "team", "alice", name, b"key", SIG))


@pytest.mark.parametrize("name", ["team\n", "te\u200bam", "\u202eteam", "team\ufeff"])
def test_name_invisible_characters_rejected(name: str):
    assert_protocol_error(raw("subscribe", name))


@pytest.mark.parametrize(
    "data",
    [
        raw("welcome", b"body", b"s" * 63),
        raw("welcome", b"body", b"s" * 65),
        raw("roster", b"body", b""),
        raw("notice", b"body", b"s" * 32),
        raw("login", 1, b"sealed", b"s" * 63),
        raw("invite", "team", "alice", "bob", b"key", b"s" * 65),
    ],
)
def test_wrong_signature_length_rejected(data: bytes):
    assert_protocol_error(data)


@pytest.mark.parametrize(
    "data",
    [
        raw("hello", 1, b"cert", b"c" * 31),
        raw("hello", 1, b"cert", b"c" * 33),
        raw("ack", b"m" * 15),
        raw("ack", b"m" * 17),
        raw("msg", "team", "alice", b"m" * 15, b"box"),
        raw("msg", "team", "alice", b"", b"box"),
    ],
)
def test_wrong_key_length_rejected(data: bytes):
    assert_protocol_error(data)


@pytest.mark.parametrize(
    "data",
    [
        raw("hello", 1, b"", CHALLENGE),
        raw("welcome", b"", SIG),
        raw("login", 1, b"", SIG),
        raw("msg", "team", "alice", MSG_ID, b""),
        raw("invite", "team", "alice", "bob", b"", SIG),
    ],
)
def test_empty_blob_rejected(data: bytes):
    assert_protocol_error(data)


@pytest.mark.parametrize(
    "data",
    [
        raw("ping", 1, 2),
        raw("ack", MSG_ID, MSG_ID),
        raw("subscribe", "team", True, "extra"),
        raw("error", "code", "message", "team", b"id", "extra"),
        raw("msg", "team", "alice", MSG_ID, b"box", b"extra"),
    ],
)
def test_extra_field_rejected(data: bytes):
    error = assert_protocol_error(data)

    assert "length" in error.reason


@pytest.mark.parametrize(
    "data",
    [raw("ping"), raw("hello", 1, b"cert"), raw("msg", "team", "alice", MSG_ID), raw("error", "c")],
)
def test_missing_field_rejected(data: bytes):
    assert_protocol_error(data)


def test_trailing_bytes_rejected():
    assert_protocol_error(encode(Ping(1)) + b"\x00")


def test_two_frames_rejected():
    assert_protocol_error(encode(Ping(1)) + encode(Ping(2)))
