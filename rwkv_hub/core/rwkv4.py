"""RWKV-4 ("x040") blocks for a flat batch of tokens from many sequences: Raven, Pile and the music models.

RWKV-4's recurrence works channel by channel, not with a matrix per head. Each channel keeps a
weighted sum of past values, the sum of the weights and the largest exponent seen (so the exponentials
never overflow): `a`, `b` and `p`, stored as the (3, C) WKV state of a layer (see `StateShape.wkv_shape`).
The feed-forward half is RWKV-5's, so `rwkv56.channel_mix` and `rwkv56.run_blocks` serve both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import rwkv56
from .linear import Linear
from .rwkv7 import Layout
from .spec import ModelSpec

MIX = ("k", "v", "r")  # row order of `Block.maa`


@dataclass
class Block:
    """One layer's weights, converted for a strategy (small tensors fp32, large matrices as `Linear`)."""

    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor
    maa: torch.Tensor  # (3, 1, C): mixes in the form x + (x_prev - x) * maa, rows MIX (files hold 1 - maa)
    decay: torch.Tensor  # (C,) log of the per-token decay: -exp(time_decay)
    first: torch.Tensor  # (C,) time_first: the log of the current token's extra weight
    receptance: Linear
    key: Linear
    value: Linear
    output: Linear
    ffn_maa: torch.Tensor  # (2, 1, C): k, r
    ffn_key: Linear
    ffn_receptance: Linear
    ffn_value: Linear
    out_scale: float  # 1.0 except under fp16 (see rwkv56.RESCALE_LAYER)


def convert_block(
    spec: ModelSpec,
    i: int,
    vec: Callable[[str], torch.Tensor],
    mat: Callable[[str], torch.Tensor],
    linear: Callable[[str, float], Linear],
    has: Callable[[str], bool],
    rescale: bool,
) -> Block:
    """Build layer i from the checkpoint readers of `load` (the same readers as `rwkv56.convert_block`)."""
    a, f = f"blocks.{i}.att.", f"blocks.{i}.ffn."
    return Block(
        **rwkv56.shared_fields(i, vec, linear, rescale),
        maa=rwkv56.mix_rows(vec, a, MIX),
        decay=-torch.exp(vec(a + "time_decay")),
        first=vec(a + "time_first"),
        ffn_maa=rwkv56.mix_rows(vec, f, ("k", "r")),
    )


def wkv4(
    state: torch.Tensor, first: torch.Tensor, log_w: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run T steps for B sequences; returns the weighted average of values per token (B, T, C) and the new state.

    state (B, 3, C) holds a, b, p with a / b the running average's numerator and denominator, both scaled
    by exp(-p). log_w, k, v are (B, T, C) fp32. A padded position has log w = 0 and k = -inf, which leaves
    the state unchanged (its output is undefined and dropped by the caller). `state` is not modified.
    """
    a, b, p = state.unbind(1)
    ys = []
    for kt, vt, wt in zip(k.unbind(1), v.unbind(1), log_w.unbind(1), strict=True):
        now = first + kt  # the current token counts with weight exp(first + k)
        top = torch.maximum(p, now)
        e_old, e_new = torch.exp(p - top), torch.exp(now - top)
        ys.append((e_old * a + e_new * vt) / (e_old * b + e_new))
        old = p + wt  # then the past decays and the token joins it with weight exp(k)
        p = torch.maximum(old, kt)
        e_old, e_new = torch.exp(old - p), torch.exp(kt - p)
        a = e_old * a + e_new * vt
        b = e_old * b + e_new
    return torch.stack(ys, 1), torch.stack([a, b, p], 1)


def time_mix(
    blk: Block,
    x: torch.Tensor,
    x_prev: torch.Tensor,
    wkv_state: torch.Tensor,
    lay: Layout,
    n_head: int,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention-like half of a block on fp32 input; returns (out, new wkv state). `n_head` is unused (no heads)."""
    xx = lay.shifted(x_prev, x) - x
    xk, xv, xr = torch.addcmul(x.unsqueeze(0), xx.unsqueeze(0), blk.maa).unbind(0)
    r = torch.sigmoid(blk.receptance(xr.to(dtype)).float())
    k = blk.key(xk.to(dtype)).float()
    v = blk.value(xv.to(dtype)).float()
    live = lay.to_padded(x.new_ones(x.shape[0], 1), 0.0)  # (B, T, 1): 1 for a token, 0 for padding
    y, new_state = wkv4(wkv_state, blk.first, live * blk.decay, lay.to_padded(k, float("-inf")), lay.to_padded(v, 0.0))
    out = blk.output((r * lay.from_padded(y)).to(dtype))
    return (out.float() * blk.out_scale if blk.out_scale != 1.0 else out), new_state
