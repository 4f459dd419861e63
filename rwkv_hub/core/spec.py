"""Work out what a checkpoint is from its tensor names and shapes alone, and say clearly when it is not usable."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import LazyTensor
from .errors import CheckpointError

# Per-layer tensors of an RWKV-7 ("x070") block, as BlinkDL's training code names them.
X070_ATT = (
    "x_r",
    "x_w",
    "x_k",
    "x_v",
    "x_a",
    "x_g",
    "w0",
    "w1",
    "w2",
    "a0",
    "a1",
    "a2",
    "g1",
    "g2",
    "k_k",
    "k_a",
    "r_k",
    "receptance.weight",
    "key.weight",
    "value.weight",
    "output.weight",
    "ln_x.weight",
    "ln_x.bias",
)
X070_ATT_VALUE_MIX = ("v0", "v1", "v2")  # absent from layer 0 in released files: layer 0 defines v_first
X070_FFN = ("x_k", "key.weight", "value.weight")
X070_LN = ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias")
X070_TOP = ("emb.weight", "blocks.0.ln0.weight", "blocks.0.ln0.bias", "ln_out.weight", "ln_out.bias", "head.weight")
# RWKV-6 ("x060") and RWKV-5.2 ("x052"): the same matrices, with different token-shift and decay tensors.
X056_MATRICES = ("receptance.weight", "key.weight", "value.weight", "gate.weight", "output.weight")
X060_ATT = (
    "time_maa_x",
    "time_maa_w",
    "time_maa_k",
    "time_maa_v",
    "time_maa_r",
    "time_maa_g",
    "time_maa_w1",
    "time_maa_w2",
    "time_decay",
    "time_decay_w1",
    "time_decay_w2",
    "time_faaaa",
    *X056_MATRICES,
    "ln_x.weight",
    "ln_x.bias",
)
X060_FFN = ("time_maa_k", "time_maa_r", "key.weight", "receptance.weight", "value.weight")
X052_ATT = (
    "time_mix_k",
    "time_mix_v",
    "time_mix_r",
    "time_mix_g",
    "time_decay",
    "time_faaaa",
    *X056_MATRICES,
    "ln_x.weight",
    "ln_x.bias",
)
X052_FFN = ("time_mix_k", "time_mix_r", "key.weight", "receptance.weight", "value.weight")
# RWKV-5.1 and 5.0 ("x051", "x050"): one decay and one bonus per head; 5.0 has no gate. Their bonus is
# stored as its log, `time_first` (a file that holds `time_faaaa` instead is read as the bonus itself).
X051_ATT = tuple(n if n != "time_faaaa" else "time_first" for n in X052_ATT)
X050_ATT = tuple(n for n in X051_ATT if n not in ("time_mix_g", "gate.weight"))
# RWKV-4 ("x040"): a per-channel recurrence, no heads, no gate, no group norm.
X040_ATT = (
    "time_mix_k",
    "time_mix_v",
    "time_mix_r",
    "time_decay",
    "time_first",
    "receptance.weight",
    "key.weight",
    "value.weight",
    "output.weight",
)
_LAYER_KEYS = {
    "x070": (X070_ATT, X070_FFN),
    "x060": (X060_ATT, X060_FFN),
    "x052": (X052_ATT, X052_FFN),
    "x051": (X051_ATT, X052_FFN),
    "x050": (X050_ATT, X052_FFN),
    "x040": (X040_ATT, X052_FFN),
}
LARGE_MATRICES = (
    "att.receptance.weight",
    "att.key.weight",
    "att.value.weight",
    "att.gate.weight",
    "att.output.weight",
    "ffn.key.weight",
    "ffn.receptance.weight",
    "ffn.value.weight",
)


@dataclass(frozen=True)
class ModelSpec:
    """Shapes of an RWKV model, all read from its tensors.

    `generation` is "x070", "x060", "x052", "x051", "x050" or "x040". RWKV-4 has no heads: its recurrence
    is per channel, and it is described as one head as wide as the model.
    """

    generation: str
    n_layer: int
    n_embd: int
    head_size: int
    vocab_size: int
    ffn_size: int
    lora: dict[str, int] = field(default_factory=dict)

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size


def detect_generation(keys: set[str]) -> str:
    """Name the RWKV generation a set of state-dict keys belongs to ('x070', 'x060', 'x052', 'x050', 'x040').

    RWKV-5.1 has the gate of 5.2 and is told apart by the shape of its decay (`read_spec`)."""
    if "blocks.0.att.r_k" in keys or "blocks.0.att.k_k" in keys:
        return "x070"
    if "blocks.0.att.time_maa_x" in keys:
        return "x060"
    if "blocks.0.att.gate.weight" in keys:
        return "x052"
    if "blocks.0.att.ln_x.weight" in keys:
        return "x050"
    if "blocks.0.att.time_first" in keys:
        return "x040"
    return "unknown"


GENERATION_NAMES = {
    "x070": "RWKV-7",
    "x060": "RWKV-6",
    "x052": "RWKV-5.2",
    "x051": "RWKV-5.1",
    "x050": "RWKV-5.0",
    "x040": "RWKV-4",
}


def _shape(t: dict[str, LazyTensor], k: str) -> tuple[int, ...]:
    return tuple(s for s in t[k].shape)


def read_spec(tensors: dict[str, LazyTensor], path: Path | str = "checkpoint") -> ModelSpec:
    """Validate a state dict of any generation rwkv-hub runs and return its shapes; raise CheckpointError
    naming what is wrong."""
    keys = set(tensors)
    gen = detect_generation(keys)
    if gen == "x052" and "blocks.0.att.time_decay" in keys and len(_squeezed(tensors, "blocks.0.att.time_decay")) < 2:
        gen = "x051"  # RWKV-5.1 has the gate too, but one decay per head
    if gen not in GENERATION_NAMES:
        if "emb.weight" not in keys:
            raise CheckpointError(
                f"{path}: not an RWKV checkpoint (no emb.weight tensor; found e.g. {sorted(keys)[:3]})"
            )
        raise CheckpointError(f"{path}: an RWKV checkpoint of an unrecognised generation (no blocks.0.att.r_k)")
    if any(".s_emb" in k for k in keys):
        raise CheckpointError(
            f"{path}: a DeepEmbed RWKV-7 variant (ffn.s_emb tensors), which rwkv-hub does not run yet"
        )
    layer_ids = {int(m.group(1)) for k in keys if (m := re.match(r"blocks\.(\d+)\.", k))}
    n_layer = max(layer_ids) + 1 if layer_ids else 0
    _check_complete(keys, gen, n_layer, path)
    vocab_size, n_embd = _shape(tensors, "emb.weight")
    ffn_size = _shape(tensors, "blocks.0.ffn.key.weight")[0]
    if gen != "x070":
        spec = _read_x056(tensors, gen, n_layer, n_embd, vocab_size, ffn_size, path)
        _check_shapes(tensors, spec, path)
        return spec
    n_head, head_size = _shape(tensors, "blocks.0.att.r_k")
    ref = 1 if n_layer > 1 else 0
    lora = {
        "decay": _shape(tensors, "blocks.0.att.w1")[-1],
        "a": _shape(tensors, "blocks.0.att.a1")[-1],
        "gate": _shape(tensors, "blocks.0.att.g1")[-1],
    }
    if ref:
        lora["value"] = _shape(tensors, f"blocks.{ref}.att.v1")[-1]
    spec = ModelSpec("x070", n_layer, n_embd, head_size, vocab_size, ffn_size, lora)
    _check_shapes(tensors, spec, path)
    return spec


def _squeezed(t: dict[str, LazyTensor], k: str) -> tuple[int, ...]:
    return tuple(s for s in t[k].shape if s != 1)


def _check_complete(keys: set[str], gen: str, n_layer: int, path: Path | str) -> None:
    """Raise one error that names every missing tensor (the first six of them)."""
    att, ffn = _LAYER_KEYS[gen]
    if gen in ("x050", "x051") and "blocks.0.att.time_faaaa" in keys:
        att = tuple(n if n != "time_first" else "time_faaaa" for n in att)
    missing = [k for k in X070_TOP if k not in keys]
    for i in range(n_layer):
        missing += [f"blocks.{i}.{n}" for n in X070_LN if f"blocks.{i}.{n}" not in keys]
        missing += [f"blocks.{i}.att.{n}" for n in att if f"blocks.{i}.att.{n}" not in keys]
        if i > 0 and gen == "x070":
            missing += [f"blocks.{i}.att.{n}" for n in X070_ATT_VALUE_MIX if f"blocks.{i}.att.{n}" not in keys]
        missing += [f"blocks.{i}.ffn.{n}" for n in ffn if f"blocks.{i}.ffn.{n}" not in keys]
    if missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        raise CheckpointError(
            f"{path}: incomplete {GENERATION_NAMES[gen]} checkpoint, {len(missing)} tensors missing: {shown}"
        )


def _read_x056(
    tensors: dict[str, LazyTensor], gen: str, n_layer: int, n_embd: int, vocab: int, ffn: int, path: Path | str
) -> ModelSpec:
    """Sizes of an RWKV-5/6 model: heads from time_faaaa (H, N) or, before 5.2, from the per-head decay (H,);
    LoRA ranks from the v6 mixers. RWKV-4 is one head as wide as the model."""
    if gen == "x040":
        return ModelSpec(gen, n_layer, n_embd, n_embd, vocab, ffn)
    if gen in ("x050", "x051"):
        heads = _squeezed(tensors, "blocks.0.att.time_decay")
        if len(heads) != 1 or heads[0] < 1 or n_embd % heads[0]:
            raise CheckpointError(
                f"{path}: tensor blocks.0.att.time_decay has shape {heads}, expected (heads,) dividing width {n_embd}"
            )
        return ModelSpec(gen, n_layer, n_embd, n_embd // heads[0], vocab, ffn)
    faaaa = _squeezed(tensors, "blocks.0.att.time_faaaa")
    if len(faaaa) != 2:
        raise CheckpointError(f"{path}: tensor blocks.0.att.time_faaaa has shape {faaaa}, expected (heads, head size)")
    lora = {}
    if gen == "x060":
        mix, decay = _shape(tensors, "blocks.0.att.time_maa_w1"), _shape(tensors, "blocks.0.att.time_decay_w1")
        if len(mix) != 2 or mix[1] % 5 or len(decay) != 2:
            raise CheckpointError(
                f"{path}: time_maa_w1 / time_decay_w1 have shapes {mix} / {decay}, expected (C, 5*r) / (C, r)"
            )
        lora = {"mix": mix[1] // 5, "decay": decay[1]}
    return ModelSpec(gen, n_layer, n_embd, faaaa[1], vocab, ffn, lora)


def expected_shapes(spec: ModelSpec, layer: int) -> dict[str, tuple[int, ...]]:
    """The shape each per-layer tensor must have (vectors may be stored as (1, 1, C) or (C,))."""
    if spec.generation != "x070":
        return _expected_x056(spec, layer)
    c, f = spec.n_embd, spec.ffn_size
    p = f"blocks.{layer}."
    shapes = {p + n: (c,) for n in X070_LN}
    for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "k_k", "k_a", "ln_x.weight", "ln_x.bias"):
        shapes[p + "att." + n] = (c,)
    for n in ("receptance", "key", "value", "output"):
        shapes[p + f"att.{n}.weight"] = (c, c)
    shapes[p + "att.r_k"] = (spec.n_head, spec.head_size)
    shapes[p + "ffn.x_k"] = (c,)
    shapes[p + "ffn.key.weight"] = (f, c)
    shapes[p + "ffn.value.weight"] = (c, f)
    return shapes


def _expected_x056(spec: ModelSpec, layer: int) -> dict[str, tuple[int, ...]]:
    c, f, heads, gen = spec.n_embd, spec.ffn_size, (spec.n_head, spec.head_size), spec.generation
    p, a = f"blocks.{layer}.", f"blocks.{layer}.att."
    shapes = {p + n: (c,) for n in X070_LN}
    shapes.update({p + "ffn.key.weight": (f, c), p + "ffn.receptance.weight": (c, c), p + "ffn.value.weight": (c, f)})
    if gen in ("x040", "x050", "x051"):
        att = _LAYER_KEYS[gen][0]
        per = (c,) if gen == "x040" else (spec.n_head,)
        shapes.update({a + n: (c, c) for n in X056_MATRICES if n in att})
        shapes.update({a + n: (c,) for n in ("time_mix_k", "time_mix_v", "time_mix_r", "time_mix_g") if n in att})
        shapes.update({a + "time_decay": per, p + "ffn.time_mix_k": (c,), p + "ffn.time_mix_r": (c,)})
        shapes[a + "time_first"] = per
        if gen != "x040":
            shapes.update({a + "ln_x.weight": (c,), a + "ln_x.bias": (c,)})
        return shapes
    shapes.update({a + n: (c, c) for n in X056_MATRICES})
    shapes.update({a + "ln_x.weight": (c,), a + "ln_x.bias": (c,), a + "time_faaaa": heads})
    if gen == "x052":
        shapes.update({a + n: (c,) for n in ("time_mix_k", "time_mix_v", "time_mix_r", "time_mix_g")})
        shapes.update({p + "ffn.time_mix_k": (c,), p + "ffn.time_mix_r": (c,), a + "time_decay": heads})
        return shapes
    mix, decay = spec.lora["mix"], spec.lora["decay"]
    shapes.update({a + n: (c,) for n in ("time_maa_x", "time_maa_w", "time_maa_k", "time_maa_v", "time_maa_r")})
    shapes.update({a + "time_maa_g": (c,), a + "time_decay": (c,), p + "ffn.time_maa_k": (c,)})
    shapes.update({a + "time_maa_w1": (c, 5 * mix), a + "time_maa_w2": (5, mix, c), p + "ffn.time_maa_r": (c,)})
    shapes.update({a + "time_decay_w1": (c, decay), a + "time_decay_w2": (decay, c)})
    return shapes


def _check_shapes(tensors: dict[str, LazyTensor], spec: ModelSpec, path: Path | str) -> None:
    c = spec.n_embd
    if spec.head_size <= 0 or c % spec.head_size or spec.n_head * spec.head_size != c:
        heads = "r_k" if spec.generation == "x070" else "time_faaaa"
        raise CheckpointError(f"{path}: {heads} shape {(spec.n_head, spec.head_size)} does not divide width {c}")
    want = {
        "head.weight": (spec.vocab_size, c),
        "ln_out.weight": (c,),
        "ln_out.bias": (c,),
        "blocks.0.ln0.weight": (c,),
        "blocks.0.ln0.bias": (c,),
    }
    for i in range(spec.n_layer):
        want.update(expected_shapes(spec, i))
    for k, shape in want.items():
        if k not in tensors and k.endswith(".time_first"):  # RWKV-5.0/5.1 may store the bonus itself
            k = k.removesuffix("time_first") + "time_faaaa"
        got = tuple(s for s in tensors[k].shape if s != 1) if len(shape) == 1 else _shape(tensors, k)
        if len(shape) == 1 and got == ():
            got = (1,)
        if got != shape:
            raise CheckpointError(f"{path}: tensor {k} has shape {tuple(tensors[k].shape)}, expected {shape}")
    for i in range(spec.n_layer if spec.generation == "x070" else 0):
        for lo, hi in (("w1", "w2"), ("a1", "a2"), ("g1", "g2")) + ((("v1", "v2"),) if i else ()):
            s1, s2 = _shape(tensors, f"blocks.{i}.att.{lo}"), _shape(tensors, f"blocks.{i}.att.{hi}")
            if len(s1) != 2 or len(s2) != 2 or s1[0] != c or s2[1] != c or s1[1] != s2[0]:
                raise CheckpointError(
                    f"{path}: LoRA pair blocks.{i}.att.{lo}/{hi} has shapes {s1}/{s2}, expected (C, r)/(r, C)"
                )
    for k, t in tensors.items():
        if not t.dtype.is_floating_point and k in want:
            raise CheckpointError(f"{path}: tensor {k} is {t.dtype}, expected floating point weights")


def count_params(tensors: dict[str, LazyTensor]) -> int:
    """Parameters that the model uses (the unused layer-0 value-mix tensors are not counted)."""
    return sum(t.numel for k, t in tensors.items() if not re.match(r"blocks\.0\.att\.v[012]$", k))


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
