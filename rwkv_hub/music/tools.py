"""Optional external tools for sheet music and audio, used when they are on PATH.

abc2midi (Debian package abcmidi) is the reference ABC converter, abcm2ps (abcm2ps) draws ABC as SVG,
fluidsynth (fluidsynth, with a General MIDI soundfont from fluid-soundfont-gm) renders MIDI as WAV.
Each function writes into a private folder beside the output, then renames the result into place, so
a reader never sees half a file; each runs under a timeout. A missing tool raises ToolUnavailable.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .notes import MusicError

PACKAGES = {"abc2midi": "abcmidi", "abcm2ps": "abcm2ps", "fluidsynth": "fluidsynth"}
SOUNDFONTS = (
    Path("/usr/share/sounds/sf2/default-GM.sf2"),
    Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
    Path("/usr/share/soundfonts/default.sf2"),
    Path("/usr/share/soundfonts/FluidR3_GM.sf2"),
)


class ToolUnavailable(MusicError):
    """An optional tool (or the soundfont) is not installed; the message names the package to install."""


def available() -> dict[str, bool]:
    """Which optional tools can run here: the three programs, and "soundfont" for a General MIDI soundfont."""
    found = {tool: shutil.which(tool) is not None for tool in PACKAGES}
    return found | {"soundfont": find_soundfont() is not None}


def find_soundfont() -> Path | None:
    """The first General MIDI soundfont in the places Debian and Fedora install one."""
    return next((path for path in SOUNDFONTS if path.is_file()), None)


def _program(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ToolUnavailable(f"{tool} is not installed (Debian/Ubuntu: apt-get install {PACKAGES[tool]})")
    return path


def _run(command: list[str], cwd: Path, timeout: float) -> str:
    tool = Path(command[0]).name
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, errors="replace")
    except subprocess.TimeoutExpired:
        raise MusicError(f"{tool} took longer than {timeout:g} s and was stopped") from None
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no message"]
        raise MusicError(f"{tool} failed (exit status {done.returncode}): {last[0]}")
    return done.stdout + done.stderr


def _work(out: str | Path) -> tuple[Path, tempfile.TemporaryDirectory]:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out, tempfile.TemporaryDirectory(dir=out.parent, prefix=".rwkv-hub-music-")


def _publish(result: Path, out: Path, tool: str, log: str) -> Path:
    if not result.is_file() or result.stat().st_size == 0:
        lines = [line for line in log.splitlines() if line.strip()][-1:] or ["no output"]
        raise MusicError(f"{tool} wrote nothing: {lines[0]}")
    os.replace(result, out)
    return out


def run_abc2midi(abc: str, out: str | Path, options: Sequence[str] = (), timeout: float = 60) -> Path:
    """Convert ABC to a .mid file with abc2midi (the reference implementation, for comparison);
    `options` are extra abc2midi flags such as -NGRA (no grace notes) or -NGUI (no chord accompaniment)."""
    program = _program("abc2midi")
    out, work = _work(out)
    with work as folder:
        folder = Path(folder)
        (folder / "tune.abc").write_text(abc, encoding="utf-8")
        log = _run([program, "tune.abc", "-o", "tune.mid", "-quiet", *options], folder, timeout)
        return _publish(folder / "tune.mid", out, "abc2midi", log)


def abc_to_svg(abc: str, out: str | Path, timeout: float = 60) -> Path:
    """Draw the first tune of the ABC text as sheet music in one SVG file (abcm2ps -g)."""
    program = _program("abcm2ps")
    out, work = _work(out)
    with work as folder:
        folder = Path(folder)
        (folder / "tune.abc").write_text(abc, encoding="utf-8")
        log = _run([program, "-g", "-O", "tune.svg", "tune.abc"], folder, timeout)
        pages = sorted(folder.glob("tune*.svg"))  # abcm2ps numbers its files: tune001.svg, ...
        return _publish(pages[0] if pages else folder / "tune.svg", out, "abcm2ps", log)


def midi_to_wav(
    midi: bytes, out: str | Path, soundfont: str | Path | None = None, sample_rate: int = 44100, timeout: float = 300
) -> Path:
    """Render .mid bytes as a WAV file with fluidsynth and a General MIDI soundfont."""
    program = _program("fluidsynth")
    font = Path(soundfont) if soundfont else find_soundfont()
    if font is None or not font.is_file():
        where = font or ", ".join(map(str, SOUNDFONTS))
        raise ToolUnavailable(f"no soundfont at {where} (Debian/Ubuntu: apt-get install fluid-soundfont-gm)")
    out, work = _work(out)
    with work as folder:
        folder = Path(folder)
        (folder / "song.mid").write_bytes(midi)
        command = [program, "-ni", "-q", "-r", str(sample_rate), "-F", "song.wav", str(font.resolve()), "song.mid"]
        log = _run(command, folder, timeout)
        return _publish(folder / "song.wav", out, "fluidsynth", log)
