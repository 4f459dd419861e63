"""The MIDI music models' tokenizer: one token per MIDI event word, read from the model's
`tokenizer-midi.json` (a `tokenizers` WordLevel vocabulary split on whitespace).

The words are the MIDI-LLM-tokenizer event text (time shifts such as `t125`, notes such as `pi:43:5`,
and `<pad>`, `<start>`, `<end>`); rwkv_hub.music turns that text into a .mid file and back. Each token
decodes to its word and a space, so streamed pieces join into the same text as a whole decode.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from .base import TokenizerError, utf8

FILE_NAME = "tokenizer-midi.json"


class MidiTokenizer:
    """Event words to ids and back; an unknown word is an error, not a silent `<unk>`."""

    name = "midi"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            vocab = data["model"]["vocab"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise TokenizerError(f"{self.path}: not a MIDI tokenizer file (a tokenizers WordLevel JSON): {e}") from None
        if not isinstance(vocab, dict) or not vocab:
            raise TokenizerError(f"{self.path}: its model.vocab is empty or not a table of words")
        self.ids: dict[str, int] = {str(w): int(i) for w, i in vocab.items()}
        self.words: dict[int, str] = {i: w for w, i in self.ids.items()}
        self.vocab_size = max(self.words) + 1

    def encode(self, text: str | bytes) -> list[int]:
        text = utf8(text).decode("utf-8", errors="replace")  # a damaged byte: that word is not in the vocabulary
        out = []
        for word in text.split():
            tid = self.ids.get(word)
            if tid is None:
                tid = self.ids.get(word.lower())  # the published tokenizers lowercase their input
            if tid is None:
                raise TokenizerError(f"{word!r} is not a word of the MIDI vocabulary ({self.path.name})")
            out.append(tid)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        try:
            return "".join(self.words[int(i)] + " " for i in ids).encode("utf-8")
        except KeyError as e:
            raise TokenizerError(f"id {e.args[0]} is not in the MIDI vocabulary ({self.path.name})") from None
