"""The one piece of per-user data that everything else shares."""

from __future__ import annotations

from typing import NamedTuple


class UserRecord(NamedTuple):
    """What we know of one user (bare JID). Timestamps are whole Unix seconds, 0 for never."""

    first_seen: int
    last_login: int
    last_logout: int
    sessions: tuple[str, ...] = ()  # resources online now (the full JIDs are bare + "/" + each)

    @property
    def last_active(self) -> int:
        # The seed's rule: restarts and crashes lose some events, so the latest of both counts.
        return max(self.last_login, self.last_logout)

    @property
    def online(self) -> bool:
        return bool(self.sessions)


def domain_of(bare_jid: str) -> str:
    return bare_jid.rpartition("@")[2]
