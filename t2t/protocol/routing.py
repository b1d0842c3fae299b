"""Group membership and subscriptions: who may receive what.

Membership is durable and follows invites: a user is a member of a group it
created or was invited to by a member. A subscription is per session: a
member's online connection that asked for the group's messages. Messages go
only to subscribers, never to every connection.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RoutingError(Exception):
    """A request the relay refuses with an error frame; the connection stays open."""

    code: str  # machine-readable, for example "not-a-member"
    message: str


class Router:
    """In-memory view of group membership plus the live subscriptions.

    Args:
        memberships: Every known group with its members, as loaded from storage.
    """

    def __init__(self, memberships: dict[str, set[str]]) -> None:
        self._members = memberships
        self._subscribers: dict[str, dict[str, int]] = {}  # group -> user -> conn_id
        self._subscriptions: dict[str, set[str]] = {}  # user -> groups

    def is_member(self, group: str, user: str) -> bool:
        return user in self._members.get(group, ())

    def subscribe(self, group: str, user: str, conn_id: int, *, create: bool = False) -> bool:
        """Subscribe ``user``'s connection to ``group``, creating it if ``create``.

        Returns:
            True if the group was created with ``user`` as its only member;
            the caller persists that.

        Raises:
            RoutingError: ``group-exists`` when asked to create an existing
                group, ``unknown-group`` when asked to subscribe to a missing
                one, and ``not-a-member`` if ``user`` was never invited.
        """
        members = self._members.get(group)
        if create:
            if members is not None:
                raise RoutingError(
                    "group-exists",
                    f"group {group!r} already exists; ask a member to invite you "
                    "or pick another group id",
                )
            self._members[group] = {user}
        elif members is None:
            raise RoutingError("unknown-group", f"group {group!r} does not exist")
        elif user not in members:
            raise RoutingError(
                "not-a-member",
                f"you are not a member of group {group!r}; ask a member to invite you",
            )
        self._subscribers.setdefault(group, {})[user] = conn_id
        self._subscriptions.setdefault(user, set()).add(group)
        return create

    def unsubscribe(self, group: str, user: str) -> None:
        subscribers = self._subscribers.get(group)
        if subscribers is not None:
            subscribers.pop(user, None)
            if not subscribers:
                del self._subscribers[group]
        self._subscriptions.get(user, set()).discard(group)

    def unsubscribe_all(self, user: str) -> None:
        for group in self._subscriptions.pop(user, ()):
            subscribers = self._subscribers.get(group)
            if subscribers is not None:
                subscribers.pop(user, None)
                if not subscribers:
                    del self._subscribers[group]

    def recipients(self, group: str, sender: str) -> list[int]:
        """Return the connections that receive ``sender``'s message to ``group``.

        Raises:
            RoutingError: ``unknown-group`` or ``not-a-member``.
        """
        members = self._members.get(group)
        if members is None:
            raise RoutingError("unknown-group", f"group {group!r} does not exist")
        if sender not in members:
            raise RoutingError("not-a-member", f"you are not a member of group {group!r}")
        subscribers = self._subscribers.get(group, {})
        return [conn for user, conn in subscribers.items() if user != sender]

    def add_member(self, group: str, inviter: str, target: str) -> bool:
        """Record that ``inviter`` invited ``target`` into ``group``.

        Returns:
            True if ``target`` was not a member before; the caller persists that.

        Raises:
            RoutingError: ``unknown-group`` or ``not-a-member`` (for the inviter).
        """
        members = self._members.get(group)
        if members is None:
            raise RoutingError(
                "unknown-group", f"group {group!r} does not exist; create it by inviting someone"
            )
        if inviter not in members:
            raise RoutingError("not-a-member", f"you are not a member of group {group!r}")
        if target in members:
            return False
        members.add(target)
        return True
