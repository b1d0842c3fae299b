"""A relay protocol and its clients joined in memory, for tests without sockets.

Bytes pass between a :class:`RelayProtocol` (with a real SQLite store) and
one :class:`ClientProtocol` per connection by hand. :class:`Wire` plays the
relay's I/O shell: it runs each password check with the real argon2id
functions and calls ``password_checked`` with the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from t2t.crypto.keys import KeyPair
from t2t.protocol.client import ClientProtocol, ClientState, Outgoing
from t2t.protocol.relay import Action, CheckPassword, Close, Forward, RelayProtocol, Send
from t2t.server.passwords import HashCost, hash_password, verify_password

RELAY_NAME = "relay.test"
FAST_HASH = HashCost(opslimit=1, memlimit=8192)


def flip_byte(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def check_password(relay: RelayProtocol, action: CheckPassword) -> list[Action]:
    """Do what the relay shell does with a CheckPassword action."""
    if action.password_hash is None:
        new_hash = hash_password(action.password, FAST_HASH)
        return relay.password_checked(
            action.conn_id, ok=True, new_hash=new_hash, password=action.password
        )
    ok = verify_password(action.password_hash, action.password)
    return relay.password_checked(action.conn_id, ok=ok, new_hash=None, password=action.password)


@dataclass
class Wire:
    """A relay and its clients, with every frame passed by hand."""

    relay: RelayProtocol
    ca: KeyPair
    clients: dict[int, ClientProtocol] = field(default_factory=dict)
    outputs: dict[int, list[object]] = field(default_factory=dict)
    closes: dict[int, Close] = field(default_factory=dict)

    def new_client(self, user: str, password: str | None = None) -> ClientProtocol:
        return ClientProtocol(
            user=user,
            password=password or f"pw-{user}",
            identity=KeyPair.generate(),
            ca_key=self.ca.public.sign_key,
            relay_name=RELAY_NAME,
            group_keys={},
        )

    def connect(self, conn_id: int, client: ClientProtocol) -> None:
        """Open a connection and run it until the relay waits for a roster push."""
        self.clients[conn_id] = client
        self.outputs[conn_id] = []
        self.deliver(conn_id, self.relay.connect(conn_id))

    def log_in(self, conn_id: int, client: ClientProtocol) -> bytes:
        """Connect, finish the login with a roster push and return the roster frame."""
        self.connect(conn_id, client)
        roster = self.publish_roster()
        assert client.state is ClientState.ACTIVE
        return roster

    def deliver(self, conn_id: int, data: bytes) -> list[object]:
        """Hand relay bytes to a client, and its replies back to the relay."""
        if conn_id in self.closes:
            return []
        outputs = self.clients[conn_id].receive(data)
        for output in outputs:
            if isinstance(output, Outgoing):
                self.send(conn_id, output.data)
            else:
                self.outputs[conn_id].append(output)
        return outputs

    def send(self, conn_id: int, data: bytes) -> None:
        """Hand client bytes to the relay and carry out its actions."""
        self.apply(self.relay.receive(conn_id, data))

    def apply(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Send(conn_id, data):
                    self.deliver(conn_id, data)
                case Forward(conn_ids, data, sender, ack):
                    for conn_id in conn_ids:
                        self.deliver(conn_id, data)
                    self.deliver(sender, ack)
                case Close(conn_id):
                    self.closes[conn_id] = action
                    self.relay.disconnect(conn_id)
                case CheckPassword():
                    self.apply(check_password(self.relay, action))

    def publish_roster(self) -> bytes:
        frame = self.relay.publish_roster()
        assert frame is not None, "nothing changed since the last roster"
        for conn_id in self.relay.active_connections():
            self.deliver(conn_id, frame)
        return frame
