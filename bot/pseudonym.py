"""Pseudonyms: users keyed by a keyed hash of their JID instead of the JID itself.

With `[privacy] pseudonymize`, the store never holds a localpart: a user is `~<hash>@<domain>`,
the domain kept so that counts per domain still work. The hash is an HMAC with the admin's
secret, so nobody without it can test whether a given JID is in the store.
"""

from __future__ import annotations

import hashlib
import hmac
import re

_PSEUDONYM = re.compile(r"~[0-9a-f]{32}@[^@/]+")


class Pseudonyms:
    """How users are keyed in a store: plain bare JIDs (no key), or pseudonyms (a key)."""

    def __init__(self, key: bytes | None) -> None:
        self._key = key

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def identity(self, bare_jid: str) -> str:
        """The bare JID, or with a key `~<hash>@example.org`. Pseudonyms pass through."""
        if self._key is None or _PSEUDONYM.fullmatch(bare_jid):
            return bare_jid
        digest = hmac.new(self._key, bare_jid.encode(), hashlib.sha256).hexdigest()
        return f"~{digest[:32]}@{bare_jid.rpartition('@')[2]}"

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
