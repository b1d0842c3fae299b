"""Two clients exchange an encrypted group message through an in-process relay."""

import pytest
import trio

from support import running_relay
from t2t.events import MessageReceived

pytestmark = pytest.mark.anyio


async def test_invite_then_message(tmp_path):
    received: list[MessageReceived] = []
    got = trio.Event()

    def on_message(event: MessageReceived) -> None:
        received.append(event)
        got.set()

    async with (
        running_relay(tmp_path) as relay,
        relay.client("alice") as alice,
        relay.client("bob") as bob,
    ):
        bob.on(MessageReceived, on_message)
        await alice.invite("bob", "team")
        msg_id = await alice.send("team", "hello bob")
        with trio.fail_after(5):
            await got.wait()

    assert received[0].text == "hello bob"
    assert received[0].sender == "alice"
    assert received[0].group == "team"
    assert received[0].msg_id == msg_id
