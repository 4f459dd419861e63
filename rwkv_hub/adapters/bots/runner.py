"""Starting and stopping bots: with the daemon (`[bots.NAME] enabled = true`) or alone (`rwkv-hub bot`).

Every bot talks to the daemon through the WebSocket client, the same way when the daemon starts it as
when it runs in a process of its own, so a bot never depends on where it runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from ...core.errors import RWKVHubError
from ..client import Client

log = logging.getLogger("rwkv_hub.bots")


class BotRunner:
    """Bots built from their registered factories and config tables, each running as a task."""

    def __init__(
        self, registered: Mapping[str, Any], tables: Mapping[str, dict[str, Any]], url: str, token: str | None
    ):
        self.registered = registered
        self.tables = tables
        self.url = url
        self.token = token
        self.bots: dict[str, Any] = {}
        self.clients: dict[str, Client] = {}
        self.tasks: dict[str, asyncio.Task] = {}

    def build(self, names: list[str]) -> None:
        """Make the named bots; a bad name or setting is an error before anything runs."""
        for name in names:
            if name not in self.registered:
                known = ", ".join(sorted(self.registered)) or "none"
                raise RWKVHubError(f"no bot named {name!r}; the plugins offer: {known}")
            table = {k: v for k, v in self.tables.get(name, {}).items() if k != "enabled"}
            client = self.clients[name] = Client(self.url, token=self.token, retries=0)
            self.bots[name] = self.registered[name].factory(name, table, client)

    def enabled(self) -> list[str]:
        return [name for name, table in self.tables.items() if table.get("enabled")]

    def start(self, url: str | None = None) -> None:
        """Run the built bots; `url` is the daemon's, when it was not known at `build` (the daemon knows
        its port only once it listens)."""
        for client in self.clients.values() if url else ():
            client.url = url
        for name, bot in self.bots.items():
            self.tasks[name] = asyncio.create_task(self._run(name, bot))

    async def _run(self, name: str, bot: Any) -> None:
        try:
            await bot.run()
        except asyncio.CancelledError:
            raise
        except Exception:  # a broken bot stops alone; the daemon and the other bots go on
            log.exception("bot %s stopped after an error", name)

    async def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        for client in self.clients.values():
            await client.close()
        self.tasks.clear()
