"""t2t: end-to-end encrypted group messaging over a relay, built on trio."""

from t2t._version import __version__

__all__ = ["__version__"]
