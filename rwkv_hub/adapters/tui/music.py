"""The TUI's composition screen: ask the daemon's music model for a tune, watch it being written, keep
the files, and play them where an audio player is installed."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Button, Footer, Label, Select, Static, TextArea

from ...hub.music import DEFAULT_ABC
from ..client import ServerError

PLAYERS = ("pw-play", "paplay", "aplay", "ffplay", "afplay")  # WAV players, most likely first
PLAYER_ARGS = {"ffplay": ["-nodisp", "-autoexit", "-loglevel", "quiet"]}


def audio_player() -> str | None:
    return next((p for p in PLAYERS if shutil.which(p)), None)


def _terminate(proc: asyncio.subprocess.Process) -> bool:
    """Stop `proc` if it still runs; whether it did."""
    if proc.returncode is not None:
        return False
    with contextlib.suppress(ProcessLookupError):  # it ended just now
        proc.terminate()
    return True


class MusicScreen(Screen):
    """Compose with the daemon's model (an ABC or MIDI music model)."""

    BINDINGS = [
        Binding("ctrl+g", "compose", "compose"),
        Binding("ctrl+o", "play", "play"),
        Binding("escape", "back", "stop / back"),
    ]
    CSS = """
    MusicScreen #music-controls { height: auto; }
    MusicScreen #start { height: 8; }
    MusicScreen #tune { height: 1fr; }
    MusicScreen #music-status { height: auto; min-height: 1; background: $primary-darken-2; padding: 0 1; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.request = None
        self.files: dict[str, str] = {}
        self.pieces = 0  # compositions finished (or failed) so far, for tests and the status line
        self.player = audio_player()
        self.playing: asyncio.subprocess.Process | None = None  # the player now sounding, for Escape

    def compose(self) -> ComposeResult:
        with Vertical():
            with Horizontal(id="music-controls"):
                yield Select([("abc", "abc"), ("midi", "midi")], value="abc", allow_blank=False, id="music-format")
                yield Button("Compose (Ctrl+G)", id="compose-button", variant="primary")
                yield Button("Play (Ctrl+O)", id="play-button", disabled=True)
            yield Label("The tune to continue (ABC header and bars, or MIDI events; empty for a new piece):")
            yield TextArea(DEFAULT_ABC, id="start")
            yield Label("The model writes:")
            yield TextArea("", id="tune", read_only=True)
            yield Static(self._player_note(), id="music-status")
        yield Footer()

    def _player_note(self) -> str:
        return f"audio: {self.player}" if self.player else "no audio player found (pw-play, paplay, aplay or ffplay)"

    def say(self, text: str) -> None:
        self.query_one("#music-status", Static).update(text)

    @on(Select.Changed, "#music-format")
    def format_chosen(self, event: Select.Changed) -> None:
        start = self.query_one("#start", TextArea)
        if event.value == "midi" and start.text == DEFAULT_ABC:
            start.text = ""
        elif event.value == "abc" and not start.text.strip():
            start.text = DEFAULT_ABC

    @on(Button.Pressed, "#compose-button")
    def compose_pressed(self) -> None:
        self.action_compose()

    @on(Button.Pressed, "#play-button")
    def play_pressed(self) -> None:
        self.action_play()

    def action_compose(self) -> None:
        if self.request is None:
            self.run_composition()

    @work(exclusive=True, group="compose")
    async def run_composition(self) -> None:
        client = self.app.client
        if client is None:
            self.say("not connected to the daemon")
            return
        fmt = self.query_one("#music-format", Select).value
        tune = self.query_one("#tune", TextArea)
        start = self.query_one("#start", TextArea).text
        tune.text = start
        self.files = {}
        self.query_one("#play-button", Button).disabled = True
        self.say(f"composing ({fmt})... Escape stops")
        try:
            self.request = client.compose(fmt, start=start, wav=self.player is not None)
            async with self.request as req:
                async for delta in req:
                    tune.insert(delta, tune.document.end)
            self.show_piece(req.done or {})
        except (ServerError, ConnectionError) as e:
            self.say(f"the daemon could not compose: {e}")
        finally:
            self.request = None
            self.pieces += 1

    def show_piece(self, done: dict) -> None:
        piece = done.get("piece") or {}
        if done.get("finish_reason") == "cancelled":
            self.say("stopped; nothing saved")
        elif "error" in piece:
            self.say(f"nothing playable came back: {piece['error']}")
        else:
            self.query_one("#tune", TextArea).text = piece.get("notation", "")
            self.files = piece.get("files", {})
            saved = ", ".join(f"{k}: {v}" for k, v in self.files.items())
            missing = "; ".join(f"no {k}: {why}" for k, why in piece.get("unavailable", {}).items())
            fixed = f"; {len(piece.get('problems', []))} repairs" if piece.get("problems") else ""
            self.say(f"saved {saved}{fixed}" + (f" | {missing}" if missing else ""))
            self.query_one("#play-button", Button).disabled = not (self.player and "wav" in self.files)

    def action_play(self) -> None:
        wav = self.files.get("wav")
        if not self.player:
            self.say(self._player_note())
        elif not wav or not Path(wav).exists():
            self.say("no audio for this piece (the daemon needs fluidsynth and a soundfont)")
        else:
            self.play(wav)

    @work(exclusive=True, group="play")
    async def play(self, wav: str) -> None:
        """Play `wav`; a new play (which cancels this worker: the group is exclusive), Escape, or leaving
        the screen (which cancels its workers) stops it."""
        proc = await asyncio.create_subprocess_exec(
            self.player,
            *PLAYER_ARGS.get(self.player, []),
            wav,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self.playing = proc
        self.say(f"playing {wav} (Escape stops)")
        try:
            await proc.wait()
        finally:
            if self.playing is proc:
                self.playing = None
            _terminate(proc)

    def stop_playing(self) -> bool:
        """Stop the player if one is sounding; whether one was."""
        proc, self.playing = self.playing, None
        return proc is not None and _terminate(proc)

    async def action_back(self) -> None:
        """Escape: stop the composition, else the music, else go back to the chat."""
        if self.request is not None:
            await self.request.cancel()
        elif self.stop_playing():
            self.say("stopped playing")
        else:
            self.app.pop_screen()

    def on_unmount(self) -> None:
        self.stop_playing()
