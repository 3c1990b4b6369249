"""The resync after a reconnection: which sessions the server has not re-announced yet.

The connection came back: the server is about to re-announce every online session. Sessions it
does not re-announce (or end) before the resync ends are gone; they end at the time the
connection dropped, or earlier for those an earlier resync, cut short by another drop, had not
seen re-announced yet.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable


class Resync:
    """Each session not re-announced yet -> the last time it was known online (None: no
    resync), and how many sessions have each such time."""

    def __init__(self) -> None:
        self._unconfirmed: dict[tuple[str, str], int] | None = None
        self._times: Counter[int] = Counter()

    def begin(self, online: Iterable[tuple[str, str]], known_until: int) -> None:
        """`online`: (key, session) of every session believed online now."""
        earlier = self._unconfirmed or {}
        self._unconfirmed = {session: earlier.get(session, known_until) for session in online}
        self._times = Counter(self._unconfirmed.values())

    def end(self) -> list[tuple[tuple[str, str], int]]:
        """The sessions never re-announced, each with the time it ends, in order."""
        unconfirmed, self._unconfirmed = self._unconfirmed or {}, None
        self._times = Counter()
        return sorted(unconfirmed.items())

    def since(self) -> int | None:
        """During a resync, the earliest time a session not re-announced yet was known online
        (None: every session is confirmed, or no resync)."""
        return min(self._times) if self._times else None

    def confirm(self, key: str, session: str) -> None:
        """The session was announced again (or ended): it is no longer in doubt."""
        if self._unconfirmed is not None:
            known_until = self._unconfirmed.pop((key, session), None)
            if known_until is not None:
                self._times[known_until] -= 1
                if not self._times[known_until]:
                    del self._times[known_until]

    def forget(self, key: str) -> None:
        """The user was forgotten: none of their sessions is brought back."""
        if self._unconfirmed:
            for session in [s for s in self._unconfirmed if s[0] == key]:
                self.confirm(*session)
