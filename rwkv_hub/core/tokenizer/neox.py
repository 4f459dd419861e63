"""The 20B (GPT-NeoX) tokenizer of older Pile models, read from its `tokenizer.json` with `tokenizers`.

No copy ships with rwkv-hub: pass the path of `20B_tokenizer.json` (from ChatRWKV or the model's repository).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders

from .base import TokenizerError, utf8


def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE writes each byte as one printable character; this maps the characters back to bytes.

    Printable Latin-1 bytes stand for themselves; the other bytes take the code points from 256 on, in order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table.update({chr(256 + n): b for n, b in enumerate(others)})
    return table


class NeoXTokenizer:
    """A `tokenizers` JSON tokenizer, such as the 20B one; `encode`/`decode` are the library's own.

    `decode_bytes` gives the tokens' raw bytes (for streaming) where the tokenizer is byte-level, as the
    20B one is; special tokens decode to nothing, as in `decode`. Other tokenizers fall back to `decode`.
    """

    name = "20b"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self._tok = HFTokenizer.from_file(str(self.path))
        except Exception as e:  # tokenizers raises plain Exceptions for missing or malformed files
            raise TokenizerError(f"{self.path}: cannot read a tokenizers JSON file ({e})") from None
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self._byte_level = isinstance(self._tok.decoder, decoders.ByteLevel)
        self._alphabet = _byte_level_alphabet()
        # Added tokens hold plain text, not byte-level characters; special ones decode to nothing.
        added = self._tok.get_added_tokens_decoder().items()
        self._added = {i: b"" if t.special else t.content.encode("utf-8") for i, t in added}

    def encode(self, text: str | bytes) -> list[int]:
        text = utf8(text).decode("utf-8", errors="replace")
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        if not self._byte_level:
            return self.decode(ids).encode("utf-8")
        out, alphabet = bytearray(), self._alphabet
        for i in ids:
            piece = self._tok.id_to_token(i)
            if piece is None:
                raise TokenizerError(f"token id {i} is not in {self.path.name} (0..{self.vocab_size - 1})")
            out += self._added[i] if i in self._added else bytes(alphabet[c] for c in piece)
        return bytes(out)
