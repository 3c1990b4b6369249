"""The store: records on disk, the codec, pseudonyms, the SQLite mapping, the lock."""
