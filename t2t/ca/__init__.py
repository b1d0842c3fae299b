"""Certificate authority tool for t2t relays, run as ``python -m t2t.ca``.

- ``init`` creates the CA key pair: ``ca.key`` (private, mode 0600) and ``ca.pub``.
- ``sign`` issues a certificate for a relay's public key file.
- ``verify`` checks a certificate against a CA public key, as a client would.

Clients trust a relay only if its certificate verifies against ``ca.pub``,
so ``ca.pub`` goes to every client and ``ca.key`` stays on the CA machine.
"""

from __future__ import annotations

from t2t.ca.cli import main

__all__ = ["main"]
