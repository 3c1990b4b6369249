"""The one piece of per-user data that everything else shares."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

NO_CLIENT = ""  # a session whose client is not known (online since before clients were tracked)


class UserRecord(NamedTuple):
    """What we know of one user (bare JID). Timestamps are whole Unix seconds, 0 for never.

    Per client family (see `client_families.py`), the seed's rule needs one time: the last login or
    logout of the user's sessions of that client, kept flat in `clients` (`("conversations",
    t1, "gajim", t2)`: no tuple per family, and nothing at all for users without client
    information, such as imported ones). `session_clients` says which family each session in
    `sessions` runs, position by position (shorter or empty: NO_CLIENT for the rest)."""

    first_seen: int
    last_login: int
    last_logout: int
    sessions: tuple[str, ...] = ()  # resources online now (the full JIDs are bare + "/" + each)
    clients: tuple[str | int, ...] = ()  # family, its last login or logout, family, ...
    session_clients: tuple[str, ...] = ()  # the family of each session, in the same order

    @property
    def last_active(self) -> int:
        # The seed's rule: restarts and crashes lose some events, so the latest of both counts.
        return max(self.last_login, self.last_logout)

    @property
    def online(self) -> bool:
        return bool(self.sessions)

    def client_times(self) -> Iterator[tuple[str, int]]:
        """(family, last login or logout of its sessions) of each family the user used."""
        clients = self.clients
        for i in range(0, len(clients), 2):
            yield clients[i], clients[i + 1]  # type: ignore[misc]  # str, int: checked by the codec

    def session_families(self) -> tuple[str, ...]:
        """The family of each session online, as long as `sessions`."""
        families = self.session_clients
        missing = len(self.sessions) - len(families)
        return families + (NO_CLIENT,) * missing if missing > 0 else families[: len(self.sessions)]

    def only_client(self) -> tuple[str, tuple[int, int]] | None:
        """(family, (time, sessions online)) of a user with one client family, and at most one
        session online, running it: most users, at every login and logout. None otherwise."""
        clients = self.clients
        if len(clients) != 2:
            return None
        families = self.session_clients
        # The ignores: the codec checked that `clients` is (family str, time int).
        if not families:
            return None if self.sessions else (clients[0], (clients[1], 0))  # type: ignore[return-value]
        if families == (clients[0],) and len(self.sessions) == 1:
            return clients[0], (clients[1], 1)  # type: ignore[return-value]
        return None

    def client_states(self) -> dict[str, tuple[int, int]]:
        """Per family: (last login or logout of its sessions, its sessions online now)."""
        only = self.only_client()
        if only is not None:
            return dict((only,))
        states = {family: (time, 0) for family, time in self.client_times()}
        for family in self.session_families():
            if family:
                time, online = states.get(family, (0, 0))
                states[family] = (time, online + 1)
        return states


def with_client_activity(
    clients: tuple[str | int, ...], family: str, time: int
) -> tuple[str | int, ...]:
    """`clients` with `family` last active at `time` at the latest (the newest time wins)."""
    # The ignores: `clients` alternates family (str) and time (int), checked by the codec.
    if len(clients) == 2 and clients[0] == family:  # one client, the same: most logins
        return clients if clients[1] >= time else (family, time)  # type: ignore[operator]
    for i in range(0, len(clients), 2):
        if clients[i] == family:
            if clients[i + 1] >= time:  # type: ignore[operator]
                return clients
            return (*clients[: i + 1], time, *clients[i + 2 :])
    return (*clients, family, time)


def domain_of(bare_jid: str) -> str:
    return bare_jid.rpartition("@")[2]
