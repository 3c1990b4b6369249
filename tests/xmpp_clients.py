"""Real slixmpp clients for tests: log in to the sandbox Prosody on loopback, and log out.

The code lives in bot/clients.py, shared with the demo (`xmpp-active-users demo`).
"""

from __future__ import annotations

from bot.testbed.clients import PLUGINS, connect_client, disconnect_client

__all__ = ["PLUGINS", "connect_client", "disconnect_client"]
