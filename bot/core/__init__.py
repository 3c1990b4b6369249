"""The core: the per-user record, client families, the index that counts; no I/O."""
