"""`rwkv-hub tui`: chat and write with the daemon's model in the terminal (Textual).

The app is a client of the daemon like any other adapter: it speaks the WebSocket protocol through
`rwkv_hub.adapters.client.Client`, and starts a local daemon itself when none is running.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, Label, ListItem, ListView, Markdown, Select, Static

from ...core.errors import RWKVHubError
from ..client import Client, ServerError
from .connection import LocalDaemon, connect

# The parameters the panel edits: field, label, type, range, and the RWKV guide's advice.
PARAMS = (
    ("temperature", "temperature", float, (0, 5), "higher: more random; keep 1 when accuracy matters"),
    ("top_p", "top_p", float, (0, 1), "creative 0.5-0.7; Q&A, summaries 0-0.5; yes/no 0"),
    ("top_k", "top_k", int, (0, 100000), "0 = off"),
    ("presence_penalty", "presence", float, (-2, 2), "start at 0.2-0.4; too high breaks punctuation"),
    ("frequency_penalty", "frequency", float, (-2, 2), "less verbatim repetition"),
    ("penalty_decay", "decay", float, (0, 1), "how fast penalties are forgiven (0.996)"),
    ("max_tokens", "max tokens", int, (1, 100000), "the longest reply"),
)
HELP = """\
# Keys

| key | does |
|---|---|
| Enter | send the message (in continuation mode: continue the text) |
| Escape | stop the reply at once |
| Ctrl+R | regenerate the last reply (from the state before it; nothing is re-read) |
| F2 | edit the last message and send it again |
| Ctrl+N | new conversation |
| Ctrl+F | fork this conversation |
| Ctrl+T | rename this conversation |
| F8 | delete this conversation |
| Ctrl+P | show or hide the parameter panel |
| F5 | compose music (with an ABC or MIDI model): Ctrl+G composes, Ctrl+O plays, Escape stops or goes back |
| F1 | this help |
| Ctrl+Q | quit (a daemon the TUI started is stopped) |

Conversations are the daemon's sessions: they survive restarts of the TUI and of the daemon.
"""


def guarded(method):
    """A key action or handler that talks to the daemon: a lost connection or an error reply becomes a
    message and a reconnect, never a crash of the app."""

    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        if self.client is None:
            self.notify(f"not connected to the daemon ({self.connection}); try again once it is", severity="warning")
            return None
        try:
            return await method(self, *args, **kwargs)
        except ServerError as e:
            self.notify(str(e), severity="error")
        except (ConnectionError, OSError) as e:
            self.lost(e)

    return wrapper


def parse_examples(text: str) -> list[list[str]]:
    """`question => answer ;; question => answer` as [question, answer] pairs."""
    pairs = []
    for part in text.split(";;"):
        if "=>" in part:
            q, a = part.split("=>", 1)
            pairs.append([q.strip(), a.strip()])
    return pairs


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "app.pop_screen", "close")]

    def compose(self) -> ComposeResult:
        yield VerticalScroll(Markdown(HELP), id="help")


class RenameScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def __init__(self, current: str):
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="rename"):
            yield Label(f"Rename {self.current!r} to (letters, digits, '_', '-', '.'):")
            yield Input(value=self.current, id="rename-input")

    @on(Input.Submitted)
    def done(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class RwkvApp(App):
    """The chat and writing app."""

    TITLE = "rwkv-hub"
    CSS = """
    #sidebar { width: 24; border-right: solid $primary-darken-2; }
    #sidebar ListView { height: 1fr; }
    #main { width: 1fr; }
    #messages { height: 1fr; padding: 0 1; }
    #messages Markdown { margin: 0 0 1 0; }
    .user { border-left: thick $accent; padding-left: 1; }
    .assistant { border-left: thick $success; padding-left: 1; }
    #instruction, #examples { display: none; }
    #instruction.shown, #examples.shown { display: block; }
    .pad { border-left: thick $warning; padding-left: 1; }
    #params { width: 34; border-left: solid $primary-darken-2; padding: 0 1; }
    #params.hidden { display: none; }
    #params Input { height: 3; }
    #params .advice { color: $text-muted; height: auto; }
    Input.-invalid { border: tall $error; }
    #status { height: 1; background: $primary-darken-2; padding: 0 1; }
    #help, #rename { width: 70; height: auto; max-height: 90%; border: thick $primary; background: $surface; }
    HelpScreen, RenameScreen { align: center middle; }
    """
    BINDINGS = [
        Binding("escape", "stop", "stop"),
        Binding("ctrl+r", "regenerate", "regenerate"),
        Binding("f2", "edit_last", "edit last"),
        Binding("ctrl+n", "new_session", "new"),
        Binding("ctrl+f", "fork_session", "fork"),
        Binding("ctrl+t", "rename_session", "rename"),
        Binding("f8", "delete_session", "delete"),
        Binding("ctrl+p", "toggle_params", "params"),
        Binding("f5", "music", "compose"),
        Binding("f1", "help", "help"),
        Binding("ctrl+q", "quit", "quit"),
    ]

    def __init__(self, url: str | None = None, token: str | None = None, autostart: bool = True, model=None):
        super().__init__()
        self.url, self.token, self.autostart, self.model_path = url, token, autostart, model
        self.client: Client | None = None
        self.local: LocalDaemon | None = None
        self.hello: dict[str, Any] = {}
        self.session: str | None = None
        self.request = None  # the running request, for Escape
        self.last_user: str | None = None
        self.stats = {"tok_s": 0.0, "tokens": 0, "cached": 0}
        self.replies = 0  # replies finished (or failed) so far
        self.sending = False  # a message is on its way (set before its worker starts, so Enter cannot send twice)
        self._show_lock = asyncio.Lock()
        self.connection = "connecting"

    # --- layout -------------------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal():
            with Vertical(id="sidebar"):
                yield Label("Conversations")
                yield ListView(id="sessions")
            with Vertical(id="main"):
                yield VerticalScroll(id="messages")
                yield Select([("chat", "chat")], value="chat", allow_blank=False, id="mode")
                yield Input(placeholder="instruction (what to do with the input below)", id="instruction")
                yield Input(placeholder="examples: question => answer ;; question => answer", id="examples")
                yield Input(placeholder="type a message, Enter to send (F1: keys)", id="prompt")
            with VerticalScroll(id="params"):
                yield Label("Preset")
                yield Select([], prompt="preset", id="preset")
                yield Static("", id="preset-info", classes="advice")
                for name, label, _, _, advice in PARAMS:
                    yield Label(label)
                    yield Input(id=f"p-{name}", placeholder="default")
                    yield Static(advice, classes="advice")
        yield Static("", id="status")
        yield Footer()

    async def on_mount(self) -> None:
        self.fit_width()
        self.query_one("#prompt", Input).focus()
        self.refresh_status()
        self.open_connection()

    @work(exclusive=True, group="connect")
    async def open_connection(self) -> None:
        self.connection = "connecting"
        self.refresh_status()
        try:
            if self.client is not None:
                await self.client.close()
                self.client = None  # until the new connection is there: actions say so rather than hang
            self.client, started = await connect(self.url, self.token, self.autostart, self.model_path)
            self.local = self.local or started
            self.hello = await self.client.hello()
            self.connection = "connected"
            formats = [f["name"] for f in self.hello.get("format_details", [])] or ["chat"]
            self.query_one("#mode", Select).set_options([(f, f) for f in formats])
            self.query_one("#mode", Select).value = "chat" if "chat" in formats else formats[0]
            presets = self.hello.get("preset_details", [])
            self.query_one("#preset", Select).set_options([(p["name"], p["name"]) for p in presets])
            await self.load_sessions()
        except (ConnectionError, ServerError, OSError) as e:
            self.client = None
            self.connection = f"not connected: {e} (Ctrl+Q to quit; retrying in 5 s)"
            self.set_timer(5, self.open_connection)
        except RWKVHubError as e:  # a wrong --url: retrying would not help
            self.client = None
            self.connection = f"not connected: {e} (Ctrl+Q to quit)"
        self.refresh_status()

    def lost(self, error: BaseException) -> None:
        """The daemon went away: say so and reconnect."""
        self.connection = f"disconnected: {error}"
        self.refresh_status()
        self.open_connection()

    async def on_unmount(self) -> None:
        if self.client is not None:
            await self.client.close()
        if self.local is not None:
            self.local.stop()

    def on_resize(self) -> None:
        self.fit_width()

    def fit_width(self) -> None:
        """In a narrow terminal (80 columns) the parameter panel starts hidden; Ctrl+P shows it."""
        self.query_one("#params").set_class(self.size.width < 100, "hidden")

    def refresh_status(self) -> None:
        m = self.hello.get("model", {})
        text = (
            f"{self.connection} | {self.stats['tok_s']:.1f} tok/s | reply {self.stats['tokens']} tokens | "
            f"cached {self.stats['cached']} | {m.get('name', '?')} ({m.get('strategy', '?')})"
        )
        self.query_one("#status", Static).update(text)

    # --- sessions -------------------------------------------------------------------------------------------

    async def load_sessions(self, select: str | None = None) -> None:
        sessions = await self.client.sessions()
        lv = self.query_one("#sessions", ListView)
        await lv.clear()
        for s in sessions:
            await lv.append(ListItem(Label(s["id"]), name=s["id"]))
        if not sessions:
            created = await self.client.create_session()
            await lv.append(ListItem(Label(created["id"]), name=created["id"]))
            sessions = [created]
        names = [s["id"] for s in sessions]
        target = select if select in names else (self.session if self.session in names else names[-1])
        lv.index = names.index(target)
        await self.show_session(target)

    @on(ListView.Selected, "#sessions")
    @guarded
    async def session_chosen(self, event: ListView.Selected) -> None:
        if event.item.name and event.item.name != self.session:
            await self.show_session(event.item.name)

    async def show_session(self, sid: str) -> None:
        """Show a conversation's transcript; of several quick switches, only the last one is drawn."""
        self.session = sid
        async with self._show_lock:
            if self.session != sid:
                return
            data = await self.client.get_session(sid)
            if self.session != sid:
                return
            await self.draw(data.get("transcript", []))

    async def draw(self, transcript: list[dict]) -> None:
        """Put a conversation on screen: a box a message, or in continuation mode the one writing pad
        that `_send` builds (each text on a new line, its continuation after it)."""
        box = self.query_one("#messages", VerticalScroll)
        await box.remove_children()
        users = [m["content"] for m in transcript if m["role"] == "user"]
        self.last_user = users[-1] if users else None  # this conversation's own last message, if any
        if self.query_one("#mode", Select).value == "raw":
            pad = ""
            for m in transcript:
                pad += ("\n" if pad and m["role"] == "user" else "") + m["content"]
            if pad:
                await box.mount(Markdown(pad, classes="pad"))
        else:
            for m in transcript:
                await box.mount(Markdown(m["content"], classes=m["role"]))
        box.scroll_end(animate=False)

    @guarded
    async def action_new_session(self) -> None:
        created = await self.client.create_session()
        await self.load_sessions(created["id"])

    @guarded
    async def action_fork_session(self) -> None:
        if self.session:
            forked = await self.client.fork_session(self.session)
            await self.load_sessions(forked["id"])

    @guarded
    async def action_delete_session(self) -> None:
        if self.session:
            await self.client.delete_session(self.session)
            self.session = None
            await self.load_sessions()

    @work
    @guarded
    async def action_rename_session(self) -> None:
        if not self.session:
            return
        new = await self.push_screen_wait(RenameScreen(self.session))
        if new and new != self.session:
            await self.client.rename_session(self.session, new)
            self.session = new
            await self.load_sessions(new)

    # --- parameters -------------------------------------------------------------------------------------------

    @on(Select.Changed, "#preset")
    def preset_chosen(self, event: Select.Changed) -> None:
        preset = next((p for p in self.hello.get("preset_details", []) if p["name"] == event.value), None)
        if preset is None:
            return
        info = f"{preset['description']} / {preset.get('description_zh', '')}"
        self.query_one("#preset-info", Static).update(info)
        for name, *_ in PARAMS:
            value = preset["params"].get(name)
            self.query_one(f"#p-{name}", Input).value = "" if value is None else str(value)
        if preset.get("format") and preset["format"] in [f["name"] for f in self.hello.get("format_details", [])]:
            self.query_one("#mode", Select).value = preset["format"]

    @on(Input.Changed)
    def validate_param(self, event: Input.Changed) -> None:
        if event.input.id and event.input.id.startswith("p-"):
            event.input.set_class(self.param_value(event.input.id[2:]) is False, "-invalid")

    def param_value(self, name: str):
        """The field's value, None when empty, False when it does not parse or is out of range."""
        _, _, kind, (lo, hi), _ = next(p for p in PARAMS if p[0] == name)
        text = self.query_one(f"#p-{name}", Input).value.strip()
        if not text:
            return None
        try:
            value = kind(text)
        except ValueError:
            return False
        return value if lo <= value <= hi else False

    def params(self) -> dict[str, Any] | None:
        out = {}
        for name, label, *_ in PARAMS:
            value = self.param_value(name)
            if value is False:
                self.notify(f"{label} is not valid", severity="error")
                return None
            if value is not None:
                out[name] = value
        return out

    @on(Select.Changed, "#mode")
    def mode_chosen(self, event: Select.Changed) -> None:
        self.query_one("#instruction", Input).set_class(event.value == "instruction", "shown")
        self.query_one("#examples", Input).set_class(event.value == "few-shot", "shown")

    def action_toggle_params(self) -> None:
        self.query_one("#params").toggle_class("hidden")

    def action_music(self) -> None:
        from .music import MusicScreen

        if not isinstance(self.screen, MusicScreen):  # F5 on the music screen: one is enough
            self.push_screen(MusicScreen())

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    # --- talking ------------------------------------------------------------------------------------------------

    @on(Input.Submitted, "#prompt")
    def submitted(self, event: Input.Submitted) -> None:
        """Send the message; when it cannot go (no daemon, a bad parameter), it stays in the input."""
        text = event.value
        if not text.strip() or self.sending:
            return
        if self.client is None:
            self.notify(f"not connected to the daemon ({self.connection}); the message is kept", severity="warning")
            return
        if self.params() is None:
            return
        event.input.value = ""
        self.sending = True
        self.send(text)

    @work(group="send")
    async def send(self, text: str) -> None:
        self.sending = True
        try:
            await self._send(text)
        finally:  # whatever happened, the next message can go
            self.sending = False

    async def _send(self, text: str) -> None:
        params = self.params()
        if params is None:
            return
        mode = self.query_one("#mode", Select).value
        preset = self.query_one("#preset", Select).value
        box = self.query_one("#messages", VerticalScroll)
        self.last_user = text
        if mode == "raw":  # continuation: one writing pad, the model continues the text in place
            pads = box.query(".pad")
            reply = pads.last() if pads else None
            if reply is None:
                reply = Markdown("", classes="pad")
                await box.mount(reply)
            stream = Markdown.get_stream(reply)
            await stream.write(("\n" if reply.source else "") + text)
        else:
            await box.mount(Markdown(text, classes="user"))
            reply = Markdown("", classes="assistant")
            await box.mount(reply)
            stream = Markdown.get_stream(reply)
        inp: dict[str, Any] = {"text": text} if mode == "raw" else {"input": text}
        if mode == "instruction":
            inp["instruction"] = self.query_one("#instruction", Input).value
        if mode == "few-shot":
            inp["examples"] = parse_examples(self.query_one("#examples", Input).value)
        req = self.client.chat(
            input=inp,
            session=self.session,
            format=str(mode),
            preset=preset if isinstance(preset, str) else None,
            params=params or None,
        )
        self.request = req
        self.stats["tokens"] = 0
        try:
            async with req:
                async for delta in req:
                    await stream.write(delta)
                    self.stats["tokens"] += 1
                    box.scroll_end(animate=False)
            done = req.done or {}
            t = done.get("timings", {})
            usage = done.get("usage", {})
            self.stats["tokens"] = usage.get("completion_tokens", self.stats["tokens"])
            self.stats["tok_s"] = usage.get("completion_tokens", 0) / t["decode_s"] if t.get("decode_s") else 0.0
            self.stats["cached"] = t.get("cached_tokens", 0)
        except (ServerError, RWKVHubError) as e:
            self.notify(str(e), severity="error")
        except (ConnectionError, OSError) as e:
            self.lost(e)
        finally:
            await stream.stop()
            self.request = None
            self.replies += 1
            self.refresh_status()

    @guarded
    async def action_stop(self) -> None:
        if self.request is not None:
            await self.request.cancel()

    async def take_back(self) -> str | None:
        """Rewind the session by one turn and redraw it as the daemon now has it (in any mode: a
        continuation pad loses the last text and what the model wrote after it); the message taken back."""
        if self.sending or not self.session or self.last_user is None:
            return None
        text, sid = self.last_user, self.session
        self.sending = True  # no message may go while the turn is being taken back
        try:
            await self.client.rewind_session(sid)
            async with self._show_lock:
                data = await self.client.get_session(sid)
                if self.session == sid:
                    await self.draw(data.get("transcript", []))
        except ServerError as e:
            self.notify(str(e), severity="warning")
            return None
        finally:
            self.sending = False
        return text

    @guarded
    async def action_regenerate(self) -> None:
        """A new reply from the state before the last one: the daemon rewinds; nothing is re-read."""
        text = await self.take_back()
        if text is not None:
            self.sending = True
            self.send(text)

    @guarded
    async def action_edit_last(self) -> None:
        text = await self.take_back()
        if text is not None:
            prompt = self.query_one("#prompt", Input)
            prompt.value = text
            prompt.focus()


def run(url: str | None = None, token: str | None = None, autostart: bool = True, model: str | None = None) -> int:
    RwkvApp(url, token, autostart, model).run()
    return 0
