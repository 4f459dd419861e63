"""Which tokenizer a model uses: the user's choice, else a sidecar file next to it, else its vocabulary size.

Names: "world", "bytes", "20b:/path/to/20B_tokenizer.json", "midi:/path/to/tokenizer-midi.json". A MIDI
music model's `tokenizer-midi.json` beside the checkpoint is found by itself. The sidecar `<checkpoint stem>.tokenizer`
(for `model.pth`, `model.tokenizer`) holds one such name; a relative 20B path in it is read from the
checkpoint's folder.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

from .base import ByteTokenizer, Tokenizer, TokenizerError
from .midi import FILE_NAME as MIDI_FILE
from .midi import MidiTokenizer
from .neox import NeoXTokenizer
from .world import WorldTokenizer

SIDECAR_SUFFIX = ".tokenizer"
NAMES = '"world", "bytes", "20b:/path/to/20B_tokenizer.json" or "midi:/path/to/tokenizer-midi.json"'


@cache
def world_tokenizer() -> WorldTokenizer:
    """One World tokenizer per process: reading its vocabulary takes a few tenths of a second."""
    return WorldTokenizer()


def sidecar_path(checkpoint: Path) -> Path:
    return checkpoint.with_suffix(SIDECAR_SUFFIX)


def detect(vocab_size: int) -> str:
    """The tokenizer name for a vocabulary size, after RWKV Runner's rule; TokenizerError where we have none.

    Runner: < 129 ABC characters, < 2176 REMI, < 20096 MIDI piano, < 50277 MIDI, < 65536 20B, else World.
    Here any vocabulary of at most 256 is byte-level (ABC models' ids are their ASCII characters' codes).
    """
    if vocab_size <= 256:
        return "bytes"
    if vocab_size >= 65536:
        return "world"
    if vocab_size >= 50277:
        raise TokenizerError(
            f"vocabulary {vocab_size} means the 20B (GPT-NeoX) tokenizer, which does not ship with rwkv-hub; "
            'pass tokenizer="20b:/path/to/20B_tokenizer.json" (--tokenizer 20b:PATH on the command line) '
            "or write that name into a .tokenizer file by the model"
        )
    kind = "REMI music" if vocab_size < 2176 else "MIDI piano" if vocab_size < 20096 else "MIDI music"
    raise TokenizerError(
        f"vocabulary {vocab_size} looks like a {kind} model; put its {MIDI_FILE} beside the checkpoint, or pass "
        f"tokenizer= ({NAMES} or a Tokenizer object) to load() (--tokenizer midi:PATH on the command line)"
    )


def parse_name(name: str, base: Path | None = None) -> Callable[[], Tokenizer]:
    """Check a tokenizer name now and return what builds it on first use (a relative 20B path is read from base)."""
    kind, _, arg = name.strip().partition(":")
    kind = kind.lower()
    if kind == "world" and not arg:
        return world_tokenizer
    if kind == "bytes" and not arg:
        return ByteTokenizer
    if kind in ("20b", "midi") and arg:
        path = Path(arg).expanduser()
        path = path if path.is_absolute() or base is None else base / path
        if not path.is_file():
            raise TokenizerError(f"{kind.upper()} tokenizer file {path} not found")
        return cache(lambda: NeoXTokenizer(path)) if kind == "20b" else cache(lambda: MidiTokenizer(path))
    if kind in ("20b", "midi"):
        example = "20B_tokenizer.json" if kind == "20b" else MIDI_FILE
        raise TokenizerError(f'the {kind.upper()} tokenizer needs its JSON file: "{kind}:/path/to/{example}"')
    raise TokenizerError(f"unknown tokenizer {name!r}; expected {NAMES}")


def choose_tokenizer(choice: str | Tokenizer | None, checkpoint: Path, vocab_size: int) -> Callable[[], Tokenizer]:
    """Resolve the tokenizer for a checkpoint: the user's choice, else its sidecar, else its vocabulary size.

    Mistakes in a choice or sidecar raise now; a vocabulary with no known tokenizer raises only when the
    returned function is called, so such a model still loads and runs on token ids.
    """
    if choice is not None and not isinstance(choice, str):
        if not isinstance(choice, Tokenizer):
            raise TokenizerError(f"tokenizer must be a name ({NAMES}) or a Tokenizer, not {type(choice).__name__}")
        return lambda: choice
    if choice is not None:
        return parse_name(choice)
    sidecar = sidecar_path(checkpoint)
    if sidecar.is_file():
        try:
            return parse_name(sidecar.read_text(encoding="utf-8"), base=sidecar.parent)
        except TokenizerError as e:
            raise TokenizerError(f"{sidecar}: {e}") from None
    midi = checkpoint.parent / MIDI_FILE
    if 256 < vocab_size < 50277 and midi.is_file():  # a MIDI model ships its vocabulary beside it
        return parse_name(f"midi:{midi}")
    try:
        name = detect(vocab_size)
    except TokenizerError as e:
        message = str(e)

        def fail() -> Tokenizer:
            raise TokenizerError(message)

        return fail
    return parse_name(name)
