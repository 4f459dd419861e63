"""The World tokenizer (`rwkv_vocab_v20230424`): greedy longest match over bytes, as the official TRIE tokenizer.

At every position the longest vocabulary entry that the bytes start with becomes the next token, exactly as
`rwkv.rwkv_tokenizer.TRIE_TOKENIZER` does. The loop runs in C (world_tokenizer.c, compiled on first use),
or in pure Python where no compiler is found; both give the same ids.
"""

from __future__ import annotations

import ast
import ctypes
import os
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import numpy as np

from ..native import build_library
from .base import TokenizerError, utf8


def official_vocab_path() -> Path:
    """The vocabulary file shipped inside the official `rwkv` package."""
    import rwkv

    return Path(rwkv.__file__).with_name("rwkv_vocab_v20230424.txt")


def read_vocab(path: str | os.PathLike) -> dict[int, bytes]:
    """Parse lines of `<id> <python str or bytes literal> <byte length>`; strings stand for their UTF-8 bytes."""
    vocab = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                first, last = line.index(" "), line.rindex(" ")
                value = ast.literal_eval(line[first:last].strip())
                data = value.encode("utf-8") if isinstance(value, str) else value
                if not isinstance(data, bytes) or len(data) != int(line[last:]):
                    raise ValueError("length does not match")
                vocab[int(line[:first])] = data
            except (ValueError, SyntaxError) as e:
                raise TokenizerError(f"{path}:{n}: not a vocabulary line ({e})") from None
    return vocab


class _PyTrie:
    """The same longest match in pure Python: one dict of edges per node."""

    def __init__(self, vocab: dict[int, bytes]):
        self.edges: list[dict[int, int]] = [{}]
        self.token: list[int] = [-1]
        for i, data in vocab.items():
            node = 0
            for b in data:
                nxt = self.edges[node].get(b)
                if nxt is None:
                    nxt = len(self.edges)
                    self.edges[node][b] = nxt
                    self.edges.append({})
                    self.token.append(-1)
                node = nxt
            self.token[node] = i

    def encode(self, src: bytes) -> list[int]:
        edges, token, out, p, n = self.edges, self.token, [], 0, len(src)
        while p < n:
            node, best, end, q = 0, -1, p, p
            while q < n:
                node = edges[node].get(src[q], -1)
                if node < 0:
                    break
                q += 1
                if token[node] >= 0:
                    best, end = token[node], q
            if best < 0:
                raise _no_token(src, p)
            out.append(best)
            p = end
        return out


class _CTrie:
    """The trie built in C; freed with the tokenizer."""

    def __init__(self, lib: ctypes.CDLL, vocab: dict[int, bytes]):
        data = b"".join(vocab.values())
        offsets = np.cumsum([0, *map(len, vocab.values())], dtype=np.int64)
        ids = np.fromiter(vocab.keys(), dtype=np.int32, count=len(vocab))
        self._lib = lib
        self._ptr = lib.wt_build(data, offsets.ctypes.data, ids.ctypes.data, len(vocab))
        if not self._ptr:
            raise MemoryError("could not build the World tokenizer's trie")

    def __del__(self) -> None:
        if getattr(self, "_ptr", None):
            self._lib.wt_free(self._ptr)

    def encode(self, src: bytes) -> list[int]:
        out = np.empty(len(src), dtype=np.int32)
        n = self._lib.wt_encode(self._ptr, src, len(src), out.ctypes.data)
        if n < 0:
            raise _no_token(src, -n - 1)
        return out[:n].tolist()


def _no_token(src: bytes, p: int) -> TokenizerError:
    return TokenizerError(f"no vocabulary entry starts with byte {src[p]:#04x} (position {p})")


@cache
def _load_c() -> ctypes.CDLL | None:
    lib = build_library("world_tokenizer.c")
    if lib is None:
        return None
    lib.wt_build.restype = ctypes.c_void_p
    lib.wt_build.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32]
    lib.wt_free.restype = None
    lib.wt_free.argtypes = [ctypes.c_void_p]
    lib.wt_encode.restype = ctypes.c_int64
    lib.wt_encode.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int64, ctypes.c_void_p]
    return lib


class WorldTokenizer:
    """The World tokenizer; `encode`/`decode_bytes` give exactly the official TRIE tokenizer's ids and bytes.

    - `encode` takes `str` (encoded as UTF-8, as the official one does) or raw `bytes` (any bytes, valid
      UTF-8 or not: every single byte is in the vocabulary).
    - `decode_bytes` returns the tokens' raw bytes; `decode` is those bytes as text with invalid UTF-8
      replaced by U+FFFD (the official `decode` returns a lone U+FFFD for the whole text instead).
    - Id 0 is the end-of-text token: it decodes to nothing. Other ids outside the vocabulary raise.

    `native=False` forces the pure-Python loop (used by tests to prove the two are equal).
    """

    name = "world"

    def __init__(self, vocab_path: str | os.PathLike | None = None, native: bool = True):
        vocab = read_vocab(vocab_path or official_vocab_path())
        self.vocab_size = max(vocab) + 1
        self._bytes: list[bytes | None] = [None] * self.vocab_size
        for i, data in vocab.items():
            self._bytes[i] = data
        if self._bytes[0] is None:
            self._bytes[0] = b""
        lib = _load_c() if native else None
        self._trie = _CTrie(lib, vocab) if lib is not None else _PyTrie(vocab)

    @property
    def native(self) -> bool:
        """Whether encoding runs in C."""
        return isinstance(self._trie, _CTrie)

    def encode(self, text: str | bytes) -> list[int]:
        return self._trie.encode(utf8(text))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        table, ids = self._bytes, list(ids)
        try:
            if not ids or min(ids) >= 0:
                return b"".join([table[i] for i in ids])
        except (IndexError, TypeError):
            pass
        bad = next(i for i in ids if not 0 <= i < len(table) or table[i] is None)
        raise TokenizerError(f"token id {bad} is not in the World vocabulary (0..{len(table) - 1})")

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")
