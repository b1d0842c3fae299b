"""Cryptography for t2t, built only on PyNaCl (libsodium).

- :mod:`t2t.crypto.keys`: Ed25519/X25519 key pairs and armored key files.
- :mod:`t2t.crypto.cert`: CA-signed relay certificates.
- :mod:`t2t.crypto.session`: sealed logins and relay-signed frames.
- :mod:`t2t.crypto.group`: group keys, signed group messages and invites.
"""
