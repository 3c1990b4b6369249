"""Pseudonyms (bot/storage/pseudonym.py): one per user and per session, the same for the same JID,
kept apart from each other, and unchanged from one release to the next (stores keep their keys)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.storage.pseudonym import Pseudonyms

KEY = b"k" * 32


def test_a_pseudonym_is_fixed_forever_for_a_key_and_a_jid():
    """Known answers, written down once: a change of the hash, its length or its input would
    re-key every existing store (its users would all look new)."""
    pseudonyms = Pseudonyms(KEY)
    assert pseudonyms.user("alice@example.test") == "~421fd4c4ee3cdd333e301a6a6d111731@example.test"
    assert pseudonyms.session("phone") == "~3bb5138aa6ed267b3790ea404ca309d8"


@given(st.lists(st.text(min_size=1, max_size=20), min_size=2, max_size=10, unique=True))
def test_different_users_and_sessions_get_different_pseudonyms(names):
    pseudonyms = Pseudonyms(KEY)
    users = [pseudonyms.user(f"{name}@example.test") for name in names]
    sessions = [pseudonyms.session(name) for name in names]
    assert len(set(users)) == len(names)
    assert len(set(sessions)) == len(names)
    # A session named like a user's localpart is not that user's hash.
    assert not {user.partition("@")[0] for user in users} & set(sessions)
    assert users == [pseudonyms.user(f"{name}@example.test") for name in names]  # stable


def test_the_domain_is_kept_and_nothing_else_of_the_jid():
    user = Pseudonyms(KEY).user("alice@example.test")
    assert user.endswith("@example.test")
    assert "alice" not in user
    assert Pseudonyms(KEY).user("alice@other.test").endswith("@other.test")


def test_another_secret_gives_other_pseudonyms():
    assert Pseudonyms(KEY).user("a@example.test") != Pseudonyms(b"o" * 32).user("a@example.test")
    assert Pseudonyms(KEY).session("phone") != Pseudonyms(b"o" * 32).session("phone")


def test_without_a_key_users_and_sessions_are_themselves():
    plain = Pseudonyms(None)
    assert not plain.enabled
    assert plain.user("alice@example.test") == "alice@example.test"
    assert plain.session("phone") == "phone"


@pytest.mark.parametrize(
    ("key", "store_is_pseudonymized", "refused"),
    [(KEY, True, False), (None, False, False), (KEY, False, True), (None, True, True)],
)
def test_a_store_of_the_other_mode_is_refused(key, store_is_pseudonymized, refused):
    why = Pseudonyms(key).mode_mismatch(store_is_pseudonymized)
    assert (why is not None) == refused
    if refused:
        assert "cannot be converted" in why
