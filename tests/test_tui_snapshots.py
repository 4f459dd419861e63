"""SVG snapshots of the TUI's main screens (checked in under tests/__snapshots__), so layout changes are seen.

Update them deliberately with `pytest tests/test_tui_snapshots.py --snapshot-update` and review the SVGs.
The daemon here serves the built-in model with a fresh session folder holding one conversation, so the
screens are the same on every run.
"""

from __future__ import annotations

import pytest
from conftest import DaemonThread
from textual.widgets import Input

from rwkv_hub.adapters.tui.app import RwkvApp
from rwkv_hub.core.builtin import BUILTIN_MODEL
from rwkv_hub.hub.config import Config

TOKEN = "snapshot-token"


@pytest.fixture(scope="module")
def daemon(model_factory, tmp_path_factory):
    server = DaemonThread()
    hub = server.hub(model_factory(BUILTIN_MODEL), tmp_path_factory.mktemp("snap-sessions"))
    hub.engine.sessions.create("notes")
    running = server.start(hub, Config(port=0), TOKEN)
    yield running
    server.stop(running).result(60)
    server.close()


async def ready(pilot) -> None:
    """Connected, the conversation shown, and every worker (connecting, loading) finished."""
    for _ in range(200):
        if pilot.app.connection == "connected" and pilot.app.session:
            break
        await pilot.pause(0.05)
    await pilot.app.workers.wait_for_complete()
    for field in pilot.app.query(Input):
        field.cursor_blink = False  # a blinking cursor would make the picture depend on the moment
    await pilot.pause(0.3)


@pytest.mark.parametrize("size", [(80, 24), (130, 40)], ids=["80x24", "130x40"])
def test_main_screen(daemon, snap_compare, size):
    assert snap_compare(RwkvApp(daemon.url, TOKEN, autostart=False), terminal_size=size, run_before=ready)


def test_help_screen(daemon, snap_compare):
    async def help_open(pilot):
        await ready(pilot)
        await pilot.press("f1")
        await pilot.pause(0.2)

    assert snap_compare(RwkvApp(daemon.url, TOKEN, autostart=False), terminal_size=(80, 24), run_before=help_open)


def test_light_theme(daemon, snap_compare):
    async def light(pilot):
        await ready(pilot)
        pilot.app.theme = "textual-light"
        await pilot.pause(0.2)

    assert snap_compare(RwkvApp(daemon.url, TOKEN, autostart=False), terminal_size=(130, 40), run_before=light)
