"""Tokenizers of RWKV models (World, 20B, byte-level, MIDI), how a model's is chosen, and streaming detokenization."""

from .base import ByteTokenizer, Tokenizer, TokenizerError
from .choose import choose_tokenizer, detect, world_tokenizer
from .midi import MidiTokenizer
from .neox import NeoXTokenizer
from .stream import StreamDecoder
from .world import WorldTokenizer

__all__ = [
    "ByteTokenizer",
    "MidiTokenizer",
    "NeoXTokenizer",
    "StreamDecoder",
    "Tokenizer",
    "TokenizerError",
    "WorldTokenizer",
    "choose_tokenizer",
    "detect",
    "world_tokenizer",
]
