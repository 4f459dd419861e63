"""Handing memory that the C allocator keeps back to the OS, without paying for it on every prompt.

glibc keeps what a process frees for later allocations, and a prompt's temporaries come in sizes the
next pass cannot always fit into the freed pieces, so a process that never trims grows (0.19B int8 by
about 100 MB over twenty prompts). Trimming after every pass bounds that, but the next pass then faults
every page of its temporaries back in: about 55 MB and 30-60 ms of system time per 512-token pass of a
0.19B model in fp32, several percent of its prefill. So freed memory is kept while the process stays
within an allowance above its size after the last trim, and trimmed once it grows past it.
"""

from __future__ import annotations

import ctypes
import os
import threading

_lock = threading.Lock()
_floor: int | None = None  # resident bytes right after the last trim


def release_freed_memory() -> None:
    """Hand all memory the C allocator holds free back to the OS now (glibc only; a no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def resident_bytes() -> int | None:
    """This process's resident set size, or None where /proc is not available."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def trim_if_grown(allowance: int) -> bool:
    """Trim when the process has grown more than `allowance` bytes since the last trim (or when its size
    cannot be read); returns whether it trimmed. A process that has shrunk below its size after the last
    trim (a model unloaded) measures its growth from the smaller size from then on."""
    global _floor
    with _lock:
        rss = resident_bytes()
        if rss is not None and _floor is not None and rss - _floor <= allowance:
            _floor = min(_floor, rss)
            return False
        release_freed_memory()
        _floor = resident_bytes()
        return True
