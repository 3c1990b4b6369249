"""`import` on the stores that Prosody itself writes (not hand-written files), on 0.12 and 13.

A real client logs in and out; Prosody records it (mod_lastlog2 on both versions; on 13 also its
core mod_account_activity, which 0.12 does not have); the admin's `import` command reads
Prosody's data folder, and the store must hold the times Prosody recorded, as Prosody's own
storage API reads them back.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from bot.storage.store import Store
from bot.testbed.clients import connect_client, disconnect_client

from .support import MINIMAL, write

pytestmark = pytest.mark.asyncio

# What each version records: mod_account_activity is new in Prosody 13.
SOURCES = {"0.12": ("prosody-lastlog2",), "13": ("prosody-lastlog2", "prosody-account-activity")}
# store name -> the timestamps a login then a logout leave there, by path in its record
FIELDS = {"lastlog2": ("login.timestamp", "logout.timestamp"), "account_activity": ("timestamp",)}


def stored(prosody, store: str, user: str, path: str) -> int | None:
    """A timestamp of `user`'s record in `store`, as Prosody's storage API reads it."""
    keys = path.split(".")
    # d and d["login"] and d["login"]["timestamp"]: nil, not an error, while it is missing
    lookup = " and ".join(
        "d" + "".join(f'["{key}"]' for key in keys[:n]) for n in range(len(keys) + 1)
    )
    out = prosody.shell(
        "> (function() "
        f'local d = require "core.storagemanager".open("example.test", "{store}"):get("{user}") '
        f"return {lookup} end)()"
    )
    value = out.strip().removeprefix("Result: ")
    return None if value in ("nil", "false") else int(value)


def wait_stored(prosody, store: str, user: str, path: str, since: int, timeout: float = 10):
    """Prosody writes at session unbind, which the client's disconnect does not wait for."""
    deadline = time.monotonic() + timeout
    while (value := stored(prosody, store, user, path)) is None or value < since:
        assert time.monotonic() < deadline, f"Prosody recorded no {store} {path} for {user}"
        time.sleep(0.1)  # polling: Prosody gives no event when it has written
    return value


async def test_import_reads_what_prosody_recorded(prosody, tmp_path):
    version = prosody.install.version
    user = f"imported_{version}"
    prosody.register(user, "pw")
    began = int(time.time())
    client = await connect_client(prosody, f"{user}@example.test", "pw", resource="pc")
    # Into the next second, so that the login and the logout times differ (Prosody's are whole
    # seconds): a login taken for a logout, or the reverse, shows.
    await asyncio.sleep(1.05 - time.time() % 1)
    await disconnect_client(client)
    ended = int(time.time()) + 1

    for source in SOURCES[version]:  # each into a store of its own
        (tmp_path / source).mkdir()
        config = write(tmp_path / source, MINIMAL)
        store = source.removeprefix("prosody-").replace("-", "_")
        recorded = [wait_stored(prosody, store, user, path, began) for path in FIELDS[store]]
        assert all(began <= stamp <= ended for stamp in recorded), recorded
        assert recorded[-1] > began  # the logout's

        result = subprocess.run(
            [sys.executable, "-m", "bot", "import", "-c", str(config), "--from", source,
             str(prosody.data_path)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert "rejected" not in result.stdout, result.stdout
        with Store(tmp_path / source / "data" / "activity.db", readonly=True) as bot_store:
            record = bot_store.get(f"{user}@example.test")
        print(f"\nProsody {version}, {source}: Prosody recorded {recorded}; imported {record}")
        if store == "lastlog2":
            assert (record.last_login, record.last_logout) == tuple(recorded)
        else:  # one "last seen" time: imported as the last logout (the seed's rule agrees)
            assert record.last_logout == recorded[0]
