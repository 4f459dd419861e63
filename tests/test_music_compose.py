"""Composition end to end on random-weight checkpoints of the published music models' generations and
vocabularies (RWKV-5 for ABC, RWKV-4 for MIDI): the abc and midi formats drive a real engine, end at their
end tokens, and what comes back, however malformed, becomes files the converters accept; through the hub,
the daemon's `compose` request and `rwkv-hub compose`."""

from __future__ import annotations

import asyncio
import base64
import errno
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mido
import pytest
import websockets
from conftest import DaemonThread

import rwkv_hub
from rwkv_hub.core.engine import Engine
from rwkv_hub.hub.config import Config
from rwkv_hub.hub.hub import Hub
from rwkv_hub.hub.music import DEFAULT_ABC, piece_text, write_piece
from rwkv_hub.hub.plugins import PluginHost
from rwkv_hub.music.midi_text import VocabConfig, midi_to_text
from rwkv_hub.music.notes import MusicError, Note, Tune

TOKEN = "music-test-token-0123456789"
# ABC models: one id per character, RWKV-5 (as RWKV-5-ABC-82M); MIDI models: RWKV-4 (as RWKV-4-MIDI).
ABC_SHAPE = dict(n_layer=2, n_embd=128, vocab_size=128, head_size=64, generation="x052")
MIDI_VOCAB = VocabConfig.default().tokens()


@pytest.fixture(scope="module")
def abc_model(checkpoint_factory, model_factory):
    return model_factory(checkpoint_factory(**ABC_SHAPE))


@pytest.fixture(scope="module")
def midi_path(checkpoint_factory, tmp_path_factory):
    path = tmp_path_factory.mktemp("midi-model") / "rwkv-midi.pth"  # a folder of its own, as a release has
    shutil.copy(checkpoint_factory(n_layer=2, n_embd=64, vocab_size=len(MIDI_VOCAB), generation="x040"), path)
    vocab = {word: i for i, word in enumerate(MIDI_VOCAB)}
    tokenizer = {"version": "1.0", "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<pad>"}}
    (path.parent / "tokenizer-midi.json").write_text(json.dumps(tokenizer))  # found beside the checkpoint
    return path


def compose(model, request: dict):
    async def go():
        async with Engine(model) as engine:
            hub = Hub(engine, PluginHost(["plugins.music_end"], entry_points=False).load())
            stream = hub.submit(request) if "input" in request else hub.compose(request)
            text = await stream.text()
            return stream, text

    return asyncio.run(asyncio.wait_for(go(), 120))


def test_abc_ends_at_the_end_of_tune_id_and_becomes_files(abc_model, tmp_path):
    req = {"format": "abc", "preset": "music-abc", "input": {"text": DEFAULT_ABC}, "logit_processors": ["end-after-24"]}
    assert abc_model.spec.generation == "x052"
    stream, text = compose(abc_model, req | {"params": {"seed": 3, "max_tokens": 200}})
    assert stream.request["prompt"] == "\x02" + DEFAULT_ABC
    assert stream.result.finish_reason == "stop" and len(text) == 24 and "\x03" not in text
    piece = write_piece("abc", piece_text("abc", "", text) + "CDEF|", tmp_path / "tune.mid", svg=True, wav=True)
    assert set(piece.files) >= {"abc", "mid"} and piece.problems  # random characters: repaired, listed
    notes = [m for m in mido.MidiFile(piece.files["mid"]).play() if m.type == "note_on" and m.velocity]
    assert notes  # something playable came through the repairs
    assert set(piece.files) | set(piece.unavailable) == {"abc", "mid", "svg", "wav"}  # made, or said why not


def test_midi_model_with_its_vocabulary_file_composes_and_continues_a_mid(midi_path, tmp_path):
    model = rwkv_hub.load(midi_path, "cpu fp32")
    assert model.tokenizer.name == "midi" and model.spec.generation == "x040"
    opening = Tune([Note(0, 60, 480), Note(480, 64, 480), Note(960, 67, 960, program=40, channel=1)]).to_midi()
    start = midi_to_text(opening, close=False)
    stream, text = compose(model, {"format": "midi", "continue": start, "params": {"seed": 1, "max_tokens": 24}})
    words = start.split()
    assert stream.request["prompt"] == " ".join(["<start>", *words[1:]]) + " "  # the .mid's events, continued
    assert stream.result.completion_tokens == 24 and all(w in MIDI_VOCAB for w in text.split())
    ended, _ = compose(model, {"format": "midi", "input": {"text": ""}, "logit_processors": ["end-after-24"]})
    assert ended.result.finish_reason == "stop"
    piece = write_piece("midi", piece_text("midi", start, text), tmp_path / "more", wav=True)
    assert {"txt", "mid"} <= set(piece.files) and "wav" in set(piece.files) | set(piece.unavailable)
    played = [m for m in mido.MidiFile(piece.files["mid"]).play() if m.type == "note_on" and m.velocity]
    assert {m.note for m in played} >= {60, 64, 67}  # the opening is in the piece


def test_nothing_playable_is_a_clear_music_error(tmp_path):
    with pytest.raises(MusicError, match="no notes"):
        write_piece("abc", "X:1\nK:C\nzz|", tmp_path / "empty")
    assert not list(tmp_path.glob("empty.mid"))


def test_the_daemons_compose_request_streams_and_saves(abc_model, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    server = DaemonThread()
    config = Config(port=0, session_folder=str(tmp_path / "sessions"))
    hub = server.hub(abc_model, tmp_path / "sessions")
    running = server.start(hub, config, TOKEN)

    async def go():
        url = running.url.replace("http", "ws", 1) + "/ws"
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            msg = {"type": "compose", "id": "m1", "format": "abc", "continue": DEFAULT_ABC + "CDEF|"}
            await ws.send(json.dumps(msg | {"params": {"max_tokens": 40, "seed": 2}, "name": "my reel"}))
            text, done = "", None
            while done is None:
                ev = json.loads(await ws.recv())
                text += ev.get("text", "") if ev["type"] == "delta" else ""
                done = ev if ev["type"] == "done" else None
            await ws.send(json.dumps({"type": "compose", "id": "m2", "format": "midi", "midi": "%%%"}))
            bad = json.loads(await ws.recv())
            return text, done, bad

    try:
        text, done, bad = asyncio.run(asyncio.wait_for(go(), 120))
    finally:
        server.stop(running).result(60)
        server.close()
    piece = done["piece"]
    assert piece["notation"].startswith(DEFAULT_ABC + "CDEF|") and "error" not in piece
    files = {k: tmp_path / "compositions" / v.rsplit("/", 1)[-1] for k, v in piece["files"].items()}
    assert files["mid"].name.startswith("my-reel-") and files["mid"].exists() and files["abc"].exists()
    assert mido.MidiFile(files["mid"]).length > 0
    assert bad["type"] == "error" and bad["code"] == "bad_request" and "base64" in bad["message"]


def test_rwkv_hub_compose_writes_files(checkpoint_factory, tmp_path):
    path = checkpoint_factory(**ABC_SHAPE)
    start = tmp_path / "start.abc"
    start.write_text(DEFAULT_ABC + "GABc|")
    out = tmp_path / "out" / "reel.mid"
    cmd = [sys.executable, "-m", "rwkv_hub", "compose", "--model", str(path), "--format", "abc"]
    r = subprocess.run(
        cmd + ["--continue", str(start), "--out", str(out), "--max-tokens", "30", "--seed", "4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert out.exists() and out.with_suffix(".abc").read_text().startswith(DEFAULT_ABC + "GABc|")
    assert f"mid: {out}" in r.stderr
    bad = subprocess.run(cmd + ["--continue", str(tmp_path / "nope.abc")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "nope.abc: cannot read it" in bad.stderr and "Traceback" not in bad.stderr
    midi_into_abc = tmp_path / "x.mid"
    midi_into_abc.write_bytes(Tune([Note(0, 60, 480)]).to_midi())
    bad = subprocess.run(cmd + ["--continue", str(midi_into_abc)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not ABC" in bad.stderr
    binary = tmp_path / "noise.abc"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 10)
    bad = subprocess.run(cmd + ["--continue", str(binary)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "noise.abc: not UTF-8 text" in bad.stderr and "Traceback" not in bad.stderr
    folder = tmp_path / "tunes"
    folder.mkdir()
    args = ["--continue", str(start), "--out", str(folder), "--max-tokens", "5"]
    r = subprocess.run(cmd + args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (folder / "piece.mid").exists() and (folder / "piece.abc").exists()


def test_compose_says_where_it_cannot_save_before_loading_or_generating(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    cmd = [sys.executable, "-m", "rwkv_hub", "compose", "--model", str(tmp_path / "absent.pth"), "--format", "abc"]
    bad = subprocess.run(cmd + ["--out", str(a_file / "x.mid")], capture_output=True, text=True, timeout=120)
    # the model does not exist either: the place to save is checked first
    assert bad.returncode == 2 and "cannot save a piece in" in bad.stderr and "absent.pth" not in bad.stderr
    assert "Traceback" not in bad.stderr


def test_write_piece_into_a_folder_and_over_a_folder(tmp_path, monkeypatch):
    notation = DEFAULT_ABC + "GABc|"
    piece = write_piece("abc", notation, tmp_path)
    assert piece.files["mid"] == tmp_path / "piece.mid" and (tmp_path / "piece.abc").exists()
    (tmp_path / "song.abc").mkdir()  # `--out song`: the notation's file would be that folder
    with pytest.raises(MusicError, match="song.abc: it is a folder"):
        write_piece("abc", notation, tmp_path / "song")

    def full(*_):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)  # the disk fills while the piece is written
    with pytest.raises(MusicError, match="cannot save the piece as .*tune.*: No space left on device"):
        write_piece("abc", notation, tmp_path / "tune.mid")
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))


def test_midi_base64_is_what_the_client_sends():
    from rwkv_hub.adapters.client import Client

    data = Tune([Note(0, 60, 480)]).to_midi()
    req = Client("ws://127.0.0.1:9/ws", token="x").compose("midi", midi=data)
    assert base64.b64decode(req.message["midi"]) == data and mido.MidiFile(file=io.BytesIO(data)).length > 0


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie awaiting its parent's wait has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_the_tuis_composition_screen_streams_saves_and_offers_to_play(abc_model, tmp_path, monkeypatch):
    from textual.widgets import Static, TextArea

    from rwkv_hub.adapters.tui.app import RwkvApp
    from rwkv_hub.adapters.tui.music import MusicScreen

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    # A stand-in for the speakers (this machine has no sound card): the first player the screen looks
    # for, which notes its pid and plays for a minute unless it is stopped.
    played = tmp_path / "played"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pw-play").write_text(f'#!/bin/sh\necho $$ >> "{played}"\nexec sleep 60\n')
    (bin_dir / "pw-play").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    server = DaemonThread()
    running = server.start(server.hub(abc_model, tmp_path / "sessions"), Config(port=0), TOKEN)

    def pids() -> list[int]:
        return [int(x) for x in played.read_text().split()] if played.exists() else []

    async def until(pilot, ready, steps: int = 100) -> None:
        for _ in range(steps):
            if ready():
                return
            await pilot.pause(0.05)

    async def go():
        app = RwkvApp(running.url, TOKEN, autostart=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.connection == "connected", 200)
            await pilot.press("f5")
            await pilot.pause(0.2)
            screen = app.screen
            assert isinstance(screen, MusicScreen)
            screen.query_one("#start", TextArea).text = DEFAULT_ABC + "CDEF|GABc|"
            await pilot.press("ctrl+g")
            await until(pilot, lambda: screen.pieces, 600)
            status = str(screen.query_one("#music-status", Static).render())
            tune = screen.query_one("#tune", TextArea).text
            files = dict(screen.files)
            await pilot.press("ctrl+o")
            await until(pilot, lambda: len(pids()) == 1)
            playing = str(screen.query_one("#music-status", Static).render())
            await pilot.press("ctrl+o")  # again: the piece starts over, the first player is stopped
            await until(pilot, lambda: len(pids()) == 2 and not _alive(pids()[0]))
            again = [_alive(p) for p in pids()]
            await pilot.press("escape")  # stops the music, stays on the screen
            await until(pilot, lambda: not _alive(pids()[1]))
            stopped = (str(screen.query_one("#music-status", Static).render()), isinstance(app.screen, MusicScreen))
            await pilot.press("ctrl+o")
            await until(pilot, lambda: len(pids()) == 3)
            await pilot.press("escape", "escape")  # stop, then back to the chat
            await pilot.pause(0.2)
            await until(pilot, lambda: not _alive(pids()[2]))
            return status, tune, files, playing, again, stopped, isinstance(app.screen, MusicScreen)

    try:
        status, tune, files, playing, again, stopped, still_there = asyncio.run(asyncio.wait_for(go(), 120))
    finally:
        server.stop(running).result(60)
        server.close()
        for pid in pids():
            if _alive(pid):
                os.kill(pid, 9)
    assert status.startswith("saved abc: ") and tune.startswith(DEFAULT_ABC + "CDEF|GABc|")
    assert all(Path(p).exists() for p in files.values()) and {"abc", "mid", "wav"} <= set(files)
    assert playing == f"playing {files['wav']} (Escape stops)"
    assert again == [False, True]  # never two at once
    assert stopped == ("stopped playing", True)
    assert not still_there and not any(_alive(p) for p in pids())  # back in the chat, in silence


def test_a_format_the_models_vocabulary_cannot_write_is_refused(abc_model):
    """MIDI event words on a character model (or ABC on a MIDI model) would only make noise: said at once."""
    from rwkv_hub.hub.hub import RequestError

    async def go():
        async with Engine(abc_model) as engine:
            Hub(engine, PluginHost(entry_points=False).load()).compose({"format": "midi"})

    with pytest.raises(RequestError, match="needs a MIDI model.*use format abc"):
        asyncio.run(go())
