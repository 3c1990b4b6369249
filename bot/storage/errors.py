"""The store's errors: each message says what is wrong and what to do, in one line."""

from __future__ import annotations


class StoreError(Exception):
    """The store cannot be used; the message says why and what to do."""


class StoreLockedError(StoreError):
    """Another process has the store open for writing."""


class StoreCorruptError(StoreError):
    """The file is not a store of ours (or not a readable one). It is never modified."""


class StoreResourceError(StoreError):
    """The system refused the store a resource (descriptors, memory, disk space, permission):
    nothing is wrong with the file, and the message names the limit to raise."""
