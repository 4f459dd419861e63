"""Finding the daemon for the TUI: connect to a running one, or start a local one and stop it on exit."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import urllib.request

from ...hub.config import DEFAULT_PORT
from ...hub.token import get_token
from ..client import Client

START_TIMEOUT_S = 120


class LocalDaemon:
    """A `rwkv-hub serve` started by the TUI because none was running; `stop()` ends it."""

    def __init__(self, port: int, model: str | None):
        cmd = [sys.executable, "-m", "rwkv_hub", "serve", "--port", str(port)]
        if model:
            cmd += ["--model", model]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.url: str | None = None

    async def ready(self) -> str:
        loop = asyncio.get_running_loop()
        line = await asyncio.wait_for(loop.run_in_executor(None, self.proc.stdout.readline), START_TIMEOUT_S)
        if " on http" not in line:
            self.stop()
            raise ConnectionError("the local daemon did not start (run `rwkv-hub serve` to see why)")
        self.url = line.rsplit(" ", 1)[-1].strip()
        return self.url

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def daemon_running(url: str) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


async def connect(
    url: str | None, token: str | None, autostart: bool, model: str | None = None
) -> tuple[Client, LocalDaemon | None]:
    """A connected client, and the daemon this started (None when one was already running)."""
    base = url or f"http://127.0.0.1:{DEFAULT_PORT}"
    started = None
    if not await asyncio.get_running_loop().run_in_executor(None, daemon_running, base):
        if not autostart:
            raise ConnectionError(f"no rwkv-hub daemon at {base}; start one with `rwkv-hub serve`")
        port = int(base.rsplit(":", 1)[-1].split("/")[0]) if url else DEFAULT_PORT
        started = LocalDaemon(port, model)
        base = await started.ready()
    token = token or os.environ.get("RWKV_HUB_TOKEN") or get_token()
    client = Client(base.replace("http", "ws", 1).rstrip("/") + "/ws", token=token, retries=2)
    await client.connect()
    return client, started
