"""Real slixmpp clients: log in to a sandbox Prosody on loopback, and log out.

Used by the demo (`xmpp-active-users demo`) and by the integration tests.
"""

from __future__ import annotations

import asyncio
import contextlib

import slixmpp

from .sandbox import ProsodySandbox

PLUGINS = ("xep_0030", "xep_0004", "xep_0050")  # disco, forms, ad-hoc commands


async def connect_client(
    prosody: ProsodySandbox,
    jid: str,
    password: str,
    resource: str = "test",
    *,
    presence: bool = True,
    plugins: tuple[str, ...] = (),
    caps_node: str | None = None,
    timeout: float = 10,
) -> slixmpp.ClientXMPP:
    """Log in (no TLS, plain auth: loopback only) and wait for session_start.

    `plugins`: more slixmpp plugins, e.g. "xep_0198" (stream management, as mobile clients do).
    `caps_node`: announce XEP-0115 entity capabilities with this node in every available
    presence, through slixmpp's own xep_0115 plugin (its `ver`: the hash of the client's disco
    features, as real clients compute it); None: no caps.
    Fails fast on a refused password or connection instead of waiting for the timeout.
    """
    client = slixmpp.ClientXMPP(f"{jid}/{resource}" if resource else jid, password)
    for plugin in (*PLUGINS, *plugins):
        client.register_plugin(plugin)
    if caps_node is not None:
        client.register_plugin("xep_0115", {"caps_node": caps_node})
    client.enable_starttls = False
    client.enable_direct_tls = False
    client.enable_plaintext = True
    client.plugin["feature_mechanisms"].unencrypted_plain = True

    outcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def settle(error: str | None) -> None:
        if not outcome.done():
            if error is None:
                outcome.set_result(None)
            else:
                outcome.set_exception(ConnectionError(f"{jid}: {error}"))

    client.add_event_handler("session_start", lambda _: settle(None))
    client.add_event_handler("failed_all_auth", lambda _: settle("authentication refused"))
    client.add_event_handler("connection_failed", lambda e: settle(f"connection failed: {e}"))
    client.connect("127.0.0.1", prosody.c2s_port)
    try:
        await asyncio.wait_for(outcome, timeout)
    except BaseException:
        # slixmpp would keep retrying in the background: stop it before reporting.
        client.cancel_connection_attempt()
        client.abort()
        raise
    if caps_node is not None:  # the hash of our features first, then the presence carrying it
        await client.plugin["xep_0115"].update_caps(broadcast=False)
    if presence:
        client.send_presence()
    return client


async def disconnect_client(client: slixmpp.ClientXMPP, timeout: float = 5) -> None:
    """Close the stream and wait until slixmpp reports `disconnected`."""
    disconnected: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_disconnected(_: object) -> None:
        if not disconnected.done():
            disconnected.set_result(None)

    # Registered before disconnect(): when already offline it fires the event synchronously.
    client.add_event_handler("disconnected", on_disconnected, disposable=True)
    closing = client.disconnect(wait=timeout)
    try:
        await asyncio.wait_for(disconnected, timeout)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(closing, timeout)
