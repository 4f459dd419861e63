"""Turn generated tokens into text deltas that never split a UTF-8 character."""

from __future__ import annotations

import codecs

from .base import Tokenizer


class StreamDecoder:
    """Feed token ids one at a time; each call returns only the text completed so far, each character once.

    A character whose bytes are spread over several tokens comes out whole with the token that ends it.
    Invalid bytes become U+FFFD as soon as they are known to be invalid; `flush` ends the stream, turning
    bytes of a character that never finished into U+FFFD too.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        """Add one token; return the newly completed text, possibly ''."""
        return self._utf8.decode(self.tokenizer.decode_bytes([token_id]))

    def flush(self) -> str:
        """End the stream: return what is left (a partial character as U+FFFD) and start afresh."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text
