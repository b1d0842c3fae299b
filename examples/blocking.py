"""Carol and dave chat through the blocking ChatClient, with no event loop of their own.

Start a relay first (``python -m t2t.server``), then run this from the same
folder so that ``t2t-data/dev-ca/ca.pub`` is the relay's development CA.
"""

import threading

from t2t.client import ChatClient

URL = "ws://127.0.0.1:8765"
CA = "t2t-data/dev-ca/ca.pub"

received = threading.Event()


def on_message(event):
    print(f"dave received from {event.sender} in {event.group}: {event.text}")
    received.set()


carol = ChatClient(
    id="carol",
    pwd="carol-password",
    server_url=URL,
    ca_file=CA,
    key_file="carol.key",
    group_keys_file="carol-groups.json",
)
dave = ChatClient(
    id="dave",
    pwd="dave-password",
    server_url=URL,
    ca_file=CA,
    key_file="dave.key",
    group_keys_file="dave-groups.json",
)
dave.callback("message", on_message)
carol.run()  # returns once logged in
dave.run()
carol.handshake("dave", "book-club")  # invite: dave must be online
carol.send("book-club", "hello dave")
received.wait(timeout=10)
carol.stop()
dave.stop()
