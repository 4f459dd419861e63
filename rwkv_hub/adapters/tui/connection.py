"""Finding the daemon for the TUI: connect to a running one, or start a local one and stop it on exit."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

from ...core.errors import RWKVHubError
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
        # stderr goes to a file, not a pipe nobody reads (a full pipe would stall the daemon), so that why
        # it did not start can be said
        self.log = tempfile.TemporaryFile(mode="w+", prefix="rwkv-hub-tui-daemon-")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.url: str | None = None

    async def ready(self) -> str:
        """The daemon's URL once it says it is serving (notices before that line are skipped)."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + START_TIMEOUT_S
        line = "-"
        try:
            while line and " on http" not in line:
                left = max(deadline - time.monotonic(), 0.1)
                line = await asyncio.wait_for(loop.run_in_executor(None, self.proc.stdout.readline), left)
        except TimeoutError:
            self.stop()
            raise ConnectionError(f"the local daemon did not start within {START_TIMEOUT_S} s") from None
        if " on http" not in line:
            if not line:  # its output ended: it is exiting; its status tells a user error from a crash
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
            self.stop()
            said = f"the local daemon did not start: {self.reason()}"
            if self.proc.returncode == 2:  # a user error (a bad --model, config or port): starting again repeats it
                raise RWKVHubError(said)
            raise ConnectionError(said)
        self.url = line.rsplit(" ", 1)[-1].strip()
        return self.url

    def reason(self) -> str:
        """The daemon's last line on stderr (its error), or where to look."""
        self.log.seek(0)
        lines = [line.strip() for line in self.log.read()[-4000:].splitlines() if line.strip()]
        return lines[-1] if lines else "run `rwkv-hub serve` to see why"

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


def daemon_base(url: str | None) -> tuple[str, int]:
    """The daemon's HTTP base URL and port from `--url`: http(s)://host[:port] or the WebSocket URL the bots
    take (ws://host:port/ws); the port defaults to the daemon's."""
    parts = urllib.parse.urlsplit(url or f"http://127.0.0.1:{DEFAULT_PORT}")
    scheme = {"http": "http", "ws": "http", "https": "https", "wss": "https"}.get(parts.scheme)
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        port = None
    if scheme is None or not parts.hostname or port is None or parts.path.rstrip("/") not in ("", "/ws"):
        raise RWKVHubError(
            f"--url {url!r} is not a daemon address; give http://HOST:PORT (or ws://HOST:PORT/ws), "
            f"e.g. http://127.0.0.1:{DEFAULT_PORT}"
        )
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{scheme}://{host}:{port}", port


async def connect(
    url: str | None, token: str | None, autostart: bool, model: str | None = None
) -> tuple[Client, LocalDaemon | None]:
    """A connected client, and the daemon this started (None when one was already running)."""
    base, port = daemon_base(url)
    started = None
    if not await asyncio.get_running_loop().run_in_executor(None, daemon_running, base):
        if not autostart:
            raise ConnectionError(f"no rwkv-hub daemon at {base}; start one with `rwkv-hub serve`")
        started = LocalDaemon(port, model)
        base = await started.ready()
    token = token or os.environ.get("RWKV_HUB_TOKEN") or get_token()
    client = Client(base.replace("http", "ws", 1).rstrip("/") + "/ws", token=token, retries=2)
    await client.connect()
    return client, started
