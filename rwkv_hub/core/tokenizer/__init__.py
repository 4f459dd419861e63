"""Tokenizers of RWKV models (World, 20B, byte-level), how a model's is chosen, and streaming detokenization."""

from .base import ByteTokenizer, Tokenizer, TokenizerError
from .choose import choose_tokenizer, detect, world_tokenizer
from .neox import NeoXTokenizer
from .stream import StreamDecoder
from .world import WorldTokenizer

__all__ = [
    "ByteTokenizer",
    "NeoXTokenizer",
    "StreamDecoder",
    "Tokenizer",
    "TokenizerError",
    "WorldTokenizer",
    "choose_tokenizer",
    "detect",
    "world_tokenizer",
]
