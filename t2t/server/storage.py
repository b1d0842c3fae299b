"""SQLite storage for the relay: accounts, groups, members and the roster version.

Everything the relay must remember across restarts lives here. Each write is
its own transaction, committed before the relay acts on it. The database runs
in WAL mode with ``synchronous=NORMAL``: a committed write survives a crash
of the relay process, but an operating-system crash or power loss can undo
the last few commits. FULL would close that gap with an fsync per commit,
several milliseconds each on the event loop, during every new login. A lost
registration is redone by the user's next login, and a lost invite by
inviting again.

The store is synchronous. The relay calls it from the event loop because each
call is a single indexed statement on a local file; password hashing, the one
slow step of a login, runs in a worker thread instead (see
:mod:`t2t.server.passwords`).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Final

from t2t.crypto.keys import PublicIdentity
from t2t.protocol.relay import Account

SCHEMA_VERSION: Final = 1

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS accounts (
    user TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    sign_key BLOB NOT NULL,
    box_key BLOB NOT NULL,
    created_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
);
CREATE TABLE IF NOT EXISTS groups (
    name TEXT PRIMARY KEY,
    creator TEXT NOT NULL REFERENCES accounts(user),
    created_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
);
CREATE TABLE IF NOT EXISTS members (
    group_name TEXT NOT NULL REFERENCES groups(name),
    user TEXT NOT NULL REFERENCES accounts(user),
    invited_by TEXT,
    PRIMARY KEY (group_name, user)
);
"""


class Store:
    """The relay's SQLite database file.

    Args:
        path: The database file; its folder is created if needed. ``":memory:"``
            gives a throwaway database.
    """

    def __init__(self, path: Path | str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: autocommit, with explicit transactions below.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._db:
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (SCHEMA_VERSION,),
            )
            self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('roster_version', 0)")

    def close(self) -> None:
        self._db.close()

    # Accounts ------------------------------------------------------------

    def accounts(self) -> list[Account]:
        rows = self._db.execute(
            "SELECT user, password_hash, sign_key, box_key FROM accounts ORDER BY user"
        ).fetchall()
        return [Account(user, pw, PublicIdentity(sk, bk)) for user, pw, sk, bk in rows]

    def create_account(self, user: str, password_hash: str, identity: PublicIdentity) -> bool:
        """Register ``user``. Returns False, changing nothing, if it already exists."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO accounts (user, password_hash, sign_key, box_key) "
            "VALUES (?, ?, ?, ?)",
            (user, password_hash, identity.sign_key, identity.box_key),
        )
        return cursor.rowcount == 1

    def update_identity(self, user: str, identity: PublicIdentity) -> None:
        self._db.execute(
            "UPDATE accounts SET sign_key = ?, box_key = ? WHERE user = ?",
            (identity.sign_key, identity.box_key, user),
        )

    # Groups ----------------------------------------------------------------

    def memberships(self) -> dict[str, set[str]]:
        """Return every group with its set of members."""
        groups: dict[str, set[str]] = {
            name: set() for (name,) in self._db.execute("SELECT name FROM groups")
        }
        for group, user in self._db.execute("SELECT group_name, user FROM members"):
            groups[group].add(user)
        return groups

    def create_group(self, group: str, creator: str) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("INSERT INTO groups (name, creator) VALUES (?, ?)", (group, creator))
            self._db.execute(
                "INSERT INTO members (group_name, user, invited_by) VALUES (?, ?, NULL)",
                (group, creator),
            )

    def add_member(self, group: str, user: str, invited_by: str) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO members (group_name, user, invited_by) VALUES (?, ?, ?)",
            (group, user, invited_by),
        )

    # Roster version --------------------------------------------------------

    def next_roster_version(self) -> int:
        """Increase and return the roster version, which survives restarts.

        Clients reject a roster whose version is not newer than the last one
        they accepted, so the counter must never go back. With
        ``synchronous=NORMAL`` an OS crash can undo the last increments, so
        the version is also at least the current time in milliseconds: it
        keeps growing as long as the clock does not jump back.
        """
        now_ms = int(time.time() * 1000)
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE meta SET value = max(value + 1, ?) WHERE key = 'roster_version'",
                (now_ms,),
            )
            (version,) = self._db.execute(
                "SELECT value FROM meta WHERE key = 'roster_version'"
            ).fetchone()
        return int(version)

    def roster_version(self) -> int:
        (version,) = self._db.execute(
            "SELECT value FROM meta WHERE key = 'roster_version'"
        ).fetchone()
        return int(version)
