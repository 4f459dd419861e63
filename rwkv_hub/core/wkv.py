"""The RWKV-7 state recurrence ("WKV"), for many sequences at once.

Per head, with the state S indexed [value, key], each token does
    S <- S * diag(w) + (S @ a) b^T + v k^T,    y = S @ r
where a = -kk and b = kk * iclr (the "in-context learning rate"). A padded position with w = 1 and
a = b = k = v = 0 leaves S unchanged, which lets sequences of different lengths share one loop.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import torch

# Below this many head-steps one thread is faster than handing work to a second one.
PARALLEL_MIN_WORK = 256


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads()), thread_name_prefix="rwkv-hub-wkv")


def head_threads(n_head: int, work: int) -> int:
    """How many threads share `n_head` heads whose recurrence takes `work` head-steps."""
    return min(torch.get_num_threads(), n_head) if work >= PARALLEL_MIN_WORK else 1


def run_split_heads(call: Callable[[int, int], None], n_head: int, work: int) -> None:
    """Run `call(h0, h1)` over all heads, split across threads when `work` is large (ctypes drops the GIL)."""
    threads = head_threads(n_head, work)
    if threads <= 1:
        call(0, n_head)
        return
    bounds = [n_head * j // threads for j in range(threads + 1)]
    jobs = [_pool().submit(call, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    for j in jobs:
        j.result()


def wkv7(
    state: torch.Tensor,
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run T steps for B sequences; all inputs (B, T, H, N) fp32, state (B, H, N, N) fp32.

    Returns y (B, T, H, N) and the new state; `state` itself is not modified. This is the PyTorch path
    (GPUs, machines without a C compiler); on the CPU `rwkv7_tmix` in wkv7.c does the same work fused.
    """
    bsz, t_len, h, n = r.shape
    bh = bsz * h
    s = state.reshape(bh, n, n)
    # Time-major, one view per step: indexing a Python list is cheaper than slicing tensors in the loop.
    rs = r.transpose(0, 1).reshape(t_len, bh, n, 1).unbind(0)
    ws = w.transpose(0, 1).reshape(t_len, bh, 1, n).unbind(0)
    ks = k.transpose(0, 1).reshape(t_len, bh, 1, n).unbind(0)
    vs = v.transpose(0, 1).reshape(t_len, bh, n, 1).unbind(0)
    as_ = a.transpose(0, 1).reshape(t_len, bh, n, 1).unbind(0)
    bs = b.transpose(0, 1).reshape(t_len, bh, 1, n).unbind(0)
    ys = []
    for t in range(t_len):
        sa = torch.bmm(s, as_[t])
        s = torch.baddbmm(torch.baddbmm(s * ws[t], sa, bs[t]), vs[t], ks[t])
        ys.append(torch.bmm(s, rs[t]))
    y = torch.stack(ys, 0).view(t_len, bsz, h, n).transpose(0, 1)
    return y, s.view(bsz, h, n, n)
