"""t2t clients: the trio-native :func:`connect` and the blocking :class:`ChatClient`."""

from t2t.client.blocking import ChatClient
from t2t.client.connect import connect
from t2t.client.connection import Client

__all__ = ["ChatClient", "Client", "connect"]
