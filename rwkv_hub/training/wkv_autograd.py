"""The WKV recurrence as an autograd function for training on the CPU (forward and backward in C).

As PyTorch ops the recurrence is several small kernels per token and layer, each saved for the backward
pass. The C pair in `wkv7_train.c` does a step of a head in a few passes over its 64x64 state and keeps
the state every 16 steps, from which the backward pass recomputes the rest. Without a compiler (or on a
GPU), `wkv` falls back to the runtime's PyTorch loop, which autograd differentiates itself.
"""

from __future__ import annotations

import ctypes
from functools import cache
from pathlib import Path

import torch

from ..core.native import build_library
from ..core.wkv import run_split_heads
from ..core.wkv import wkv7 as wkv7_torch

CHUNK = 16  # must match CHUNK in wkv7_train.c


@cache
def _lib() -> ctypes.CDLL | None:
    dll = build_library(Path(__file__).with_name("wkv7_train.c"))
    if dll is None:
        return None
    dll.wkv7_forward.restype = None
    dll.wkv7_forward.argtypes = [ctypes.c_int] * 6 + [ctypes.c_void_p] * 8
    dll.wkv7_backward.restype = None
    dll.wkv7_backward.argtypes = [ctypes.c_int] * 6 + [ctypes.c_void_p] * 14
    return dll


def native_available() -> bool:
    return _lib() is not None


class _WKV7(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, w, k, v, a, b):  # inputs (B, T, H, N), fp32, contiguous
        bsz, t_len, h, n = r.shape
        y = torch.empty_like(r)
        states = torch.empty(bsz, h, (t_len + CHUNK - 1) // CHUNK, n, n)
        ptrs = [t.data_ptr() for t in (r, w, k, v, a, b, y, states)]
        run_split_heads(lambda p0, p1: _lib().wkv7_forward(bsz, t_len, h, n, p0, p1, *ptrs), bsz * h, t_len * bsz * h)
        ctx.save_for_backward(r, w, k, v, a, b, states)
        return y

    @staticmethod
    def backward(ctx, dy):
        r, w, k, v, a, b, states = ctx.saved_tensors
        bsz, t_len, h, n = r.shape
        dy = dy.contiguous()
        grads = [torch.empty_like(r) for _ in range(6)]
        ptrs = [t.data_ptr() for t in (r, w, k, v, a, b, states, dy, *grads)]
        run_split_heads(lambda p0, p1: _lib().wkv7_backward(bsz, t_len, h, n, p0, p1, *ptrs), bsz * h, t_len * bsz * h)
        return tuple(grads)


def wkv(r: torch.Tensor, w: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor, b: torch.Tensor):
    """y for inputs (B, T, H, N) from a zero state, differentiable in every input."""
    if r.device.type == "cpu" and native_available():
        return _WKV7.apply(*(t.float().contiguous() for t in (r, w, k, v, a, b)))
    bsz, _, h, n = r.shape
    zero = torch.zeros(bsz, h, n, n, device=r.device, dtype=torch.float32)
    return wkv7_torch(zero, r, w, k, v, a, b)[0]
