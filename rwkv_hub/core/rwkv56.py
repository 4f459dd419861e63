"""RWKV-6 ("x060") and RWKV-5 ("x052", "x051", "x050") blocks for a flat batch of tokens from many sequences.

The generations differ only in how a block mixes each token with the previous one (v5: fixed
per-channel mixes; v6: mixes and decay that depend on the data, through small LoRAs), in whether the
decay and bonus are per channel (v5.2, v6) or per head (v5.0, v5.1), and in the output gate, which v5.0
lacks. So they share one block type and one recurrence. The batch layout (`rwkv7.Layout`), the fp32
residual stream and state, and the strategy's `Linear` kernels are the same as for RWKV-7.

The WKV state of a head is kept indexed [value, key], like RWKV-7's; BlinkDL's package holds the
transpose for these generations (a state-tuned `time_state` tensor is stored [value, key] already).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .linear import Linear
from .rwkv7 import GROUP_NORM_EPS, Layout
from .spec import ModelSpec
from .state import State, StateShape

# fp16 strategies: the official package halves the residual stream every RESCALE_LAYER layers so it fits
# fp16. Ours stays fp32, so only the fp16 products of att.output and ffn.value need room: their weights are
# divided by 2**(layer // RESCALE_LAYER) and the fp32 result multiplied back (exact: a power of two).
RESCALE_LAYER = 6
CHUNK = 8  # tokens per step of the chunked recurrence; shorter runs (decoding) take the per-token loop
V6_MIX = ("w", "k", "v", "r", "g")  # row order of time_maa_w2 and of `Block.maa` for x060
V5_MIX = ("k", "v", "r", "g")  # row order of `Block.maa` for x052 and x051; x050 has no "g"


@dataclass
class Block:
    """One layer's weights, converted for a strategy (small tensors fp32, large matrices as `Linear`)."""

    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor
    # (M, 1, C) token-shift mixes in the form x + (x_prev - x) * maa: v6 rows V6_MIX, v5 rows V5_MIX
    # (the v5 files store time_mix = 1 - maa).
    maa: torch.Tensor
    maa_x: torch.Tensor | None  # v6 only: the mix feeding the LoRA, its down (5r, C) and up (5, r, C) weights
    maa_w1: torch.Tensor | None
    maa_w2: torch.Tensor | None
    decay: torch.Tensor  # v6: time_decay (C,); v5: the log of the decay, -exp(time_decay), per channel (C,)
    decay_lora: tuple[torch.Tensor, torch.Tensor] | None  # v6: down (r, C), up (C, r) as F.linear weights
    bonus: torch.Tensor  # time_faaaa, per channel (C,)
    receptance: Linear
    key: Linear
    value: Linear
    gate: Linear | None  # None for v5.0
    output: Linear
    lnx_w: torch.Tensor
    lnx_b: torch.Tensor
    ffn_maa: torch.Tensor  # (2, 1, C): k, r
    ffn_key: Linear
    ffn_receptance: Linear
    ffn_value: Linear
    out_scale: float  # 1.0 except under fp16 (see RESCALE_LAYER)


def convert_block(
    spec: ModelSpec,
    i: int,
    vec: Callable[[str], torch.Tensor],
    mat: Callable[[str], torch.Tensor],
    linear: Callable[[str, float], Linear],
    has: Callable[[str], bool],
    rescale: bool,
) -> Block:
    """Build layer i from the checkpoint readers of `load` (`linear(name, divisor)` makes a strategy Linear,
    `has(name)` says whether the file holds a tensor)."""
    a, f = f"blocks.{i}.att.", f"blocks.{i}.ffn."
    v6 = spec.generation == "x060"
    if v6:
        maa = torch.stack([vec(a + "time_maa_" + n) for n in V6_MIX]).unsqueeze(1)
        ffn_maa = torch.stack([vec(f + "time_maa_k"), vec(f + "time_maa_r")]).unsqueeze(1)
        decay = vec(a + "time_decay")
        decay_lora = (mat(a + "time_decay_w1").t().contiguous(), mat(a + "time_decay_w2").t().contiguous())
    else:
        maa = mix_rows(vec, a, V5_MIX if spec.generation != "x050" else V5_MIX[:3])
        ffn_maa = mix_rows(vec, f, ("k", "r"))
        decay = _per_channel(-torch.exp(vec(a + "time_decay")), spec)
        decay_lora = None
    return Block(
        **shared_fields(i, vec, linear, rescale),
        maa=maa,
        maa_x=vec(a + "time_maa_x") if v6 else None,
        maa_w1=mat(a + "time_maa_w1").t().contiguous() if v6 else None,
        maa_w2=mat(a + "time_maa_w2") if v6 else None,
        decay=decay,
        decay_lora=decay_lora,
        bonus=_bonus(spec, i, vec, has),
        gate=linear(a + "gate.weight", 1.0) if spec.generation != "x050" else None,
        lnx_w=vec(a + "ln_x.weight"),
        lnx_b=vec(a + "ln_x.bias"),
        ffn_maa=ffn_maa,
    )


def shared_fields(
    i: int, vec: Callable[[str], torch.Tensor], linear: Callable[[str, float], Linear], rescale: bool
) -> dict[str, object]:
    """The fields every RWKV-4/5/6 block has, by their `Block` names: layer norms, the attention and
    feed-forward matrices, and the fp16 rescaling of the two that feed the residual stream."""
    p, a, f = f"blocks.{i}.", f"blocks.{i}.att.", f"blocks.{i}.ffn."
    scale = float(2 ** (i // RESCALE_LAYER)) if rescale else 1.0
    return {
        "ln1_w": vec(p + "ln1.weight"),
        "ln1_b": vec(p + "ln1.bias"),
        "ln2_w": vec(p + "ln2.weight"),
        "ln2_b": vec(p + "ln2.bias"),
        "receptance": linear(a + "receptance.weight", 1.0),
        "key": linear(a + "key.weight", 1.0),
        "value": linear(a + "value.weight", 1.0),
        "output": linear(a + "output.weight", scale),
        "ffn_key": linear(f + "key.weight", 1.0),
        "ffn_receptance": linear(f + "receptance.weight", 1.0),
        "ffn_value": linear(f + "value.weight", scale),
        "out_scale": scale,
    }


def mix_rows(vec: Callable[[str], torch.Tensor], prefix: str, names: tuple[str, ...]) -> torch.Tensor:
    """(M, 1, C) token-shift mixes in the form x + (x_prev - x) * maa from RWKV-4/5 `time_mix_*` tensors
    (which hold 1 - maa)."""
    return (1 - torch.stack([vec(prefix + "time_mix_" + n) for n in names])).unsqueeze(1)


def _per_channel(t: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """A per-head vector (v5.0/5.1) repeated over each head's channels; per-channel vectors pass through."""
    return t.repeat_interleave(spec.head_size) if t.numel() == spec.n_head else t


def _bonus(spec: ModelSpec, i: int, vec: Callable[[str], torch.Tensor], has: Callable[[str], bool]) -> torch.Tensor:
    """The bonus of the current token per channel: `time_faaaa` as stored, or exp of the older `time_first`."""
    name = f"blocks.{i}.att.time_faaaa"
    if has(name):
        return _per_channel(vec(name), spec)
    return _per_channel(torch.exp(vec(f"blocks.{i}.att.time_first")), spec)


def wkv56(
    state: torch.Tensor, r: torch.Tensor, log_w: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run T steps for B sequences: y = S r, then S <- S diag(w) + v k^T (the bonus term is added by the caller).

    Inputs (B, T, H, N) fp32 with the decay as log w (<= 0), state (B, H, N, N) fp32 indexed [value, key],
    not modified. A padded position with log w = 0 and k = v = 0 leaves S unchanged, so sequences of
    different lengths share one pass. Runs of CHUNK tokens or more go through the chunked form.
    """
    bsz, t_len, h, n = r.shape
    if t_len >= CHUNK:
        return _wkv56_chunked(state, r, log_w, k, v)
    bh = bsz * h
    s = state.reshape(bh, n, n)
    rs = r.transpose(0, 1).reshape(t_len, bh, n, 1).unbind(0)
    ws = torch.exp(log_w).transpose(0, 1).reshape(t_len, bh, 1, n).unbind(0)
    ks = k.transpose(0, 1).reshape(t_len, bh, 1, n).unbind(0)
    vs = v.transpose(0, 1).reshape(t_len, bh, n, 1).unbind(0)
    ys = []
    for t in range(t_len):
        ys.append(torch.bmm(s, rs[t]))
        s = torch.baddbmm(s * ws[t], vs[t], ks[t])
    y = torch.stack(ys, 0).view(t_len, bsz, h, n).transpose(0, 1)
    return y, s.view(bsz, h, n, n)


def _wkv56_chunked(
    state: torch.Tensor, r: torch.Tensor, log_w: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`wkv56` a chunk of CHUNK tokens at a time: a few batched products per chunk instead of three per token.

    Token t sees the chunk's start state through the decay of the tokens before it, token s < t through
    the decay of the tokens between them, and the chunk's end state holds token t through the decay of the
    tokens after it. Every exponent is a sum of log decays (<= 0, so nothing overflows however strong the
    decay), and each is summed directly: a difference of two prefix sums would cancel a strong decay's
    large log against itself and lose about |log w| * 6e-8 of the exponent (1.6e-5 relative at log w = -400).
    """
    bsz, t_len, h, n = r.shape
    bh, pad = bsz * h, -t_len % CHUNK

    def chunks(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = F.pad(x, (0, 0, 0, 0, 0, pad)) if pad else x  # zeros: log w = 0, k = v = 0 leave S unchanged
        return x.transpose(1, 2).reshape(bh, -1, CHUNK, n).unbind(1)

    s = state.reshape(bh, n, n)
    not_before = torch.ones(CHUNK, CHUNK, dtype=torch.bool, device=r.device).triu().unsqueeze(-1)  # s >= t
    not_after = not_before.transpose(0, 1)  # [s, u]: u <= s
    ys = []
    for rc, wc, kc, vc in zip(chunks(r), chunks(log_w), chunks(k), chunks(v), strict=True):
        before = F.pad(wc[:, :-1], (0, 0, 1, 0)).cumsum(1)  # (BH, L, N): log decay of the tokens before t
        after = F.pad(wc[:, 1:].flip(1).cumsum(1).flip(1), (0, 0, 0, 1))  # ... and of the tokens after t
        y = torch.bmm(rc * torch.exp(before), s.transpose(1, 2))
        from_s = wc.unsqueeze(1).masked_fill(not_after, 0.0).cumsum(2)  # [s, u]: tokens s+1 .. u
        gap = F.pad(from_s[:, :, :-1], (0, 0, 1, 0)).transpose(1, 2)  # [t, s]: tokens s+1 .. t-1
        att = (rc.unsqueeze(2) * kc.unsqueeze(1) * torch.exp(gap.masked_fill(not_before, float("-inf")))).sum(-1)
        ys.append(torch.baddbmm(y, att, vc))
        s = torch.baddbmm(s * torch.exp(before[:, -1:] + wc[:, -1:]), vc.transpose(1, 2), kc * torch.exp(after))
    y = torch.cat(ys, 1)[:, :t_len].reshape(bsz, h, t_len, n).transpose(1, 2)
    return y, s.view(bsz, h, n, n)


def time_mix(
    blk: Block,
    x: torch.Tensor,
    x_prev: torch.Tensor,
    wkv_state: torch.Tensor,
    lay: Layout,
    n_head: int,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention-like half of a block on fp32 input; returns (out, new wkv state)."""
    t_len, c = x.shape
    xx = lay.shifted(x_prev, x) - x
    if blk.maa_x is None:  # v5: fixed mixes, fixed decay (and no gate input for v5.0)
        xk, xv, xr, *xg = torch.addcmul(x.unsqueeze(0), xx.unsqueeze(0), blk.maa).unbind(0)
        xg = xg[0] if xg else None
        log_w = blk.decay.expand(t_len, c)
    else:
        lora_in = torch.addcmul(x, xx, blk.maa_x)
        m = torch.tanh(F.linear(lora_in, blk.maa_w1)).view(t_len, 5, -1).transpose(0, 1)
        m = torch.bmm(m, blk.maa_w2)  # (5, T, C)
        xw, xk, xv, xr, xg = torch.addcmul(x.unsqueeze(0), xx.unsqueeze(0), blk.maa + m).unbind(0)
        down, up = blk.decay_lora
        log_w = -torch.exp(blk.decay + F.linear(torch.tanh(F.linear(xw, down)), up))
    r = blk.receptance(xr.to(dtype)).float()
    k = blk.key(xk.to(dtype)).float()
    v = blk.value(xv.to(dtype)).float()
    g = F.silu(blk.gate(xg.to(dtype)).float()) if blk.gate is not None else None

    shape = (t_len, n_head, c // n_head)
    y, new_state = wkv56(
        wkv_state,
        lay.to_padded(r.view(shape), 0.0),
        lay.to_padded(log_w.reshape(shape), 0.0),
        lay.to_padded(k.view(shape), 0.0),
        lay.to_padded(v.view(shape), 0.0),
    )
    y = lay.from_padded(y).reshape(t_len, c)
    bonus = ((r * k * blk.bonus).view(shape).sum(dim=-1, keepdim=True) * v.view(shape)).view(t_len, c)
    y = F.group_norm(y + bonus, n_head, blk.lnx_w, blk.lnx_b, eps=GROUP_NORM_EPS)
    out = blk.output((y * g if g is not None else y).to(dtype))
    return (out.float() * blk.out_scale if blk.out_scale != 1.0 else out), new_state


def channel_mix(blk: Block, x: torch.Tensor, x_prev: torch.Tensor, lay: Layout, dtype: torch.dtype) -> torch.Tensor:
    """Feed-forward half of a block: sigmoid(receptance) * value(relu(key)^2), on fp32 input."""
    xx = lay.shifted(x_prev, x) - x
    xk, xr = torch.addcmul(x.unsqueeze(0), xx.unsqueeze(0), blk.ffn_maa).to(dtype).unbind(0)
    r = torch.sigmoid(blk.ffn_receptance(xr).float())
    out = blk.ffn_value(torch.relu(blk.ffn_key(xk)).square()).float()
    return r * (out * blk.out_scale if blk.out_scale != 1.0 else out)


TimeMix = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def run_blocks(
    blocks: list,
    x: torch.Tensor,
    state: State,
    shape: StateShape,
    lay: Layout,
    dtype: torch.dtype,
    time_mix: TimeMix = time_mix,
    every_row: bool = False,
) -> tuple[torch.Tensor, State]:
    """All layers over a flat batch (fp32 embeddings in) and the new state; returns each sequence's last
    hidden row, or every row with `every_row`.

    RWKV-4 shares the feed-forward half and passes its own `time_mix` (`rwkv4.time_mix`). As for RWKV-7
    (`Layout.tail`), the last layer's feed-forward runs only on the rows the last hidden rows need."""
    att_x, wkv, ffn_x = [], [], []
    c = shape.n_embd
    for i, blk in enumerate(blocks):
        xn = F.layer_norm(x, (c,), blk.ln1_w, blk.ln1_b)
        att_x.append(lay.last_rows(xn))
        out, s = time_mix(blk, xn, state.att_x[i], state.wkv[i], lay, shape.n_head, dtype)
        wkv.append(s)
        x = x + out
        if i == len(blocks) - 1 and not every_row and lay.total > 2 * lay.batch:
            tail = lay.tail()
            x, lay = tail.take(x), tail.layout
        xn = F.layer_norm(x, (c,), blk.ln2_w, blk.ln2_b)
        ffn_x.append(lay.last_rows(xn))
        x = x + channel_mix(blk, xn, state.ffn_x[i], lay, dtype)
    return (x if every_row else lay.last_rows(x)), State(shape, att_x, wkv, ffn_x)
