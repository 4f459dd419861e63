"""Recurrent states keyed by the token prefix that produced them, so a prompt is never read twice.

An RWKV state after n tokens is all the model needs to go on from token n + 1, and it has the same size
however long n is. The engine stores the state at the end of each prompt, at fixed boundaries inside long
prompts and at the end of each generation; a new request starts from the longest stored prefix of its
prompt. At least one prompt token is always left to feed, because the next token's logits come from it.

Lookups hash the prompt's prefixes once (a polynomial hash per position) and probe only the prefix
lengths that are actually stored; a hit is confirmed by comparing the tokens. Entries are evicted least
recently used first when the total exceeds the byte budget.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from .state import State

_MOD = (1 << 61) - 1
_BASE = 1_000_003
TOKEN_BYTES = 8  # what a stored token costs in the budget (a Python int in a tuple, roughly)


def default_budget(state_bytes: int) -> int:
    """Room for about 100 states, at least 64 MiB and at most 1 GiB (a 0.19B model's state is 2.4 MB,
    a 7B model's about 33 MB)."""
    return max(64 * 2**20, min(2**30, 100 * state_bytes))


def prefix_hashes(tokens: Sequence[int]) -> list[int]:
    """h[i] is the hash of tokens[:i] (h[0] for the empty prefix)."""
    h = [0] * (len(tokens) + 1)
    acc = 0
    for i, t in enumerate(tokens):
        acc = (acc * _BASE + t + 1) % _MOD
        h[i + 1] = acc
    return h


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    stored: int = 0
    evicted: int = 0
    tokens_saved: int = 0  # prompt tokens not prefilled thanks to hits


@dataclass
class _Entry:
    tokens: tuple[int, ...]
    state: State
    nbytes: int


class PrefixCache:
    """States by token prefix, within `budget_bytes`; safe to use from several threads."""

    def __init__(self, budget_bytes: int):
        if budget_bytes < 0:
            raise ValueError("the cache budget cannot be negative")
        self.budget_bytes = budget_bytes
        self.stats = CacheStats()
        self._entries: OrderedDict[tuple[int, int], _Entry] = OrderedDict()  # (length, hash) -> entry, LRU first
        self._lengths: dict[int, int] = {}  # stored prefix length -> how many entries have it
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def lookup(self, tokens: Sequence[int], hashes: list[int] | None = None) -> tuple[int, State | None]:
        """The longest stored prefix shorter than `tokens`: (its length, its state), or (0, None)."""
        hashes = hashes or prefix_hashes(tokens)
        with self._lock:
            for n in sorted((n for n in self._lengths if n < len(tokens)), reverse=True):
                key = (n, hashes[n])
                entry = self._entries.get(key)
                if entry is not None and entry.tokens == tuple(tokens[:n]):
                    self._entries.move_to_end(key)
                    self.stats.hits += 1
                    self.stats.tokens_saved += n
                    return n, entry.state
            self.stats.misses += 1
            return 0, None

    def store(self, tokens: Sequence[int], state: State, hashes: list[int] | None = None) -> bool:
        """Remember `state` as the result of reading `tokens` from a fresh state; False if it cannot fit.

        The state is kept as it is (states are never modified in place); pass a CPU copy to keep GPU
        memory free.
        """
        n = len(tokens)
        if n == 0:
            return False
        h = (hashes or prefix_hashes(tokens))[n]
        size = state.nbytes + n * TOKEN_BYTES
        if size > self.budget_bytes:
            return False
        key = (n, h)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._forget(key, old)
            self._entries[key] = _Entry(tuple(tokens), state, size)
            self._lengths[n] = self._lengths.get(n, 0) + 1
            self._bytes += size
            self.stats.stored += 1
            while self._bytes > self.budget_bytes:
                k, e = self._entries.popitem(last=False)
                self._forget(k, e)
                self.stats.evicted += 1
        return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._lengths.clear()
            self._bytes = 0

    def _forget(self, key: tuple[int, int], entry: _Entry) -> None:
        self._bytes -= entry.nbytes
        left = self._lengths[key[0]] - 1
        if left:
            self._lengths[key[0]] = left
        else:
            del self._lengths[key[0]]
