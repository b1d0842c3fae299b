"""Alice invites bob into a group and sends him an end-to-end encrypted message.

Start a relay first (``python -m t2t.server``), then run this from the same
folder so that ``t2t-data/dev-ca/ca.pub`` is the relay's development CA.
"""

import trio

import t2t

URL = "ws://127.0.0.1:8765"
CA = "t2t-data/dev-ca/ca.pub"


async def main() -> None:
    async with (
        t2t.connect(URL, user="alice", password="alice-password", ca=CA) as alice,
        t2t.connect(URL, user="bob", password="bob-password", ca=CA) as bob,
    ):
        await alice.invite("bob", "team")
        await alice.send("team", "hello bob, 你好")
        async for event in bob.events():
            if isinstance(event, t2t.MessageReceived):
                print(f"bob received from {event.sender} in {event.group}: {event.text}")
                break


trio.run(main)
