"""Random-weight RWKV checkpoints of the official layouts (RWKV-4 to RWKV-7), for tests and benchmarks.

No real weights can be downloaded where rwkv-hub is built, so tests and benchmarks make their own files
with exactly the names, shapes and dtypes of BlinkDL's released checkpoints. The values are scaled so
that activations stay in a realistic range (decays in (0.5, 1), unit-variance residual stream).
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
    generation: str = "x070",
    ffn_zero_share: float | None = None,
) -> OrderedDict[str, torch.Tensor]:
    """Build a state dict of `generation` ("x070", "x060", "x052", "x051", "x050" or "x040") with random weights
    of the official shapes. `ffn_zero_share` (x070) shifts every feed-forward key down so that about that share
    of relu(k) is zero, as in trained models (random weights zero about half)."""
    if generation != "x070":
        return _random_x056(generation, n_layer, n_embd, vocab_size, head_size, dtype, seed)
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
        if ffn_zero_share is not None:
            # The key's input carries ln2's bias, 1 here, in every channel: a weight shift of -d moves every k
            # by about -d * c against a spread of about sqrt(2) (the normalised part and the bias's sum).
            sd[p + "ln2.bias"] = torch.ones(c)
            z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(ffn_zero_share)).item()
            sd[f + "key.weight"] -= z * math.sqrt(2) / c
        sd[f + "value.weight"] = randn(c, ffn_mult * c, std=0.5 / math.sqrt(ffn_mult * c))
    sd["ln_out.weight"] = 1 + randn(c, std=0.1)
    sd["ln_out.bias"] = randn(c, std=0.1)
    sd["head.weight"] = randn(vocab_size, c, std=1 / math.sqrt(c))
    for k in list(sd):
        sd[k] = sd[k].to(dtype).contiguous()
    assert layer0_v or not any(f"blocks.0.att.{n}" in sd for n in X070_ATT_VALUE_MIX)
    return sd


def _random_x056(
    gen: str, n_layer: int, n_embd: int, vocab_size: int, head_size: int, dtype: torch.dtype, seed: int
) -> OrderedDict[str, torch.Tensor]:
    """An RWKV-4, -5 or -6 state dict as RWKV-LM makes them: feed-forward 4x wide for RWKV-4 and 3.5x after
    it; v6 LoRA ranks 32 / 64 (doubled from width 4096); decays and bonuses per head before v5.2."""
    if gen not in ("x060", "x052", "x051", "x050", "x040"):
        raise ValueError(f"no random checkpoints of generation {gen!r}; use x070, x060, x052, x051, x050 or x040")
    g = torch.Generator().manual_seed(seed)
    c, h = n_embd, n_embd // head_size
    f = 4 * c if gen == "x040" else int(n_embd * 3.5) // 32 * 32
    mix_rank, decay_rank = (64, 128) if c >= 4096 else (32, 64)
    per = {"x040": (c,), "x050": (h,), "x051": (h,)}.get(gen, (h, head_size))  # decay and bonus shapes
    mixes = {"x040": "kvr", "x050": "kvr"}.get(gen, "kvrg")

    def randn(*shape: int, std: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g) * (hi - lo) + lo

    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    sd["emb.weight"] = randn(vocab_size, c)
    for i in range(n_layer):
        p, a, m = f"blocks.{i}.", f"blocks.{i}.att.", f"blocks.{i}.ffn."
        for n in ("ln0", "ln1", "ln2") if i == 0 else ("ln1", "ln2"):
            sd[p + n + ".weight"] = 1 + randn(c, std=0.1)
            sd[p + n + ".bias"] = randn(c, std=0.1)
        if gen == "x060":
            for n in ("x", "w", "k", "v", "r", "g"):
                sd[a + "time_maa_" + n] = uniform(0, 1, 1, 1, c)
            sd[a + "time_maa_w1"] = randn(c, 5 * mix_rank, std=0.1)
            sd[a + "time_maa_w2"] = randn(5, mix_rank, c, std=0.1)
            sd[a + "time_decay"] = uniform(-6, -1, 1, 1, c)  # w = exp(-exp(.)) in (0.69, 0.998) before the LoRA
            sd[a + "time_decay_w1"] = randn(c, decay_rank, std=0.1)
            sd[a + "time_decay_w2"] = randn(decay_rank, c, std=0.05)
        else:
            for n in mixes:
                sd[a + "time_mix_" + n] = uniform(0, 1, 1, 1, c)
            sd[a + "time_decay"] = uniform(-6, -0.5, *per)
        if gen in ("x060", "x052"):
            sd[a + "time_faaaa"] = randn(h, head_size, std=0.5)
        else:
            sd[a + "time_first"] = randn(*per, std=0.5)  # the log of the bonus
        for n in ("receptance", "key", "value", "gate", "output"):
            if n != "gate" or "g" in mixes:
                sd[a + n + ".weight"] = randn(c, c, std=1 / math.sqrt(c))
        if gen != "x040":
            sd[a + "ln_x.weight"] = 1 + randn(c, std=0.1)
            sd[a + "ln_x.bias"] = randn(c, std=0.1)
        for n in ("k", "r"):
            sd[m + ("time_maa_" if gen == "x060" else "time_mix_") + n] = uniform(0, 1, 1, 1, c)
        sd[m + "key.weight"] = randn(f, c, std=1 / math.sqrt(c))
        sd[m + "receptance.weight"] = randn(c, c, std=1 / math.sqrt(c))
        sd[m + "value.weight"] = randn(c, f, std=0.5 / math.sqrt(f))
    sd["ln_out.weight"] = 1 + randn(c, std=0.1)
    sd["ln_out.bias"] = randn(c, std=0.1)
    sd["head.weight"] = randn(vocab_size, c, std=1 / math.sqrt(c))
    return OrderedDict((k, v.to(dtype).contiguous()) for k, v in sd.items())


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
    generation: str = "x070",
    ffn_zero_share: float | None = None,
) -> Path:
    """Write a random checkpoint as `.pth` (torch.save) or `.safetensors`; the format follows the suffix."""
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
        generation=generation,
        ffn_zero_share=ffn_zero_share,
    )
    if fmt == "safetensors":
        from safetensors.torch import save_file

        return replace_file(p, lambda tmp: save_file(dict(sd), str(tmp)))
    return replace_file(p, lambda tmp: torch.save(sd, tmp))
