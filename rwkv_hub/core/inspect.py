"""Describe a checkpoint without loading its weights: generation, shapes, parameters, memory per strategy."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .checkpoint import open_checkpoint
from .spec import LARGE_MATRICES, ModelSpec, count_params, read_spec


@dataclass(frozen=True)
class CheckpointInfo:
    """What `rwkv-hub inspect` reports."""

    path: str
    format: str
    generation: str
    n_layer: int
    n_embd: int
    head_size: int
    n_head: int
    vocab_size: int
    ffn_size: int
    lora: dict[str, int]
    n_params: int
    large_params: int
    file_bytes: int

    def bytes_per_strategy(self) -> dict[str, int]:
        """Approximate weight memory per strategy (state and activations come on top).

        int8 strategies store the big matrices (attention, feed-forward, head) as one byte per weight
        plus a per-row scale and keep the embedding and small tensors in 16 bits.
        """
        small = self.n_params - self.large_params
        int8 = self.large_params + small * 2
        return {
            "cpu fp32": self.n_params * 4,
            "cpu bf16": self.n_params * 2,
            "cpu bf16i8": int8,
            "cuda fp16": self.n_params * 2,
            "cuda bf16": self.n_params * 2,
            "cuda fp16i8": int8,
        }

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bytes_per_strategy"] = self.bytes_per_strategy()
        return d


def inspect_checkpoint(path: str | os.PathLike) -> CheckpointInfo:
    """Read a checkpoint's header and shapes (no weights) and summarize it; raises CheckpointError on bad input."""
    p = Path(path)
    tensors = open_checkpoint(p)
    spec: ModelSpec = read_spec(tensors, p)
    large = sum(t.numel for k, t in tensors.items() if k == "head.weight" or k.endswith(LARGE_MATRICES))
    with open(p, "rb") as f:
        fmt = "pth" if f.read(2) == b"PK" else "safetensors"
    return CheckpointInfo(
        path=str(p),
        format=fmt,
        generation=spec.generation,
        n_layer=spec.n_layer,
        n_embd=spec.n_embd,
        head_size=spec.head_size,
        n_head=spec.n_head,
        vocab_size=spec.vocab_size,
        ffn_size=spec.ffn_size,
        lora=dict(spec.lora),
        n_params=count_params(tensors),
        large_params=large,
        file_bytes=p.stat().st_size,
    )
