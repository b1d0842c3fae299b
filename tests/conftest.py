from pathlib import Path

import pytest

from memory_wire import RELAY_NAME, Wire
from t2t.crypto.cert import issue_certificate
from t2t.crypto.keys import KeyPair
from t2t.protocol.relay import RelayProtocol
from t2t.server.storage import Store


@pytest.fixture
def anyio_backend() -> str:
    """Run every ``@pytest.mark.anyio`` test on trio."""
    return "trio"


@pytest.fixture
def wire(tmp_path: Path):
    """A relay protocol with a real store in tmp_path, joined to clients in memory."""
    ca, key = KeyPair.generate(), KeyPair.generate()
    certificate = issue_certificate(ca, key.public, RELAY_NAME, days=1)
    store = Store(tmp_path / "db")
    try:
        yield Wire(RelayProtocol(key, certificate, store), ca)
    finally:
        store.close()
