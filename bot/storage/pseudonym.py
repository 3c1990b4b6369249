"""Pseudonyms: users keyed by a keyed hash of their JID instead of the JID itself.

With `[privacy] pseudonymize`, the store never holds a localpart or a resource: a user is
`~<hash>@<domain>` (the domain kept so that counts per domain still work) and each of their
sessions online `~<hash>`. The hashes are HMACs with the admin's secret, so nobody without it can
test whether a given JID is in the store. Without pseudonymize, keys are the bare JIDs and
resources themselves.
"""

from __future__ import annotations

import hashlib
import hmac

_SESSION = b"session\0"  # keeps session hashes apart from user hashes
MIN_SECRET_LENGTH = 16  # characters of `pseudonym_secret`: shorter ones can be guessed


class Pseudonyms:
    """How users are keyed in a store: plain bare JIDs (no key), or pseudonyms (a key)."""

    def __init__(self, key: bytes | None) -> None:
        self._key = key

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def user(self, bare_jid: str) -> str:
        """How a user is keyed: the bare JID, or with a key `~<hash>@example.org`."""
        if self._key is None:
            return bare_jid
        # HMAC(key, JID): unchanged since the first release, so existing stores keep their keys.
        return f"~{self._digest(bare_jid.encode())}@{bare_jid.rpartition('@')[2]}"

    def session(self, resource: str) -> str:
        """How a session (a resource) is kept in a user's record: itself, or `~<hash>`."""
        if self._key is None:
            return resource
        return "~" + self._digest(_SESSION + resource.encode())

    def _digest(self, message: bytes) -> str:
        assert self._key is not None
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:32]

    def mode_mismatch(self, store_is_pseudonymized: bool) -> str | None:
        """Why a store written in the other mode cannot be used (None: it can)."""
        if store_is_pseudonymized == self.enabled:
            return None
        state = "pseudonymized" if store_is_pseudonymized else "keyed by plain JIDs"
        return (
            f"this store is {state}, but [privacy] pseudonymize = {str(self.enabled).lower()}: "
            "set it back, or start a new store (a store cannot be converted: the keyed hashes "
            "cannot be reversed)"
        )
