"""Micro: the per-operation cost of framing and crypto, in one process.

Frames: :func:`t2t.frames.encode` and :func:`t2t.frames.decode_frame` for
every member of the ``Frame`` union, on samples of realistic size: real
certificates, signatures and sealed boxes, a 50-user roster and a group
message with ``--body-size`` bytes of text. A frame type without a
hand-made sample (one added to the union later) gets a sample generated from
its field constraints, and the result names it.

Reference codec: pydantic v2 models mirroring each frame, encoded as JSON
objects with binary fields as base64 strings (pydantic's URL-safe base64),
the approach t2t's msgspec frames replaced. The models are generated from the msgspec field
constraints (lengths, name pattern, integer bounds) so both codecs validate
the same rules, and decoding goes through one discriminated union, as a
receiver must. Each frame's row gives the pydantic time as a ratio of the
msgspec time.

Crypto: group message seal and open (SecretBox with an Ed25519-signed
envelope), login seal and open (sealed box), and Ed25519 sign and verify on
a message envelope. The client's whole per-message cost is
ClientProtocol.seal to send, and ClientProtocol.receive of a GroupMessage
from a roster member to receive. Every received message has its own id, because the client
rejects replayed ids.

Timing: each operation runs ``--iterations`` calls per round, for
``--rounds`` rounds, with the garbage collector off; the fastest round
counts, as timeit does. A figure includes the Python loop and call overhead,
which the "empty call" row measures.
"""

from __future__ import annotations

import gc
import secrets
import sys
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import msgspec
import msgspec.inspect

from bench.common import Progress, Result
from t2t.crypto.cert import issue_certificate
from t2t.crypto.group import new_group_key, open_message, seal_invite, seal_message
from t2t.crypto.keys import KeyPair, verify_signature
from t2t.crypto.session import open_login, seal_login, sign_notice, sign_roster, sign_welcome
from t2t.events import MessageReceived
from t2t.frames import (
    PROTOCOL_VERSION,
    Ack,
    Error,
    Frame,
    GroupMessage,
    Hello,
    Invited,
    Login,
    NoticeBody,
    Ping,
    Pong,
    RosterBody,
    RosterEntry,
    Subscribe,
    Subscribed,
    Unsubscribe,
    WelcomeBody,
    decode_frame,
    encode,
)
from t2t.protocol.client import ClientProtocol, ClientState
from t2t.protocol.resume import TOKEN_SIZE

GROUP: Final = "bench-group"
RELAY_NAME: Final = "127.0.0.1"
ROSTER_USERS: Final = 50  # users in the sample roster, the fanout scenario's group size
PASSWORD: Final = "correct horse battery staple"


@dataclass
class MicroParams:
    iterations: int = 2000  # calls per round
    rounds: int = 5
    body_size: int = 64  # bytes of text in a group message

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"--iterations must be at least 1, got {self.iterations}")
        if self.rounds < 1:
            raise ValueError(f"--rounds must be at least 1, got {self.rounds}")
        if self.body_size < 1:
            raise ValueError(f"--body-size must be at least 1 byte, got {self.body_size}")


# Timing ----------------------------------------------------------------------


def time_calls(function: Callable[[Any], object], rounds: Sequence[Sequence[Any]]) -> float:
    """Call ``function`` on each argument of each round; return ns per call of the fastest round."""
    best = float("inf")
    enabled = gc.isenabled()
    gc.disable()
    try:
        for arguments in rounds:
            start = time.perf_counter_ns()
            for argument in arguments:
                function(argument)
            best = min(best, time.perf_counter_ns() - start)
    finally:
        if enabled:
            gc.enable()
    return best / max(len(rounds[0]), 1)


# Samples ---------------------------------------------------------------------


@dataclass
class _Keys:
    ca: KeyPair
    relay: KeyPair
    alice: KeyPair
    bob: KeyPair
    group_key: bytes
    challenge: bytes


def _new_keys() -> _Keys:
    return _Keys(
        KeyPair.generate(),
        KeyPair.generate(),
        KeyPair.generate(),
        KeyPair.generate(),
        new_group_key(),
        secrets.token_bytes(32),
    )


def _roster_body(keys: _Keys, version: int) -> RosterBody:
    users = [("alice", keys.alice), ("bob", keys.bob)]
    users += [(f"user{i}", KeyPair.generate()) for i in range(ROSTER_USERS - 2)]
    return RosterBody(
        version,
        [
            RosterEntry(name, pair.public.sign_key, pair.public.box_key, i % 2 == 0)
            for i, (name, pair) in enumerate(users)
        ],
    )


def frame_samples(keys: _Keys, body_size: int) -> dict[type, msgspec.Struct]:
    """Return one realistic sample of each frame type that has a hand-made one."""
    message = seal_message(
        keys.group_key, keys.alice, group=GROUP, sender_id="alice", body="x" * body_size
    )
    certificate = issue_certificate(keys.ca, keys.relay.public, RELAY_NAME, days=30)
    welcome = WelcomeBody(
        keys.challenge,
        "alice",
        7,
        resume_token=secrets.token_bytes(TOKEN_SIZE),
        resume_expires=int(time.time()) + 7 * 86400,
    )
    notice = NoticeBody(keys.challenge, "replaced", "this session was replaced by a new login")
    samples: list[msgspec.Struct] = [
        Hello(PROTOCOL_VERSION, certificate, keys.challenge),
        sign_welcome(keys.relay, welcome),
        sign_roster(keys.relay, _roster_body(keys, 8)),
        sign_notice(keys.relay, notice),
        Ack(message.msg_id),
        Subscribed(GROUP),
        Invited(GROUP, "bob"),
        Error("not-a-member", f"user 'alice' is not a member of group {GROUP!r}", GROUP),
        Pong(1_733_000_000),
        seal_login(keys.alice, keys.relay.public, keys.challenge, "alice", PASSWORD),
        Subscribe(GROUP),
        Unsubscribe(GROUP),
        Ping(1_733_000_000),
        message,
        seal_invite(
            keys.group_key,
            keys.alice,
            group=GROUP,
            inviter_id="alice",
            target="bob",
            target_box_key=keys.bob.public.box_key,
        ),
    ]
    return {type(sample): sample for sample in samples}


def generated_sample(frame_type: type) -> msgspec.Struct:
    """Build a frame from its field constraints: maximum-length bytes, short names."""
    values: dict[str, Any] = {}
    for field in msgspec.inspect.type_info(frame_type).fields:  # type: ignore[attr-defined]
        kind = field.type
        if isinstance(kind, msgspec.inspect.BytesType):
            size = kind.max_length or max(kind.min_length or 0, 64)
            values[field.name] = secrets.token_bytes(size)
        elif isinstance(kind, msgspec.inspect.StrType):
            values[field.name] = "x" * min(kind.max_length or 16, max(kind.min_length or 1, 16))
        elif isinstance(kind, msgspec.inspect.IntType):
            values[field.name] = kind.ge if kind.ge is not None else 1
        elif isinstance(kind, msgspec.inspect.BoolType):
            values[field.name] = True
        elif isinstance(kind, msgspec.inspect.FloatType):
            values[field.name] = 1.5
        elif field.required:
            raise TypeError(f"cannot generate a {frame_type.__name__}.{field.name} of type {kind}")
    sample: msgspec.Struct = frame_type(**values)
    return sample


# Pydantic reference ---------------------------------------------------------


def pydantic_models() -> tuple[dict[type, type], Any]:
    """Return a pydantic model for each frame type and a TypeAdapter for their union."""
    import pydantic

    config = pydantic.ConfigDict(
        extra="forbid",
        frozen=True,
        ser_json_bytes="base64",
        val_json_bytes="base64",
        # msgspec checks the name pattern with Python's re, so pydantic does too.
        regex_engine="python-re",
    )
    models: dict[type, type] = {}
    for frame_type in typing.get_args(Frame):
        info = msgspec.inspect.type_info(frame_type)
        fields: dict[str, Any] = {info.tag_field: (Literal[info.tag], info.tag)}  # type: ignore[attr-defined]
        for field in info.fields:  # type: ignore[attr-defined]
            default = ... if field.required else field.default
            fields[field.name] = (_pydantic_type(pydantic, field.type), default)
        models[frame_type] = pydantic.create_model(
            f"Json{frame_type.__name__}", __config__=config, **fields
        )
    union: Any = typing.Union[tuple(models.values())]  # noqa: UP007 - built at run time
    adapter: Any = pydantic.TypeAdapter(Annotated[union, pydantic.Field(discriminator="t")])
    return models, adapter


def _pydantic_type(pydantic: Any, kind: Any) -> Any:
    if isinstance(kind, msgspec.inspect.StrType):
        constraints = pydantic.StringConstraints(
            min_length=kind.min_length, max_length=kind.max_length, pattern=kind.pattern
        )
        return Annotated[str, constraints]
    if isinstance(kind, msgspec.inspect.BytesType):
        length = pydantic.Field(min_length=kind.min_length, max_length=kind.max_length)
        return Annotated[bytes, length]
    if isinstance(kind, msgspec.inspect.IntType):
        return Annotated[int, pydantic.Field(ge=kind.ge, le=kind.le, gt=kind.gt, lt=kind.lt)]
    if isinstance(kind, msgspec.inspect.BoolType):
        return bool
    if isinstance(kind, msgspec.inspect.FloatType):
        return float
    return Any


# Client protocol -------------------------------------------------------------


def active_client(keys: _Keys, user: str, identity: KeyPair) -> ClientProtocol:
    """Return a ClientProtocol logged in as ``user``, with a roster and the group key."""
    client = ClientProtocol(
        user=user,
        password=PASSWORD,
        identity=identity,
        ca_key=keys.ca.public.sign_key,
        relay_name=RELAY_NAME,
        group_keys={GROUP: keys.group_key},
    )
    certificate = issue_certificate(keys.ca, keys.relay.public, RELAY_NAME, days=30)
    challenge = secrets.token_bytes(32)
    for frame in (
        Hello(PROTOCOL_VERSION, certificate, challenge),
        sign_welcome(keys.relay, WelcomeBody(challenge, user, 1)),
        sign_roster(keys.relay, _roster_body(keys, 2)),
    ):
        client.receive(encode(frame))
    if client.state is not ClientState.ACTIVE:
        raise RuntimeError(f"client did not log in: state {client.state.value}")
    return client


# Scenario --------------------------------------------------------------------


def _measure(
    rows: list[dict[str, Any]],
    operation: str,
    function: Callable[[Any], object],
    rounds: Sequence[Sequence[Any]],
    size: int | None = None,
    reference: tuple[Callable[[Any], object], Sequence[Sequence[Any]], int] | None = None,
) -> None:
    ns = time_calls(function, rounds)
    row: dict[str, Any] = {
        "operation": operation,
        "bytes": size if size is not None else "",
        "ns_per_op": ns,
        "ops_per_s": 1e9 / ns if ns > 0 else 0.0,
    }
    if reference is not None:
        reference_function, reference_rounds, reference_size = reference
        reference_ns = time_calls(reference_function, reference_rounds)
        row.update(
            pydantic_bytes=reference_size,
            pydantic_ns_per_op=reference_ns,
            pydantic_ratio=reference_ns / ns if ns > 0 else 0.0,
        )
    rows.append(row)


def run(params: MicroParams, progress: Progress) -> Result:
    """Time every operation and return a result with one row per operation."""
    keys = _new_keys()
    samples = frame_samples(keys, params.body_size)
    generated = [t.__name__ for t in typing.get_args(Frame) if t not in samples]
    for frame_type in typing.get_args(Frame):
        samples.setdefault(frame_type, generated_sample(frame_type))
    models, adapter = pydantic_models()

    def repeat(value: Any) -> list[list[Any]]:
        return [[value] * params.iterations] * params.rounds

    operations = 2 * len(samples) + 9
    advance = progress.task("micro", operations)
    rows: list[dict[str, Any]] = []
    _measure(rows, "empty call (loop and call overhead)", _nothing, repeat(None))
    advance()

    for frame_type in typing.get_args(Frame):
        sample = samples[frame_type]
        data = encode(sample)
        if decode_frame(data) != sample:
            raise RuntimeError(f"{frame_type.__name__} does not survive an encode and decode")
        model = models[frame_type](**msgspec.structs.asdict(sample))
        text = model.model_dump_json()
        if adapter.validate_json(text) != model:
            raise RuntimeError(f"pydantic {frame_type.__name__} does not survive a round trip")
        name = frame_type.__name__
        _measure(
            rows,
            f"encode {name}",
            encode,
            repeat(sample),
            len(data),
            (type(model).model_dump_json, repeat(model), len(text)),
        )
        advance()
        _measure(
            rows,
            f"decode {name}",
            decode_frame,
            repeat(data),
            len(data),
            (adapter.validate_json, repeat(text), len(text)),
        )
        advance()

    _measure_crypto(rows, keys, params, samples, repeat, advance)
    notes = []
    if generated:
        notes.append(f"samples generated from field constraints for: {', '.join(generated)}")
    metrics: dict[str, Any] = {
        "operations": {row["operation"]: _row_metrics(row) for row in rows},
        "generated_samples": generated,
        "python": sys.version.split()[0],
    }
    return Result("micro", vars(params), metrics, rows, notes)


def _nothing(argument: object) -> None:
    return None


def _measure_crypto(
    rows: list[dict[str, Any]],
    keys: _Keys,
    params: MicroParams,
    samples: dict[type, msgspec.Struct],
    repeat: Callable[[Any], list[list[Any]]],
    advance: Callable[..., None],
) -> None:
    text = "x" * params.body_size
    message = samples[GroupMessage]
    assert isinstance(message, GroupMessage)
    login = samples[Login]
    assert isinstance(login, Login)

    def seal_one(body: str) -> GroupMessage:
        return seal_message(keys.group_key, keys.alice, group=GROUP, sender_id="alice", body=body)

    _measure(rows, "seal_message", seal_one, repeat(text), len(message.box))
    advance()
    alice_key = keys.alice.public.sign_key
    _measure(
        rows,
        "open_message",
        lambda m: open_message(keys.group_key, m, alice_key),
        repeat(message),
        len(message.box),
    )
    advance()
    _measure(
        rows,
        "seal_login",
        lambda c: seal_login(keys.alice, keys.relay.public, c, "alice", PASSWORD),
        repeat(keys.challenge),
        len(login.sealed),
    )
    advance()
    _measure(
        rows,
        "open_login",
        lambda f: open_login(keys.relay, keys.challenge, f),
        repeat(login),
        len(login.sealed),
    )
    advance()

    envelope = b"t2t/v1/message\x00" + encode(message)[:120]
    signature = keys.alice.sign(envelope)
    _measure(rows, "ed25519 sign", keys.alice.sign, repeat(envelope), len(envelope))
    advance()
    _measure(
        rows,
        "ed25519 verify",
        lambda m: verify_signature(alice_key, m, signature),
        repeat(envelope),
        len(envelope),
    )
    advance()

    sender = active_client(keys, "alice", keys.alice)
    receiver = active_client(keys, "bob", keys.bob)
    frame_size = len(sender.seal(GROUP, text)[1])
    _measure(rows, "ClientProtocol.seal", lambda t: sender.seal(GROUP, t), repeat(text), frame_size)
    advance()
    # Each received message needs its own id: the client rejects replays.
    inbound = [
        [encode(seal_one(text)) for _ in range(params.iterations)] for _ in range(params.rounds)
    ]
    outputs = receiver.receive(encode(seal_one(text)))
    if not isinstance(outputs[0], MessageReceived):
        raise RuntimeError(f"ClientProtocol.receive rejected the sample message: {outputs}")
    _measure(rows, "ClientProtocol.receive GroupMessage", receiver.receive, inbound, frame_size)
    advance()


def _row_metrics(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in row.items() if key != "operation" and value != ""}
