"""Random-weight RWKV-7 checkpoints of the official layout, for tests and benchmarks.

No real weights can be downloaded where rwkv-hub is built, so tests and benchmarks make their own files
with exactly the names, shapes and dtypes of BlinkDL's released x070 checkpoints. The values are scaled so
that activations stay in a realistic range (decays in (0.55, 1), unit-variance residual stream).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import torch

from .atomic import replace_file
from .spec import X070_ATT_VALUE_MIX


def lora_ranks(n_embd: int) -> dict[str, int]:
    """The LoRA ranks RWKV-LM's training code derives from the width."""

    def r(factor: float, power: float) -> int:
        return max(32, int(round(factor * (n_embd**power) / 32) * 32))

    return {"decay": r(1.8, 0.5), "a": r(1.8, 0.5), "value": r(1.3, 0.5), "gate": r(0.6, 0.8)}


def random_state_dict(
    *,
    n_layer: int,
    n_embd: int,
    vocab_size: int,
    head_size: int = 64,
    ffn_mult: int = 4,
    dtype: torch.dtype = torch.bfloat16,
    layer0_v: bool = False,
    seed: int = 0,
) -> OrderedDict[str, torch.Tensor]:
    """Build an x070 state dict with random weights of the official shapes."""
    g = torch.Generator().manual_seed(seed)
    c, h = n_embd, n_embd // head_size
    ranks = lora_ranks(c)

    def randn(*shape: int, std: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g) * (hi - lo) + lo

    def vec(t: torch.Tensor) -> torch.Tensor:
        return t.view(1, 1, c)

    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    sd["emb.weight"] = randn(vocab_size, c)
    for i in range(n_layer):
        p = f"blocks.{i}."
        if i == 0:
            sd[p + "ln0.weight"] = 1 + randn(c, std=0.1)
            sd[p + "ln0.bias"] = randn(c, std=0.1)
        for n in ("ln1", "ln2"):
            sd[p + n + ".weight"] = 1 + randn(c, std=0.1)
            sd[p + n + ".bias"] = randn(c, std=0.1)
        a = p + "att."
        for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):
            sd[a + n] = vec(uniform(0, 1, c))
        sd[a + "w0"] = vec(uniform(-3, 1, c))
        sd[a + "w1"] = randn(c, ranks["decay"], std=0.1)
        sd[a + "w2"] = randn(ranks["decay"], c, std=0.1)
        sd[a + "a0"] = vec(uniform(-1, 1, c))
        sd[a + "a1"] = randn(c, ranks["a"], std=0.1)
        sd[a + "a2"] = randn(ranks["a"], c, std=0.1)
        if i > 0 or layer0_v:
            sd[a + "v0"] = vec(uniform(-1, 1, c))
            sd[a + "v1"] = randn(c, ranks["value"], std=0.1)
            sd[a + "v2"] = randn(ranks["value"], c, std=0.1)
        sd[a + "g1"] = randn(c, ranks["gate"], std=0.1)
        sd[a + "g2"] = randn(ranks["gate"], c, std=0.1)
        sd[a + "k_k"] = vec(uniform(0.5, 1.5, c))
        sd[a + "k_a"] = vec(uniform(0, 1, c))
        sd[a + "r_k"] = randn(h, head_size, std=0.5)
        for n in ("receptance", "key", "value", "output"):
            sd[a + n + ".weight"] = randn(c, c, std=1 / math.sqrt(c))
        sd[a + "ln_x.weight"] = 1 + randn(c, std=0.1)
        sd[a + "ln_x.bias"] = randn(c, std=0.1)
        f = p + "ffn."
        sd[f + "x_k"] = vec(uniform(0, 1, c))
        sd[f + "key.weight"] = randn(ffn_mult * c, c, std=1 / math.sqrt(c))
        sd[f + "value.weight"] = randn(c, ffn_mult * c, std=0.5 / math.sqrt(ffn_mult * c))
    sd["ln_out.weight"] = 1 + randn(c, std=0.1)
    sd["ln_out.bias"] = randn(c, std=0.1)
    sd["head.weight"] = randn(vocab_size, c, std=1 / math.sqrt(c))
    for k in list(sd):
        sd[k] = sd[k].to(dtype).contiguous()
    assert layer0_v or not any(f"blocks.0.att.{n}" in sd for n in X070_ATT_VALUE_MIX)
    return sd


def write_random_checkpoint(
    path: str | Path,
    *,
    n_layer: int,
    n_embd: int,
    vocab_size: int,
    head_size: int = 64,
    fmt: str | None = None,
    dtype: torch.dtype = torch.bfloat16,
    layer0_v: bool = False,
    seed: int = 0,
) -> Path:
    """Write a random x070 checkpoint as `.pth` (torch.save) or `.safetensors`; the format follows the suffix."""
    p = Path(path)
    fmt = fmt or ("safetensors" if p.suffix == ".safetensors" else "pth")
    sd = random_state_dict(
        n_layer=n_layer,
        n_embd=n_embd,
        vocab_size=vocab_size,
        head_size=head_size,
        dtype=dtype,
        layer0_v=layer0_v,
        seed=seed,
    )
    if fmt == "safetensors":
        from safetensors.torch import save_file

        return replace_file(p, lambda tmp: save_file(dict(sd), str(tmp)))
    return replace_file(p, lambda tmp: torch.save(sd, tmp))
