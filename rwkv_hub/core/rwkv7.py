"""RWKV-7 ("x070") blocks for a flat batch of tokens from many sequences.

Tokens of all sequences are laid out as one (T, C) matrix so that every matrix product is a single
GEMM for the whole batch; only the token shift and the WKV recurrence need to know which sequence a
token belongs to (`Layout`). The residual stream and the recurrent state stay fp32; matrix inputs use
the strategy's compute dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F

from .linear import Linear, f32_linear
from .native import load_decode7
from .wkv import head_threads, wkv7

DECAY_SCALE = 0.606531  # exp(-0.5): the decay is exp(-exp(-0.5) * sigmoid(w0 + lora(x)))
GROUP_NORM_EPS = 64e-5
NATIVE_MAX_HEAD_SIZE = 256  # the C kernel keeps a head's vectors on the stack


@dataclass
class Block:
    """One layer's weights, converted for a strategy (small tensors fp32, large matrices as `Linear`)."""

    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor
    maa: torch.Tensor  # (6, 1, C): token-shift mix, rows ordered w, a, g, v, r, k (see MIX_ORDER)
    # Low-rank pairs for w, a, g, v as F.linear weights: down (r, C), up (C, r); v is None in layer 0.
    lora: list[tuple[torch.Tensor, torch.Tensor] | None]
    w0: torch.Tensor
    a0: torch.Tensor
    v0: torch.Tensor | None
    k_k: torch.Tensor
    k_a: torch.Tensor
    r_k: torch.Tensor  # (C,) flattened
    receptance: Linear
    key: Linear
    value: Linear
    output: Linear
    lnx_w: torch.Tensor
    lnx_b: torch.Tensor
    ffn_x_k: torch.Tensor
    ffn_key: Linear
    ffn_value: Linear


# The four LoRA inputs come first, in LORA_ORDER; v, r, k feed the big matrices.
MIX_ORDER = ("x_w", "x_a", "x_g", "x_v", "x_r", "x_k")
LORA_ORDER = ("w", "a", "g", "v")


class Layout:
    """Which rows of the flat (T, C) token matrix belong to which sequence.

    `lengths[b]` new tokens for sequence b, stored consecutively. `uniform` marks the common cases
    (one sequence, or every sequence with the same count) that need no gathers.
    """

    def __init__(self, lengths: list[int], device: torch.device):
        self.lengths = lengths
        self.batch = len(lengths)
        self.total = sum(lengths)
        self.max_len = max(lengths)
        self.uniform = all(n == self.max_len for n in lengths)
        self.device = device
        self.starts = [0]
        for n in lengths[:-1]:
            self.starts.append(self.starts[-1] + n)

    # The index tensors below serve only batches of mixed lengths (or the C kernel's offsets); they are
    # built on first use, so a decode step of equal-length sequences makes none of them.
    @cached_property
    def last(self) -> torch.Tensor:
        return torch.tensor([s + n - 1 for s, n in zip(self.starts, self.lengths, strict=True)], device=self.device)

    @cached_property
    def prev(self) -> torch.Tensor:
        prev = []
        for b, (s, n) in enumerate(zip(self.starts, self.lengths, strict=True)):
            prev.append(b)
            prev.extend(self.batch + s + j for j in range(n - 1))
        return torch.tensor(prev, device=self.device)

    @cached_property
    def pad_pos(self) -> torch.Tensor:
        pos = [b * self.max_len + j for b, n in enumerate(self.lengths) for j in range(n)]
        return torch.tensor(pos, device=self.device)

    @cached_property
    def starts32(self) -> torch.Tensor:
        return torch.tensor(self.starts, dtype=torch.int32)

    @cached_property
    def lengths32(self) -> torch.Tensor:
        return torch.tensor(self.lengths, dtype=torch.int32)

    def shifted(self, x_prev: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """For each token, the previous token's row (the state's row for a sequence's first token)."""
        if self.total == self.batch:
            return x_prev
        if self.batch == 1:
            return torch.cat([x_prev, x[:-1]])
        return torch.cat([x_prev, x]).index_select(0, self.prev)

    def last_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Each sequence's last row, as a tensor of its own: a view would keep the whole chunk's (T, C)
        rows alive in the state (two per layer: 48 MB for a 256-token chunk of a 24-layer, 1024-wide model)."""
        if self.total == self.batch:
            return x
        if self.batch == 1:
            return x[-1:].clone()
        return x.index_select(0, self.last)

    def tail(self) -> Tail:
        """Each sequence's last two tokens (one where it has only one): all that the last layer's output
        projection and feed-forward need to compute when only the last token's hidden row is wanted."""
        lengths = [min(n, 2) for n in self.lengths]
        if self.batch == 1:
            return Tail(Layout(lengths, self.device), slice(self.total - lengths[0], self.total))
        rows = [s + n - m + j for s, n, m in zip(self.starts, self.lengths, lengths, strict=True) for j in range(m)]
        return Tail(Layout(lengths, self.device), torch.tensor(rows, device=self.device))

    def to_padded(self, x: torch.Tensor, fill: float) -> torch.Tensor:
        """(T, ...) -> (B, max_len, ...), padding short sequences with `fill`."""
        if self.uniform:
            return x.view(self.batch, self.max_len, *x.shape[1:])
        out = x.new_full((self.batch * self.max_len, *x.shape[1:]), fill)
        out.index_copy_(0, self.pad_pos, x)
        return out.view(self.batch, self.max_len, *x.shape[1:])

    def from_padded(self, y: torch.Tensor) -> torch.Tensor:
        flat = y.reshape(self.batch * self.max_len, *y.shape[2:])
        return flat if self.uniform else flat.index_select(0, self.pad_pos)


@dataclass
class Tail:
    """Rows of a pass kept for the last layer's output projection and feed-forward (`Layout.tail`)."""

    layout: Layout
    rows: slice | torch.Tensor

    def take(self, x: torch.Tensor) -> torch.Tensor:
        return x[self.rows] if isinstance(self.rows, slice) else x.index_select(0, self.rows)


def time_mix(
    blk: Block,
    layer: int,
    x: torch.Tensor,
    x_prev: torch.Tensor,
    wkv_state: torch.Tensor,
    v_first: torch.Tensor | None,
    lay: Layout,
    n_head: int,
    head_size: int,
    dtype: torch.dtype,
    keep: Tail | None = None,
):
    """Attention-like half of a block on fp32 input; returns (out, new wkv state, v_first). With `keep`, out
    has only those rows: the state still takes every token, but the output projection skips the rest."""
    t_len, c = x.shape
    xx = lay.shifted(x_prev, x) - x
    mixed = torch.addcmul(x.unsqueeze(0), xx.unsqueeze(0), blk.maa)
    xv, xr, xk = mixed[3:].to(dtype).unbind(0)
    r = blk.receptance(xr).float()
    k = blk.key(xk).float()
    v = blk.value(xv).float()
    xw, xa, xg = mixed[0], mixed[1], mixed[2]
    (w1, w2), (a1, a2), (g1, g2) = (tuple(t.float() for t in pair) for pair in blk.lora[:3])
    w_lora = f32_linear(torch.tanh(f32_linear(xw, w1)), w2)
    a_lora = f32_linear(f32_linear(xa, a1), a2)
    g = f32_linear(torch.sigmoid(f32_linear(xg, g1)), g2)
    v_lora = f32_linear(f32_linear(mixed[3], blk.lora[3][0].float()), blk.lora[3][1].float()) if layer else None
    if x.device.type == "cpu" and head_size <= NATIVE_MAX_HEAD_SIZE and load_decode7() is not None:
        return finish_time_mix(blk, layer, r, k, v, w_lora, a_lora, v_lora, g, wkv_state, v_first, lay, dtype, keep)
    a = torch.sigmoid(blk.a0 + a_lora)
    kk = F.normalize((k * blk.k_k).view(t_len, n_head, head_size), dim=-1, p=2.0).view(t_len, c)
    k = k * (1 + (a - 1) * blk.k_a)
    if layer == 0:
        v_first = v
    else:
        v = torch.lerp(v, v_first, torch.sigmoid(blk.v0 + v_lora))
    w = torch.exp(-DECAY_SCALE * torch.sigmoid(blk.w0 + w_lora))

    shape = (t_len, n_head, head_size)
    y, new_state = wkv7(
        wkv_state,
        lay.to_padded(r.view(shape), 0.0),
        lay.to_padded(w.view(shape), 1.0),
        lay.to_padded(k.view(shape), 0.0),
        lay.to_padded(v.view(shape), 0.0),
        lay.to_padded(kk.neg().view(shape), 0.0),
        lay.to_padded((kk * a).view(shape), 0.0),
    )
    y = lay.from_padded(y).reshape(t_len, c)
    y = F.group_norm(y, n_head, blk.lnx_w, blk.lnx_b, eps=GROUP_NORM_EPS)
    bonus = ((r * k * blk.r_k).view(shape).sum(dim=-1, keepdim=True) * v.view(shape)).view(t_len, c)
    out = (y + bonus) * g
    out = blk.output((out if keep is None else keep.take(out)).to(dtype))
    return out, new_state, v_first


def finish_time_mix(
    blk: Block,
    layer: int,
    r, k, v, w_lora, a_lora, v_lora, g, wkv_state, v_first,
    lay: Layout,
    dtype: torch.dtype,
    keep: Tail | None = None,
):  # fmt: skip
    """`time_mix` after the matrix products as one C call per layer (same arithmetic as the PyTorch path)."""
    n_head, head_size = wkv_state.shape[1], wkv_state.shape[2]
    s_in = wkv_state.contiguous()
    s = torch.empty_like(s_in)
    out = torch.empty_like(r)
    v_lora = w_lora if v_lora is None else v_lora  # layer 0: never read by the kernel
    ins = [t.contiguous() for t in (r, k, v, w_lora, a_lora, v_lora, g)]
    r, k, v, w_lora, a_lora, v_lora, g = (t.data_ptr() for t in ins)
    vf = v_first.data_ptr() if layer else None  # layer 0's contiguous v, kept alive by the caller
    v0 = blk.v0.data_ptr() if layer else blk.w0.data_ptr()
    params = (
        blk.w0.data_ptr(),
        blk.a0.data_ptr(),
        v0,
        blk.k_k.data_ptr(),
        blk.k_a.data_ptr(),
        blk.r_k.data_ptr(),
        blk.lnx_w.data_ptr(),
        blk.lnx_b.data_ptr(),
    )
    # The heads are shared between torch's own OpenMP threads, which are idle between its GEMMs.
    load_decode7().rwkv7_tmix_mt(
        head_threads(n_head, lay.total * n_head), lay.batch, n_head, head_size,
        lay.starts32.data_ptr(), lay.lengths32.data_ptr(), s_in.data_ptr(), s.data_ptr(),
        r, k, v, vf, w_lora, a_lora, v_lora, g, *params, GROUP_NORM_EPS, out.data_ptr(),
    )  # fmt: skip
    new_first = ins[2] if layer == 0 else v_first
    return blk.output((out if keep is None else keep.take(out)).to(dtype)), s, new_first


def channel_mix(blk: Block, x: torch.Tensor, x_prev: torch.Tensor, lay: Layout, dtype: torch.dtype) -> torch.Tensor:
    """Feed-forward half of a block (squared ReLU) on fp32 input."""
    xx = lay.shifted(x_prev, x) - x
    k = torch.addcmul(x, xx, blk.ffn_x_k).to(dtype)
    k = blk.ffn_key(k).relu_().square_()  # in place: (tokens, 4C) is the largest activation of a prefill
    return blk.ffn_value(k)
