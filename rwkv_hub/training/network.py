"""A trainable RWKV-7 whose parameters are the official x070 state dict, name for name.

The forward pass is the inference mathematics written for whole (B, T) windows from a zero state, so
the trained tensors are saved as they are and load in rwkv-hub and in the official `rwkv` package
alike. `tests/test_training.py` checks its logits against the official package.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ..core.synth import lora_ranks
from .wkv_autograd import wkv

DECAY_SCALE = math.exp(-0.5)
GROUP_NORM_EPS = 64e-5


def init_state_dict(n_layer: int, n_embd: int, vocab_size: int, head_size: int, seed: int) -> OrderedDict:
    """Initial fp32 weights following RWKV-LM's x070 recipe: blocks start close to the identity."""
    g = torch.Generator().manual_seed(seed)
    c, h = n_embd, n_embd // head_size
    ranks = lora_ranks(c)
    ddd = torch.arange(c, dtype=torch.float32) / c

    def vec(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(1, 1, c)

    def ortho(rows: int, cols: int, gain: float) -> torch.Tensor:
        m = torch.randn(max(rows, cols), min(rows, cols), generator=g)
        q, _ = torch.linalg.qr(m)
        q = q if rows >= cols else q.T
        return q[:rows, :cols].contiguous() * gain

    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    sd["emb.weight"] = (torch.rand(vocab_size, c, generator=g) * 2 - 1) * 1e-4
    for i in range(n_layer):
        r0 = i / max(1, n_layer - 1)  # 0 at the first layer, 1 at the last
        r1 = 1.0 - i / n_layer  # 1 at the first layer, towards 0
        p = f"blocks.{i}."
        norms = ("ln0", "ln1", "ln2") if i == 0 else ("ln1", "ln2")
        for n in norms:
            sd[p + n + ".weight"] = torch.ones(c)
            sd[p + n + ".bias"] = torch.zeros(c)
        a = p + "att."
        sd[a + "x_r"] = vec(1 - ddd ** (0.2 * r1))
        sd[a + "x_w"] = vec(1 - ddd ** (0.9 * r1))
        sd[a + "x_k"] = vec(1 - ddd ** (0.7 * r1))
        sd[a + "x_v"] = vec(1 - ddd ** (0.7 * r1))
        sd[a + "x_a"] = vec(1 - ddd ** (0.9 * r1))
        sd[a + "x_g"] = vec(1 - ddd ** (0.2 * r1))
        decay = -7 + 5 * (torch.arange(c, dtype=torch.float32) / (c - 1)) ** (0.85 + r0**0.5)
        sd[a + "w0"] = vec(decay + 0.5)
        sd[a + "w1"] = torch.zeros(c, ranks["decay"])
        sd[a + "w2"] = ortho(ranks["decay"], c, 0.1)
        sd[a + "a0"] = vec(torch.zeros(c))
        sd[a + "a1"] = torch.zeros(c, ranks["a"])
        sd[a + "a2"] = ortho(ranks["a"], c, 0.1)
        if i > 0:
            sd[a + "v0"] = vec(torch.ones(c))
            sd[a + "v1"] = torch.zeros(c, ranks["value"])
            sd[a + "v2"] = ortho(ranks["value"], c, 0.1)
        sd[a + "g1"] = torch.zeros(c, ranks["gate"])
        sd[a + "g2"] = ortho(ranks["gate"], c, 0.1)
        sd[a + "k_k"] = vec(torch.full((c,), 0.85))
        sd[a + "k_a"] = vec(torch.ones(c))
        sd[a + "r_k"] = torch.full((h, head_size), -0.04)
        bound = 0.5 / math.sqrt(c)
        for n in ("receptance", "key", "value"):
            sd[a + n + ".weight"] = (torch.rand(c, c, generator=g) * 2 - 1) * bound
        sd[a + "output.weight"] = torch.zeros(c, c)
        sd[a + "ln_x.weight"] = torch.full((c,), ((1 + i) / n_layer) ** 0.7)
        sd[a + "ln_x.bias"] = torch.zeros(c)
        f = p + "ffn."
        sd[f + "x_k"] = vec(1 - ddd ** (r1**4))
        sd[f + "key.weight"] = (torch.rand(4 * c, c, generator=g) * 2 - 1) * bound
        sd[f + "value.weight"] = torch.zeros(c, 4 * c)
    sd["ln_out.weight"] = torch.ones(c)
    sd["ln_out.bias"] = torch.zeros(c)
    sd["head.weight"] = ortho(vocab_size, c, 0.5 * math.sqrt(vocab_size / c) if vocab_size > c else 0.5)
    return sd


def _shift(x: torch.Tensor) -> torch.Tensor:
    """Each position's previous row (zeros before the first), for (B, T, C)."""
    return F.pad(x, (0, 0, 1, -1))


def forward(sd: dict[str, torch.Tensor], idx: torch.Tensor, head_size: int) -> torch.Tensor:
    """Logits (B, T, V) for token ids (B, T), reading from a zero state."""
    n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    x = F.embedding(idx, sd["emb.weight"])
    c = x.shape[-1]
    x = F.layer_norm(x, (c,), sd["blocks.0.ln0.weight"], sd["blocks.0.ln0.bias"])
    bsz, t_len, _ = x.shape
    h = c // head_size
    heads = (bsz, t_len, h, head_size)
    v_first = None
    for i in range(n_layer):
        p = f"blocks.{i}."
        a_ = p + "att."
        xa = F.layer_norm(x, (c,), sd[p + "ln1.weight"], sd[p + "ln1.bias"])
        xx = _shift(xa) - xa
        xr, xw, xk, xv, xaa, xg = (xa + xx * sd[a_ + n] for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"))
        r = xr @ sd[a_ + "receptance.weight"].T
        w = torch.exp(-DECAY_SCALE * torch.sigmoid(sd[a_ + "w0"] + torch.tanh(xw @ sd[a_ + "w1"]) @ sd[a_ + "w2"]))
        k = xk @ sd[a_ + "key.weight"].T
        v = xv @ sd[a_ + "value.weight"].T
        if i == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(sd[a_ + "v0"] + (xv @ sd[a_ + "v1"]) @ sd[a_ + "v2"])
        a = torch.sigmoid(sd[a_ + "a0"] + (xaa @ sd[a_ + "a1"]) @ sd[a_ + "a2"])
        gate = torch.sigmoid(xg @ sd[a_ + "g1"]) @ sd[a_ + "g2"]
        kk = F.normalize((k * sd[a_ + "k_k"]).view(heads), dim=-1, p=2.0)
        k = k * (1 + (a - 1) * sd[a_ + "k_a"])
        y = wkv(r.view(heads), w.view(heads), k.view(heads), v.view(heads), -kk, kk * a.view(heads))
        y = F.group_norm(y.reshape(bsz * t_len, c), h, sd[a_ + "ln_x.weight"], sd[a_ + "ln_x.bias"], GROUP_NORM_EPS)
        y = y.view(bsz, t_len, c)
        bonus = (r.view(heads) * k.view(heads) * sd[a_ + "r_k"]).sum(-1, keepdim=True) * v.view(heads)
        x = x + ((y + bonus.view(bsz, t_len, c)) * gate) @ sd[a_ + "output.weight"].T
        f = p + "ffn."
        xf = F.layer_norm(x, (c,), sd[p + "ln2.weight"], sd[p + "ln2.bias"])
        kf = xf + (_shift(xf) - xf) * sd[f + "x_k"]
        x = x + torch.relu(kf @ sd[f + "key.weight"].T).square() @ sd[f + "value.weight"].T
    x = F.layer_norm(x, (c,), sd["ln_out.weight"], sd["ln_out.bias"])
    return x @ sd["head.weight"].T


class Network(nn.Module):
    """Holds the state dict as parameters (dots in names become `__`, which `nn.Module` requires)."""

    def __init__(self, sd: dict[str, torch.Tensor], head_size: int):
        super().__init__()
        self.head_size = head_size
        self.weights = nn.ParameterDict({k.replace(".", "__"): nn.Parameter(v.float().clone()) for k, v in sd.items()})

    def named_weights(self) -> dict[str, torch.Tensor]:
        return {k.replace("__", "."): v for k, v in self.weights.items()}

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return forward(self.named_weights(), idx, self.head_size)

    def export(self, dtype: torch.dtype = torch.bfloat16) -> OrderedDict[str, torch.Tensor]:
        """The weights in official names and order, detached and converted for saving."""
        return OrderedDict((k, v.detach().to(dtype).contiguous()) for k, v in self.named_weights().items())
