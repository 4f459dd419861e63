"""`rwkv-hub serve`: build the model, plugins, engine and hub from the config, and serve until stopped.

Ctrl-C or SIGTERM stops taking requests, cancels running streams, saves sessions and exits cleanly.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from ..core.errors import RWKVHubError
from ..hub.config import Config
from ..hub.hub import Hub
from ..hub.plugins import PluginHost
from ..hub.token import get_token
from .bots.runner import BotRunner
from .server import Daemon

log = logging.getLogger("rwkv_hub")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
UNRESOLVED_HINT = "; give a name or address of this machine"  # after the resolver's reason


class ListenError(RWKVHubError):
    """The address cannot be listened on (the port is taken, or the host is not this machine's)."""


@dataclass
class Running:
    daemon: Daemon
    runner: web.AppRunner
    url: str
    bots: BotRunner | None = None

    async def stop(self) -> None:
        if self.bots is not None:
            await self.bots.stop()
        await self.daemon.close_connections()
        await self.runner.cleanup()
        await self.daemon.hub.engine.stop()
        self.daemon.hub.host.call("daemon_stopping", hub=self.daemon.hub)


def build_hub(config: Config):
    """Model, plugins (with the config's preset overrides), engine with cache and sessions."""
    import rwkv_hub

    from ..core.engine import Engine
    from ..core.prefix_cache import PrefixCache, default_budget
    from ..core.sessions import SessionStore, prepare_folder

    prepare_folder(config.sessions_path())  # an unusable folder is said before the model loads
    path = Path(config.model).expanduser() if config.model else None
    model = rwkv_hub.load(path, config.strategy)  # no model configured: the demo model, with a notice
    host = PluginHost.from_config(config)
    limits = config.limits.engine()
    state_bytes = model.new_state().nbytes
    cache = PrefixCache(config.cache_mb * 2**20 if config.cache_mb is not None else default_budget(state_bytes))
    sessions = SessionStore(model.state_shape, config.sessions_path())
    return Hub(Engine(model, limits, cache, sessions), host)


async def start(config: Config, token: str, hub: Hub | None = None, engine_thread: bool = True) -> Running:
    """Start serving on config.host:config.port (port 0: any free port); returns what `stop()` ends.

    With `engine_thread=False` the caller runs the engine's loop itself (`hub.engine.run()`).
    """
    hub = hub or build_hub(config)
    bots = BotRunner(hub.host.bots, config.bots, "", token)
    bots.build(bots.enabled())  # bad bot settings stop the start here, before anything runs
    hub.engine.start(thread=engine_thread)
    daemon = Daemon(hub, config, token)
    # handler_cancellation: a client that disconnects cancels its handler, and so its generation, also
    # while a non-streaming request waits for the whole text (aiohttp's default leaves it running).
    runner = web.AppRunner(
        daemon.app(), handle_signals=False, access_log=None, shutdown_timeout=5, handler_cancellation=True
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        await hub.engine.stop()
        hint = " (is another daemon running there?)" if e.errno == errno.EADDRINUSE else ""
        where = f"{_url_host(config.host)}:{config.port}"
        if isinstance(e, socket.gaierror):  # a host name that does not resolve
            reason, hint = e.strerror, UNRESOLVED_HINT
        else:
            reason = os.strerror(e.errno) if e.errno else str(e)  # asyncio's strerror repeats the address
        raise ListenError(f"cannot listen on {where}: {reason}{hint}") from None
    port = site._server.sockets[0].getsockname()[1]
    hub.host.call("daemon_started", hub=hub)
    url = f"http://{_url_host(config.host)}:{port}"
    bots.start(url.replace("http", "ws", 1) + "/ws")  # the bots reach this daemon like any other client
    return Running(daemon, runner, url, bots)


def _check_host(host: str) -> None:
    """A host name that does not resolve is said before the model loads, not after."""
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ListenError(f"cannot listen on {host}: {e.strerror}{UNRESOLVED_HINT}") from None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def serve(config: Config, token: str | None = None, allow_remote: bool = False) -> int:
    """Run until interrupted; returns the exit status."""
    if config.host not in LOCAL_HOSTS and not allow_remote:
        print(
            f"rwkv-hub: error: host {config.host!r} is not local; pass --allow-remote to listen there "
            "(anyone who can reach it and has the token can use the model)",
            file=sys.stderr,
        )
        return 2
    _check_host(config.host)
    if config.host not in LOCAL_HOSTS:
        log.warning("listening on %s: other machines can reach this daemon; keep the token secret", config.host)
    token = get_token(token)
    hub = build_hub(config)
    # The event loop (HTTP, WebSocket) gets a thread of its own; the model runs in this, the main thread,
    # which loaded it: torch's CPU threads serve it fastest there (docs/engine.md).
    loop = asyncio.new_event_loop()
    server = threading.Thread(target=loop.run_forever, name="rwkv-hub-server", daemon=True)
    server.start()
    try:
        running = asyncio.run_coroutine_threadsafe(start(config, token, hub, engine_thread=False), loop).result()
    except ListenError:
        loop.call_soon_threadsafe(loop.stop)
        raise  # one line on stderr and exit status 2, as every user error (cli.main)
    model = hub.engine.model
    print(f"rwkv-hub: serving {model.path.name} ({model.strategy.name}) on {running.url}", flush=True)
    print(f"  WebSocket: {running.url.replace('http', 'ws', 1)}/ws   OpenAI API: {running.url}/v1", flush=True)
    print(
        "  every request needs the header 'Authorization: Bearer <token>'; `rwkv-hub token` prints the token",
        flush=True,
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: hub.engine.request_stop())
    hub.engine.run()  # until a signal
    print("rwkv-hub: stopping: cancelling streams, saving sessions", flush=True)
    asyncio.run_coroutine_threadsafe(running.stop(), loop).result(60)
    loop.call_soon_threadsafe(loop.stop)
    server.join(10)
    return 0
