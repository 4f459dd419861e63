"""Freed memory goes back to the OS only once the process has grown past its allowance (core/heap.py)."""

import ctypes.util
import sys

import pytest

from rwkv_hub.core import heap

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None or heap.resident_bytes() is None,
    reason="needs glibc and /proc",
)

MiB = 2**20


def _holes(n: int = 1500, size: int = 64 * 1024) -> list[bytearray]:
    """n touched blocks below glibc's mmap threshold, each followed by a small block that stays, so that
    freeing the big ones leaves holes inside the heap that only a trim hands back."""
    pins = []
    big = []
    for _ in range(n):
        big.append(bytearray(b"x" * size))
        pins.append(bytearray(b"y" * 600))
    big.clear()
    return pins


def test_keeps_freed_memory_within_the_allowance_and_trims_past_it():
    assert heap.trim_if_grown(0)  # sets the size to compare with
    pins = _holes()
    before = heap.resident_bytes()
    assert before - heap._floor > 50 * MiB  # the freed blocks are still resident
    assert not heap.trim_if_grown(1024 * MiB)
    assert heap.resident_bytes() > before - 10 * MiB
    assert heap.trim_if_grown(10 * MiB)
    assert heap.resident_bytes() < before - 50 * MiB
    assert not heap.trim_if_grown(10 * MiB)  # nothing has grown since
    del pins
