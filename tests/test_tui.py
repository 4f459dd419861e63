"""The terminal UI, piloted by Textual's `run_test()` against a real daemon serving the built-in model."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest
from conftest import DaemonThread
from textual.widgets import Input, ListView, Markdown, Select, Static

from rwkv_hub.adapters.tui.app import RwkvApp
from rwkv_hub.core.builtin import BUILTIN_MODEL
from rwkv_hub.core.errors import RWKVHubError
from rwkv_hub.hub.config import Config

TOKEN = "tui-test-token"


@pytest.fixture(scope="module")
def daemon(model_factory, tmp_path_factory):
    server = DaemonThread()
    hub = server.hub(model_factory(BUILTIN_MODEL), tmp_path_factory.mktemp("tui-sessions"), cache_bytes=2**26)
    running = server.start(hub, Config(port=0), TOKEN)
    yield running
    server.stop(running).result(60)
    server.close()


def app_for(daemon) -> RwkvApp:
    return RwkvApp(daemon.url, TOKEN, autostart=False)


async def connected(pilot) -> None:
    for _ in range(200):
        if pilot.app.connection == "connected" and pilot.app.session:
            return
        await pilot.pause(0.05)
    raise AssertionError(f"never connected: {pilot.app.connection}")


async def new_conversation(pilot) -> None:
    """Ctrl+N, then wait until the new conversation is the one shown."""
    old = pilot.app.session
    await pilot.press("ctrl+n")
    for _ in range(200):
        await pilot.pause(0.05)
        if pilot.app.session != old:
            break
    await pilot.pause(0.2)


async def wait_idle(pilot, done: int | None = None) -> None:
    """Until `done` replies have finished (by default: one more than when the last message was sent)."""
    target = pilot.app.sent_at + 1 if done is None else done
    for _ in range(1200):
        await pilot.pause(0.05)
        if pilot.app.replies >= target and pilot.app.request is None:
            return
    raise AssertionError("the reply never finished")


async def type_and_send(pilot, text: str) -> None:
    pilot.app.sent_at = pilot.app.replies
    pilot.app.query_one("#prompt", Input).value = text
    pilot.app.query_one("#prompt", Input).focus()
    await pilot.press("enter")
    await pilot.pause(0.1)


async def greedy_conversation(pilot, max_tokens: int, mode: str | None = None) -> None:
    """Connected, in a new conversation, with greedy sampling (the same reply again) of `max_tokens`."""
    await connected(pilot)
    await new_conversation(pilot)
    pilot.app.query_one("#p-max_tokens", Input).value = str(max_tokens)
    pilot.app.query_one("#p-top_p", Input).value = "0"
    if mode:
        pilot.app.query_one("#mode", Select).value = mode
        await pilot.pause(0.1)


async def regenerate(pilot) -> None:
    """Ctrl+R, and wait until the new reply has finished."""
    pilot.app.sent_at = pilot.app.replies
    await pilot.press("ctrl+r")
    await pilot.pause(0.2)
    await wait_idle(pilot)


def replies(app) -> list[str]:
    return [m.source for m in app.query_one("#messages").query(Markdown) if m.has_class("assistant")]


def test_send_streams_a_reply_and_the_status_shows_it(daemon):
    async def go():
        async with app_for(daemon).run_test(size=(120, 40)) as pilot:
            await connected(pilot)
            pilot.app.query_one("#p-max_tokens", Input).value = "20"
            await type_and_send(pilot, "What does `os.path.join` do?")
            await wait_idle(pilot)
            status = str(pilot.app.query_one("#status", Static).render())
            return replies(pilot.app), status, pilot.app.session

    got, status, sid = asyncio.run(go())
    assert got and got[-1].strip()
    assert "tok/s" in status and "connected" in status and "rwkv7-stdlib-demo" in status


def test_stop_cancels_at_once(daemon):
    async def go():
        async with app_for(daemon).run_test(size=(120, 40)) as pilot:
            await connected(pilot)
            pilot.app.query_one("#p-max_tokens", Input).value = "4000"
            pilot.app.query_one("#p-temperature", Input).value = "2"
            await type_and_send(pilot, "Write a long story.")
            await pilot.pause(0.3)
            await pilot.press("escape")
            await wait_idle(pilot)
            return pilot.app.stats["tokens"]

    assert asyncio.run(go()) < 4000


def test_regenerate_rewinds_and_replaces_the_last_reply(daemon):
    async def go():
        async with app_for(daemon).run_test(size=(120, 40)) as pilot:
            await greedy_conversation(pilot, 12)
            await type_and_send(pilot, "hi")
            await wait_idle(pilot)
            first = replies(pilot.app)
            await regenerate(pilot)
            second = replies(pilot.app)
            transcript = await pilot.app.client.get_session(pilot.app.session)
            return first, second, transcript

    first, second, transcript = asyncio.run(go())
    assert len(first) == len(second) == 1 and first == second
    assert [m["role"] for m in transcript["transcript"]] == ["user", "assistant"] and transcript["turns"] == 1


def test_preset_fills_the_panel_and_mode_follows(daemon):
    async def go():
        async with app_for(daemon).run_test(size=(120, 40)) as pilot:
            await connected(pilot)
            pilot.app.query_one("#preset", Select).value = "keywords"
            for _ in range(100):  # the preset fills the panel and switches the mode: wait for the last of it
                await pilot.pause(0.05)
                if pilot.app.query_one("#instruction", Input).has_class("shown"):
                    break
            values = {n: pilot.app.query_one(f"#p-{n}", Input).value for n in ("temperature", "top_p")}
            mode = pilot.app.query_one("#mode", Select).value
            shown = pilot.app.query_one("#instruction", Input).has_class("shown")
            pilot.app.query_one("#p-top_p", Input).value = "7"
            await pilot.pause(0.1)
            invalid = pilot.app.query_one("#p-top_p", Input).has_class("-invalid")
            return values, mode, shown, invalid

    values, mode, shown, invalid = asyncio.run(go())
    assert values == {"temperature": "1.0", "top_p": "0.0"} and mode == "instruction" and shown and invalid


async def first_message(pilot, text: str, max_tokens: int) -> None:
    """Once connected, send `text` in a new conversation and wait for the reply."""
    await connected(pilot)
    await new_conversation(pilot)
    pilot.app.query_one("#p-max_tokens", Input).value = str(max_tokens)
    await type_and_send(pilot, text)
    await wait_idle(pilot)


def test_conversations_persist_across_a_restart_of_the_tui(daemon):
    async def first():
        async with app_for(daemon).run_test(size=(120, 40)) as pilot:
            await first_message(pilot, "remember me", 5)
            return pilot.app.session

    async def second(sid):
        async with app_for(daemon).run_test(size=(120, 40)) as pilot:
            await connected(pilot)
            names = [item.name for item in pilot.app.query_one("#sessions", ListView).children]
            await pilot.app.show_session(sid)
            await pilot.pause(0.1)
            texts = [m.source for m in pilot.app.query_one("#messages").query(Markdown)]
            return names, texts

    sid = asyncio.run(first())
    names, texts = asyncio.run(second(sid))
    assert sid in names and texts[0] == "remember me"


def test_switching_to_an_empty_conversation_forgets_the_last_message(daemon):
    """Regenerate (Ctrl+R) and edit (F2) act on the shown conversation's last message, not another's."""

    async def go():
        async with app_for(daemon).run_test(size=(120, 40)) as pilot:
            await first_message(pilot, "a message here", 3)
            before = pilot.app.last_user
            await new_conversation(pilot)
            await pilot.pause(0.2)
            return before, pilot.app.last_user

    before, after = asyncio.run(go())
    assert before == "a message here" and after is None


async def until_not_connected(pilot) -> None:
    """Wait (up to 5 s) until the app has given up on the daemon it was pointed at."""
    for _ in range(100):
        await pilot.pause(0.05)
        if "not connected" in pilot.app.connection:
            return


def test_an_unreachable_daemon_is_reported_not_a_crash():
    async def go():
        async with RwkvApp("http://127.0.0.1:9", TOKEN, autostart=False).run_test(size=(100, 30)) as pilot:
            await until_not_connected(pilot)
            return str(pilot.app.query_one("#status", Static).render())

    status = asyncio.run(go())
    assert "not connected" in status and "rwkv-hub serve" in status


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)")
def test_in_a_real_terminal(tmp_path):
    """tmux runs `rwkv-hub tui`, which starts its own daemon; keys go in, the pane shows the streamed reply,
    and quitting stops the daemon it started."""
    port = _free_port()
    session = f"rwkv-hub-test-{port}"
    cmd = f"XDG_CONFIG_HOME={tmp_path} {sys.executable} -m rwkv_hub tui --url http://127.0.0.1:{port}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "40", cmd], check=True)
    try:
        pane = _wait_for_pane(session, "connected")
        subprocess.run(["tmux", "send-keys", "-t", session, "What does json.dumps do?", "Enter"], check=True)
        pane = _wait_for_pane(session, "tok/s", lambda p: " 0.0 tok/s" not in p)
        assert "json.dumps do?" in pane  # the message may wrap in a narrow pane
        assert re.search(r"reply [1-9]\d* tokens", pane), pane
        subprocess.run(["tmux", "send-keys", "-t", session, "C-q"], check=True)
        deadline = time.time() + 30
        while time.time() < deadline and _serving(port):
            time.sleep(0.2)
        assert not _serving(port), "the daemon the TUI started is still running"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serving(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_for_pane(session: str, text: str, also=lambda pane: True, timeout: float = 90) -> str:
    deadline = time.time() + timeout
    pane = ""
    while time.time() < deadline:
        pane = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout
        if text in pane and also(pane):
            return pane
        time.sleep(0.3)
    raise AssertionError(f"{text!r} never appeared:\n{pane}")


def test_the_daemon_going_away_and_coming_back(model_factory, tmp_path):
    model = model_factory(BUILTIN_MODEL)
    port = _free_port()
    server = DaemonThread()

    def launch():
        return server.start(server.hub(model, tmp_path), Config(port=port), TOKEN)

    async def go():
        async with RwkvApp(f"http://127.0.0.1:{port}", TOKEN, autostart=False).run_test(size=(100, 30)) as pilot:
            await until_not_connected(pilot)
            away = pilot.app.connection
            running = launch()  # the daemon comes (back)
            for _ in range(300):
                await pilot.pause(0.05)
                if pilot.app.connection == "connected":
                    break
            back = pilot.app.connection
            await asyncio.wrap_future(server.stop(running))
            return away, back

    away, back = asyncio.run(go())
    server.close()
    assert "not connected" in away and back == "connected"


def test_continuation_writes_in_place_and_few_shot_takes_examples(daemon):
    from rwkv_hub.adapters.tui.app import parse_examples

    assert parse_examples("hi => bonjour ;; thanks => merci ;; junk") == [["hi", "bonjour"], ["thanks", "merci"]]

    async def go():
        async with app_for(daemon).run_test(size=(120, 40)) as pilot:
            await connected(pilot)
            await new_conversation(pilot)
            pilot.app.query_one("#p-max_tokens", Input).value = "8"
            pilot.app.query_one("#mode", Select).value = "raw"
            await pilot.pause(0.1)
            await type_and_send(pilot, "def main():")
            await wait_idle(pilot)
            await type_and_send(pilot, "    return")
            await wait_idle(pilot)
            box = pilot.app.query_one("#messages")
            pads = [m.source for m in box.query(".pad")]
            others = len(box.query(".user")) + len(box.query(".assistant"))
            pilot.app.query_one("#mode", Select).value = "few-shot"
            await pilot.pause(0.1)
            shown = pilot.app.query_one("#examples", Input).has_class("shown")
            pilot.app.query_one("#examples", Input).value = "1+1 => 2 ;; 2+2 => 4"
            await type_and_send(pilot, "3+3")
            await wait_idle(pilot)
            sent = await pilot.app.client.get_session(pilot.app.session)
            return pads, others, shown, sent

    pads, others, shown, sent = asyncio.run(go())
    assert len(pads) == 1 and pads[0].startswith("def main():") and "    return" in pads[0] and others == 0
    assert shown and sent["turns"] == 3


def test_regenerate_and_edit_in_continuation_mode_rewrite_the_pad(daemon):
    async def go():
        async with app_for(daemon).run_test(size=(120, 40)) as pilot:
            await greedy_conversation(pilot, 8, mode="raw")
            await type_and_send(pilot, "Once upon a time")
            await wait_idle(pilot)
            first = pad(pilot.app)
            await type_and_send(pilot, "The end")
            await wait_idle(pilot)
            both = pad(pilot.app)
            await regenerate(pilot)
            regenerated = pad(pilot.app)
            await pilot.press("f2")
            await pilot.pause(0.5)
            edited = pad(pilot.app), pilot.app.query_one("#prompt", Input).value
            return first, both, regenerated, edited

    first, both, regenerated, (after_edit, prompt) = asyncio.run(go())
    assert both.startswith(first + "\nThe end") and len(both) > len(first + "\nThe end")
    assert regenerated == both  # the old continuation replaced, not kept beside the new one
    assert after_edit == first and prompt == "The end"


def pad(app) -> str:
    pads = app.query_one("#messages").query(".pad")
    assert len(pads) == 1 and not app.query_one("#messages").query(".user, .assistant")
    return pads.first().source


def test_conversations_survive_a_daemon_restart(model_factory, tmp_path):
    model = model_factory(BUILTIN_MODEL)
    port = _free_port()
    server = DaemonThread()

    def launch():
        return server.start(server.hub(model, tmp_path), Config(port=port), TOKEN)  # the same folder each time

    async def talk():
        async with RwkvApp(f"http://127.0.0.1:{port}", TOKEN, autostart=False).run_test(size=(120, 40)) as pilot:
            await connected(pilot)
            pilot.app.query_one("#p-max_tokens", Input).value = "6"
            await type_and_send(pilot, "keep this")
            await wait_idle(pilot)
            return pilot.app.session

    async def look(sid):
        async with RwkvApp(f"http://127.0.0.1:{port}", TOKEN, autostart=False).run_test(size=(120, 40)) as pilot:
            await connected(pilot)
            await pilot.app.show_session(sid)
            return [m.source for m in pilot.app.query_one("#messages").query(Markdown)]

    first = launch()
    sid = asyncio.run(talk())
    server.stop(first).result(60)
    second = launch()
    texts = asyncio.run(look(sid))
    server.stop(second).result(60)
    server.close()
    assert texts[0] == "keep this" and len(texts) == 2


def test_edit_last_takes_the_message_back_into_the_input(daemon):
    async def go():
        async with app_for(daemon).run_test(size=(120, 40)) as pilot:
            await connected(pilot)
            await new_conversation(pilot)
            pilot.app.query_one("#p-max_tokens", Input).value = "5"
            await type_and_send(pilot, "first try")
            await wait_idle(pilot)
            await pilot.press("f2")
            await pilot.pause(0.2)
            shown = [(sorted(m.classes), m.source[:30]) for m in pilot.app.query_one("#messages").query(Markdown)]
            session = await pilot.app.client.get_session(pilot.app.session)
            return pilot.app.query_one("#prompt", Input).value, shown, session

    value, shown, session = asyncio.run(go())
    assert value == "first try" and shown == [] and session["turns"] == 0 and session["transcript"] == []


def test_a_bad_parameter_keeps_the_typed_message(daemon):
    async def go():
        async with app_for(daemon).run_test(size=(120, 40)) as pilot:
            await connected(pilot)
            shown = len(pilot.app.query_one("#messages").query(Markdown))
            pilot.app.query_one("#p-top_p", Input).value = "7"
            await type_and_send(pilot, "a long message I typed")
            await pilot.pause(0.3)
            kept = pilot.app.query_one("#prompt", Input).value
            return kept, len(pilot.app.query_one("#messages").query(Markdown)) - shown

    kept, added = asyncio.run(go())
    assert kept == "a long message I typed" and added == 0


def test_keys_while_the_daemon_is_unreachable_say_so_and_keep_the_message():
    """Every key that talks to the daemon, pressed while there is none: a notice, no traceback."""

    async def go():
        async with RwkvApp("http://127.0.0.1:9", TOKEN, autostart=False).run_test(size=(100, 30)) as pilot:
            await until_not_connected(pilot)
            pilot.app.session = "was-open"  # as after the daemon went away mid-conversation
            pilot.app.last_user = "earlier"
            for key in ("ctrl+n", "ctrl+f", "f8", "ctrl+r", "f2"):
                await pilot.press(key)
                await pilot.pause(0.1)
            await type_and_send(pilot, "not lost")
            notes = [n.message for n in pilot.app._notifications]
            return pilot.app.query_one("#prompt", Input).value, notes

    kept, notes = asyncio.run(go())
    assert kept == "not lost" and notes and all("not connected to the daemon" in n for n in notes)


def test_urls_in_every_spelling_the_docs_use(daemon):
    """`--url` takes the daemon's HTTP address or the WebSocket URL the bots take; a wrong one is said."""
    from rwkv_hub.adapters.tui.connection import daemon_base

    assert daemon_base("http://localhost") == ("http://localhost:8765", 8765)
    assert daemon_base("ws://127.0.0.1:9000/ws") == ("http://127.0.0.1:9000", 9000)

    async def go(url):
        async with RwkvApp(url, TOKEN, autostart=True).run_test(size=(120, 40)) as pilot:
            for _ in range(200):
                await pilot.pause(0.05)
                if pilot.app.connection == "connected" or "not connected" in pilot.app.connection:
                    break
            return pilot.app.connection

    ws_url = daemon.url.replace("http", "ws", 1) + "/ws"
    assert asyncio.run(go(ws_url)) == "connected"
    bad = asyncio.run(go("localhost:8765"))
    assert "'localhost:8765' is not a daemon address; give http://HOST:PORT" in bad and "retrying" not in bad


def test_a_local_daemon_that_cannot_start_says_why(tmp_path):
    from rwkv_hub.adapters.tui.connection import LocalDaemon

    async def go():
        local = LocalDaemon(_free_port(), str(tmp_path / "missing.pth"))
        try:
            await local.ready()
        except RWKVHubError as e:  # a user error, not a lost connection: the TUI does not start it again
            return str(e)
        finally:
            local.stop()

    said = asyncio.run(go())
    assert said.startswith("the local daemon did not start: ") and "missing.pth" in said, said


def test_f5_on_the_music_screen_opens_no_second_one(daemon):
    from rwkv_hub.adapters.tui.music import MusicScreen

    async def go():
        async with app_for(daemon).run_test(size=(120, 40)) as pilot:
            await connected(pilot)
            await pilot.press("f5")
            await pilot.pause(0.2)
            await pilot.press("f5")
            await pilot.pause(0.2)
            music = [s for s in pilot.app.screen_stack if isinstance(s, MusicScreen)]
            await pilot.press("escape")
            await pilot.pause(0.2)
            return len(music), isinstance(pilot.app.screen, MusicScreen)

    assert asyncio.run(go()) == (1, False)
