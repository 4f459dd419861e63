"""Music conversion for RWKV's music models: ABC notation and MIDI event text to and from .mid files.

The submodules are small and import only mido: `notes` (the shared Note/Tune and MusicError), `abc`
(ABC 2.1 subset), `midi_text` (the MIDI-LLM-tokenizer text format) and `tools` (optional abc2midi,
abcm2ps and fluidsynth). The rest of rwkv-hub imports this package only when music is asked for.
See docs/music.md.
"""

from __future__ import annotations

from .abc import abc_to_midi, parse_abc, repair_abc, validate_abc
from .midi_text import VocabConfig, midi_to_text, text_to_midi, text_to_tune, validate_midi_text
from .notes import MusicError, Note, Tune
from .tools import ToolUnavailable

__all__ = [
    "MusicError",
    "Note",
    "ToolUnavailable",
    "Tune",
    "VocabConfig",
    "abc_to_midi",
    "midi_to_text",
    "parse_abc",
    "repair_abc",
    "text_to_midi",
    "text_to_tune",
    "validate_abc",
    "validate_midi_text",
]
