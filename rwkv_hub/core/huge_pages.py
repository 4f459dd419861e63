"""Keeping a CPU model's weights in 2 MB pages.

A decode step reads every weight once: 135 MB for 0.19B in int8, about 35,000 pages of 4 KB. Each page
costs a TLB miss, and the CPU's prefetchers stop at every page boundary. Linux backs memory with 2 MB
pages where a program asks for them (transparent huge pages in `madvise` mode, the usual default), so the
loader copies the converted weights, in the order a step reads them, into one mapping that asks
(`Arena`). On a 2-core Zen 4 that made one 0.19B stream 6-17% faster at `cpu bf16i8` and about 5% at
`cpu bf16` and `cpu fp32`; the same copy into 4 KB pages gained nothing clear. 16 streams, bound by
arithmetic, gained nothing (fp32 lost 4-6%): docs/runtime.md.

Where the platform has no transparent huge pages, or they are switched off, weights stay where they are.
"""

from __future__ import annotations

import math
import mmap

import torch

PAGE = 2 << 20
ALIGN = 64  # each tensor starts on a cache line, as the C kernels' loads assume nothing less
MIN_BYTES = 64 << 10  # smaller tensors (norms, mixes) are read from cache anyway
_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def available() -> bool:
    """Whether this process can ask for 2 MB pages: Linux with transparent huge pages not set to never."""
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        with open(_SETTING) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def wanted(t: torch.Tensor) -> bool:
    """Whether a tensor is worth moving: a large one in CPU memory."""
    return t.device.type == "cpu" and t.numel() * t.element_size() >= MIN_BYTES


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def footprint(t: torch.Tensor) -> int:
    """Bytes an arena gives this tensor (0 for those it leaves where they are)."""
    return _aligned(t.numel() * t.element_size()) if wanted(t) else 0


class Arena:
    """One anonymous mapping of `nbytes` (the sum of `footprint` over what it will hold), advised for 2 MB
    pages and starting on one; tensors are copied in one after another. Pages are committed as copies
    touch them, so the process holds no more than the copies plus the last page's unused tail. The mapping
    lives as long as any tensor copied into it."""

    def __init__(self, nbytes: int):
        mapping = mmap.mmap(-1, nbytes + PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        mapping.madvise(mmap.MADV_HUGEPAGE)
        whole = torch.frombuffer(mapping, dtype=torch.uint8)  # holds the mapping as long as any view lives
        start = -whole.data_ptr() % PAGE
        self._rest = whole[start : start + nbytes]

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialized tensor taken from the arena."""
        used = math.prod(shape) * dtype.itemsize
        n = _aligned(used)
        if n > self._rest.numel():
            raise ValueError(f"arena too small: {n} bytes wanted, {self._rest.numel()} left")
        out = self._rest[:used].view(dtype).view(shape)
        self._rest = self._rest[n:]
        return out

    def copy(self, t: torch.Tensor) -> torch.Tensor:
        """t's values in the arena (t itself when it is not `wanted`)."""
        if not wanted(t):
            return t
        return self.empty(tuple(t.shape), t.dtype).copy_(t)


def empty(shape: tuple[int, ...], *, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized CPU tensor in a mapping of its own, in 2 MB pages (called as `torch.empty`): for one
    large matrix (the head) filled as it is converted, which a copy afterwards would briefly hold twice."""
    nbytes = _aligned(math.prod(shape) * dtype.itemsize)
    return Arena(nbytes).empty(shape, dtype)
