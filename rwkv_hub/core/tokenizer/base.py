"""What every tokenizer offers, and the byte-level tokenizer of small and music models."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from ..errors import RWKVHubError


class TokenizerError(RWKVHubError):
    """No tokenizer fits the model, a tokenizer name or file is wrong, or an id is outside the vocabulary."""


@runtime_checkable
class Tokenizer(Protocol):
    """Text to token ids and back. `decode_bytes` exists so streaming never has to guess at partial characters."""

    name: str

    def encode(self, text: str | bytes) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def decode_bytes(self, ids: Iterable[int]) -> bytes: ...


def utf8(text: str | bytes) -> bytes:
    """What a tokenizer reads: `str` as UTF-8, bytes as they are. A lone surrogate (such as "\\ud800" from
    JSON) has no UTF-8 form, and anything else is not text: both raise TokenizerError."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text)
    if not isinstance(text, str):
        raise TokenizerError(f"a tokenizer encodes text (str) or bytes, not {type(text).__name__}")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise TokenizerError(
            f"the text has a lone UTF-16 surrogate (U+{ord(text[e.start]):04X}) at character {e.start}: "
            "it is not a character, so it cannot be encoded"
        ) from None


class ByteTokenizer:
    """One token per byte, id = byte value, no offset: the vocabulary of byte-level and ABC-music models.

    `str` input is encoded as UTF-8; `decode` replaces invalid UTF-8 with U+FFFD.
    """

    name = "bytes"
    vocab_size = 256

    def encode(self, text: str | bytes) -> list[int]:
        return list(utf8(text))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        try:
            return bytes(ids)
        except ValueError:
            raise TokenizerError("byte tokenizer: ids must be in 0..255") from None

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")
