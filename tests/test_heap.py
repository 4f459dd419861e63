"""Freed memory goes back to the OS only once the process has grown past its allowance (core/heap.py)."""

import ctypes.util
import sys

import pytest
from conftest import random_tokens

import rwkv_hub
from rwkv_hub.core import heap, linear

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


def test_keeps_freed_memory_within_the_allowance_and_trims_past_it(monkeypatch):
    # Earlier tests' models set the size to compare with, and once freed the process may lie below it,
    # where even an allowance of 0 keeps everything: start from no recorded size.
    monkeypatch.setattr(heap, "_floor", None)
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


def test_growth_counts_from_a_smaller_size_once_the_process_has_shrunk(monkeypatch):
    """A process that freed a model lies below its size after the last trim; growth from there must count
    from where it is now, or it could grow by the freed model's size before anything went back."""
    monkeypatch.setattr(heap, "_floor", heap.resident_bytes() + 200 * MiB)  # as if a model were freed since
    assert not heap.trim_if_grown(10 * MiB)
    pins = _holes()  # about 90 MiB freed inside the heap: under the stale size, past the allowance
    assert heap.trim_if_grown(10 * MiB)
    del pins


@pytest.mark.skipif(not linear.int_mm_works(), reason="no VNNI or AMX: int8 prompts stay in the C kernel")
def test_int8_prompt_chunks_on_the_int8_gemm_reuse_their_freed_memory(checkpoint_factory, monkeypatch):
    """An int8 prompt chunk on oneDNN's int8 GEMM keeps two int32 sums per output, so its temporaries are
    larger than an fp32 chunk's. The allowance must cover them, or every chunk trims and the next one faults
    its pages back in (0.45B cpu bf16i8: 40,000 faults a 512-token prompt, 379 instead of 452+ tok/s). With
    the fp32 allowance (64 floats per token and channel) this 0.19B-bodied model trims after most chunks."""
    path = checkpoint_factory(n_layer=12, n_embd=768, vocab_size=1000)
    model = rwkv_hub.load(path, strategy="cpu bf16i8")
    trims = []
    real = heap.trim_if_grown
    monkeypatch.setattr(heap, "trim_if_grown", lambda allowance: trims.append(real(allowance)) or trims[-1])
    tokens = random_tokens(model.prefill_chunk, 1000, seed=5)
    for _ in range(10):
        model.forward(tokens, None)
    assert len(trims) == 10
    assert not any(trims[1:]), f"chunks that handed their memory back: {trims}"
