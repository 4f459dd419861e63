"""Composition: the `abc` and `midi` prompt formats, their presets, and a finished piece written out as files.

RWKV's music models continue a tune. ABC models read one token per character, a tune starting after
the beginning-of-tune id 2 and ending with the end-of-tune id 3 (with the byte tokenizer those are the
characters U+0002 and U+0003). MIDI models read MIDI-LLM-tokenizer event words (`t125`, `pi:43:5`)
after `<start>`, and end with `<end>` or `<pad>`. The format plugins build those prompts; `write_piece`
turns what came back into .abc/.txt, .mid, and, where the tools are installed, .svg sheet music and
.wav audio (rwkv_hub.music holds the conversions).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.atomic import replace_file, write_text
from .formats import FormatError, FormatInput, PromptFormat, Rendered
from .presets import Preset

ABC_START, ABC_END = "\x02", "\x03"
MIDI_START, MIDI_ENDS = "<start>", ("<end>", "<pad>")
DEFAULT_ABC = "X:1\nL:1/8\nM:4/4\nK:C\n"
FORMATS = ("abc", "midi")

if TYPE_CHECKING:
    import torch


def render_abc(inp: FormatInput) -> Rendered:
    """The beginning of a tune (header fields, perhaps bars) after the beginning-of-tune mark; a plain
    4/4 tune in C when none is given."""
    text = (inp.text or inp.input or DEFAULT_ABC).replace("\r\n", "\n")
    if ABC_START in text or ABC_END in text:
        raise FormatError("the abc format's text must not contain the tune marks U+0002 or U+0003")
    return Rendered(ABC_START + text, (ABC_END,))


def event_words(text: str) -> list[str]:
    """The MIDI events of a text, without the markers `<start>`, `<end>` and `<pad>`."""
    return [w for w in text.split() if w not in (MIDI_START, *MIDI_ENDS)]


def render_midi(inp: FormatInput) -> Rendered:
    """`<start>` and the events to continue (none: a new piece)."""
    words = (inp.text or inp.input).split()
    if any(w in (MIDI_START, *MIDI_ENDS) for w in words):
        raise FormatError("the midi format's text is the events to continue, without <start>, <end> or <pad>")
    return Rendered(" ".join([MIDI_START, *words]) + " ", MIDI_ENDS)


def _tune(text: str) -> str:
    return text.replace(ABC_START, "").split(ABC_END)[0]


MUSIC_FORMATS = (
    PromptFormat("abc", "ABC notation: continue a tune, one character per token", render_abc, read_answer=_tune),
    PromptFormat("midi", "MIDI events (MIDI-LLM-tokenizer words) after <start>", render_midi, read_answer=str.strip),
)

# ChatRWKV's MIDI script: top_k 8, top_p 0.8, and a penalty of 0.5 per earlier occurrence that fades by
# 0.997 a token. The ABC preset samples the same way without the penalty (a tune repeats on purpose).
MUSIC_PRESETS = (
    Preset(
        "music-midi",
        "MIDI composition (ChatRWKV's music sampling)",
        "MIDI 作曲(ChatRWKV 的音乐采样)",
        "midi",
        {"temperature": 1.0, "top_p": 0.8, "top_k": 8, "frequency_penalty": 0.5, "penalty_decay": 0.997},
    ),
    Preset(
        "music-abc",
        "ABC composition",
        "ABC 作曲",
        "abc",
        {"temperature": 1.0, "top_p": 0.8, "top_k": 8, "presence_penalty": 0.0, "frequency_penalty": 0.0},
    ),
)


def end_nudge(tokens: list[int], logits: torch.Tensor) -> torch.Tensor:  # noqa: F821 (torch: typing only)
    """ChatRWKV's MIDI script makes the end more likely as a piece grows past 2,000 events: +1 on the end
    id's logit for each 500 more. (Ids 0 and 2 are `<pad>` and `<end>` in the published vocabulary.)"""
    if len(tokens) > 2000:
        logits[[0, 2]] += (len(tokens) - 2000) / 500
    return logits


@dataclass
class Piece:
    """What a composition left on disk; `unavailable` names each optional output that could not be made
    and why (a tool or soundfont not installed)."""

    notation: str
    files: dict[str, Path] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # what was repaired in the model's output

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": {k: str(v) for k, v in self.files.items()},
            "unavailable": dict(self.unavailable),
            "problems": list(self.problems),
        }


def piece_text(fmt: str, start: str, generated: str) -> str:
    """The whole piece: the part given to continue and what the model wrote."""
    if fmt == "abc":
        return _tune((start or DEFAULT_ABC) + generated)
    return " ".join(event_words(f"{start} {generated}"))


def write_piece(
    fmt: str, notation: str, out: str | Path, *, svg: bool = False, wav: bool = False, vocab: Mapping | None = None
) -> Piece:
    """Write `notation` (ABC text or MIDI event text) next to `out` (its stem names every file): the
    notation, a .mid, and, if asked and possible, .svg (ABC only) and .wav. Malformed notation is repaired,
    and what was repaired is listed; a piece with nothing playable left raises MusicError."""
    from ..music.notes import MusicError

    base = piece_base(out)
    try:
        return _write_piece(fmt, notation, base, svg, wav, vocab)
    except OSError as e:
        raise MusicError(f"cannot save the piece as {base}.*: {e.strerror or e}") from None


def piece_base(out: str | Path) -> Path:
    """The stem every file of a piece at `out` shares (a folder: `piece` in it), with its folder made;
    checked before any generating, so a path that cannot be written fails first, not after the music."""
    from ..music.notes import MusicError

    folder = str(out).endswith(("/", os.sep))
    out = Path(out).expanduser()
    if folder or out.is_dir():
        base = out / "piece"
    else:
        base = out.with_suffix("") if out.suffix.lower() in (".mid", ".midi", ".abc", ".txt") else out
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MusicError(f"cannot save a piece in {base.parent}: {e.strerror or e}") from None
    for suffix in (".mid", ".abc", ".txt"):
        if base.with_suffix(suffix).is_dir():
            raise MusicError(f"cannot save the piece as {base.with_suffix(suffix)}: it is a folder; give a file name")
    return base


def _write_piece(fmt: str, notation: str, base: Path, svg: bool, wav: bool, vocab: Mapping | None) -> Piece:
    from ..music import midi_text, tools
    from ..music.abc import abc_to_midi, repair_abc, validate_abc

    if fmt == "abc":
        problems = validate_abc(notation)
        fixed = repair_abc(notation)
        midi = abc_to_midi(fixed)
        piece = Piece(fixed, problems=problems)
        write_text(base.with_suffix(".abc"), fixed)
        piece.files["abc"] = base.with_suffix(".abc")
    elif fmt == "midi":
        config = midi_text.VocabConfig.from_dict(dict(vocab)) if vocab else midi_text.VocabConfig.default()
        problems = midi_text.validate_midi_text(notation, config)
        midi = midi_text.text_to_midi(notation, config)
        piece = Piece(notation, problems=problems)
        write_text(base.with_suffix(".txt"), notation + "\n")
        piece.files["txt"] = base.with_suffix(".txt")
    else:
        raise FormatError(f"unknown music format {fmt!r}; formats are {', '.join(FORMATS)}")
    replace_file(base.with_suffix(".mid"), lambda tmp: tmp.write_bytes(midi))
    piece.files["mid"] = base.with_suffix(".mid")
    if svg:
        if fmt != "abc":
            piece.unavailable["svg"] = "sheet music is drawn from ABC; a MIDI piece has none"
        else:
            _optional(piece, "svg", lambda: tools.abc_to_svg(piece.notation, base.with_suffix(".svg")))
    if wav:
        _optional(piece, "wav", lambda: tools.midi_to_wav(midi, base.with_suffix(".wav")))
    return piece


def _optional(piece: Piece, kind: str, make) -> None:
    """An extra output: a tool that is missing, or that fails on this piece, costs that output only."""
    from ..music.notes import MusicError

    try:
        piece.files[kind] = make()
    except MusicError as e:
        piece.unavailable[kind] = str(e)


def safe_stem(name: str) -> str:
    """A file name from a piece's title or id: letters, digits, '-', '_' only."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:64] or "piece"
