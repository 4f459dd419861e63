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
from torch import Tensor

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


YAndState = tuple[Tensor, Tensor]  # what the recurrence returns: y and the new state
CHUNK = 32  # tokens per chunk of `wkv7`'s chunked form
CHUNKED_MIN_TOKENS = 8  # below this the step loop has fewer ops than the chunked form
# The chunked form divides by products of up to CHUNK decays: at 0.5 each that is 2^32, safe in fp32.
# RWKV-7's decays are never below exp(-exp(-0.5)) = 0.545; other inputs go through the step loop.
CHUNKED_MIN_DECAY = 0.5
# Chunks whose terms are computed in one batch hold at most this many floats (4 MiB) per (chunks, CHUNK, N)
# tensor: a 512-token prompt of 0.45B is one batch, a 4096-token pass of 0.19B (the most a pass takes) four.
GROUP_ELEMENTS = 2**20


def wkv7(state: Tensor, r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor) -> YAndState:
    """Run T steps for B sequences; all inputs (B, T, H, N) fp32, state (B, H, N, N) fp32.

    Returns y (B, T, H, N) and the new state; `state` itself is not modified. This is the PyTorch path
    (GPUs, machines without a C compiler); on the CPU `rwkv7_tmix` in wkv7.c does the same work fused.
    A prompt goes through in chunks (`_wkv7_chunked`): a few batched products per layer and two per
    chunk, where the step loop launches five small ops per token.
    """
    if r.shape[1] >= CHUNKED_MIN_TOKENS and bool(w.min() >= CHUNKED_MIN_DECAY):
        return _wkv7_chunked(state, r, w, k, v, a, b)
    return wkv7_steps(state, r, w, k, v, a, b)


def wkv7_steps(state: Tensor, r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor) -> YAndState:
    """`wkv7` one token at a time, exactly as the module docstring writes the recurrence: the definition
    the other forms are checked against."""
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


def _wkv7_chunked(state: Tensor, r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor) -> YAndState:
    """The same recurrence, CHUNK tokens at a time.

    Within a chunk let G_t be the product of the decays w_1..w_t and z_t = S_{t-1} a_t. Then
    S_t = (S_0 + sum_{j<=t} z_j (b_j/G_j)^T + v_j (k_j/G_j)^T) diag(G_t), and the z_j solve a unit lower
    triangular system, so everything a chunk adds is products of (CHUNK x N) and (CHUNK x CHUNK) matrices
    that depend on the chunk's own inputs alone: y = P S_0^T + Y0 and S_CHUNK = S_0 M + E
    (`_chunk_terms`). Those are computed for many chunks at once; only the two products with S_0 run
    chunk after chunk. With decays of at least CHUNKED_MIN_DECAY, 1/G stays below 2^32, far from fp32's
    limits, and every decay product that a result needs is a ratio G_t/G_j <= 1.
    """
    bsz, t_len, h, n = r.shape
    bh, pad = bsz * h, -t_len % CHUNK
    chunks = (t_len + pad) // CHUNK

    def blocks(x: Tensor, fill: float) -> Tensor:
        """(B, T, H, N) -> (chunks * B * H, CHUNK, N), chunk-major; padded steps leave the state as it is."""
        if pad:
            x = torch.cat([x, x.new_full((bsz, pad, h, n), fill)], 1)
        return x.reshape(bsz, chunks, CHUNK, h, n).permute(1, 0, 3, 2, 4).reshape(chunks * bh, CHUNK, n)

    ins = [blocks(x, fill) for x, fill in ((r, 0.0), (w, 1.0), (k, 0.0), (v, 0.0), (a, 0.0), (b, 0.0))]
    s = state.reshape(bh, n, n)
    y = r.new_empty(bsz, chunks, CHUNK, h, n)
    group = max(1, GROUP_ELEMENTS // (bh * CHUNK * n))  # chunks whose terms are computed together
    for g0 in range(0, chunks, group):
        g1 = min(chunks, g0 + group)
        p, y0, m, e = _chunk_terms(*(x[g0 * bh : g1 * bh] for x in ins))
        for c in range(g1 - g0):
            part = slice(c * bh, (c + 1) * bh)
            out = torch.baddbmm(y0[part], p[part], s.transpose(1, 2))
            y[:, g0 + c].copy_(out.view(bsz, h, CHUNK, n).transpose(1, 2))
            s = torch.baddbmm(e[part], s, m[part])
    return y.view(bsz, chunks * CHUNK, h, n)[:, :t_len], s.view(bsz, h, n, n)


def _chunk_terms(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, ...]:
    """P, Y0, M and E of `_wkv7_chunked` for (X, CHUNK, N) blocks of X independent chunks and heads.

    Names are dropped as soon as they are used up: the peak is a count of (X, CHUNK, N) tensors alive at
    once, which GROUP_ELEMENTS bounds."""
    lw = w.log()
    cum = lw.cumsum(1)
    a_dec = a * (cum - lw).exp()  # G_{t-1} a_t
    del lw
    decay = cum.exp()  # G_t
    inv = cum.neg_().exp_()  # 1/G_t
    del cum
    r_dec = r * decay  # G_t r_t
    last = decay[:, -1:].clone()  # G_CHUNK
    del decay
    b_inv, k_inv = b * inv, k * inv
    del inv
    strict = torch.ones(CHUNK, CHUNK, dtype=torch.bool, device=r.device).tril(-1)
    upto = strict | torch.eye(CHUNK, dtype=torch.bool, device=r.device)
    zero = torch.zeros((), dtype=r.dtype, device=r.device)
    ab = torch.where(strict, a_dec @ b_inv.transpose(1, 2), zero)  # z_j's dependence on z_i, i < j
    ak = torch.where(strict, a_dec @ k_inv.transpose(1, 2), zero)  # ... and on v_i
    rb = torch.where(upto, r_dec @ b_inv.transpose(1, 2), zero)  # y_t's on z_j, j <= t
    rk = torch.where(upto, r_dec @ k_inv.transpose(1, 2), zero)  # ... and on v_j
    eye = torch.eye(CHUNK, dtype=r.dtype, device=r.device)
    solved = torch.linalg.solve_triangular(eye - ab, torch.cat([a_dec, ak], 2), upper=False, unitriangular=True)
    del ab, ak, a_dec
    n = r.shape[-1]
    za, zv = solved[..., :n], solved[..., n:]  # z = za S_0^T + zv v
    u = zv @ v
    p = torch.baddbmm(r_dec, rb, za)  # y = p S_0^T + y0
    del r_dec
    y0 = torch.baddbmm(rb @ u, rk, v)
    del rb, rk
    b_end, k_end = b_inv * last, k_inv * last  # b_j G_CHUNK / G_j
    del b_inv, k_inv
    m = za.transpose(1, 2) @ b_end  # S_CHUNK = S_0 m + e
    m.diagonal(dim1=1, dim2=2).add_(last.squeeze(1))
    del solved, za, zv
    e = (u.transpose(1, 2) @ b_end).baddbmm_(v.transpose(1, 2), k_end)
    return p, y0, m, e
