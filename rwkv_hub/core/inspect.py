"""Describe a checkpoint without loading its weights: generation, shapes, parameters, memory per strategy."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .checkpoint import open_checkpoint
from .linear import cpu_int8_kernel
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
    large_rows: int
    emb_params: int
    emb_itemsize: int  # the embedding stays as the file stores it (mapped from it on the CPU)
    lora_params: int  # RWKV-7's low-rank pairs, which the CPU keeps bf16 when the file has them so
    lora_bf16: bool
    file_bytes: int

    def bytes_per_strategy(self) -> dict[str, int]:
        """Weight memory per strategy, as the runtime lays it out (state and activations come on top).

        The big matrices (attention, feed-forward, head) take the strategy's width, int8 adds a scale per
        matrix row (its size depends on the kernel: `linear.cpu_int8_kernel()` on the CPU), the
        embedding keeps the file's width under every strategy (mapped from the file where it can be, so
        only the rows tokens read become resident), and the small per-layer tensors stay fp32, except
        RWKV-7's LoRA pairs of a bf16 file on the CPU, which stay bf16.
        """
        small = self.n_params - self.large_params - self.emb_params - self.lora_params
        emb = self.emb_params * self.emb_itemsize
        rows = self.large_rows
        wide = {"fp32": 4, "16": 2}
        lora = {"cpu": self.lora_params * (2 if self.lora_bf16 else 4), "cuda": self.lora_params * 4}
        out = {}
        for name in ("cpu fp32", "cpu bf16", "cuda fp16", "cuda bf16"):
            w = wide["fp32"] if name.endswith("fp32") else wide["16"]
            out[name] = self.large_params * w + emb + small * 4 + lora[name.split()[0]]
        per_row = {"cpu": 8 if cpu_int8_kernel() == "fbgemm" else 4, "cuda": 2}  # each kernel's row scales
        for name in ("cpu bf16i8", "cpu fp32i8", "cuda fp16i8", "cuda bf16i8"):
            device = name.split()[0]
            out[name] = self.large_params + rows * per_row[device] + emb + small * 4 + lora[device]
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bytes_per_strategy"] = self.bytes_per_strategy()
        return d


def inspect_checkpoint(path: str | os.PathLike) -> CheckpointInfo:
    """Read a checkpoint's header and shapes (no weights) and summarize it; raises CheckpointError on bad input."""
    p = Path(path)
    tensors = open_checkpoint(p)
    spec: ModelSpec = read_spec(tensors, p)
    large_keys = [k for k in tensors if k == "head.weight" or k.endswith(LARGE_MATRICES)]
    large = sum(tensors[k].numel for k in large_keys)
    rows = sum(tensors[k].shape[0] for k in large_keys)
    lora_keys = [k for k in tensors if spec.generation == "x070" and re.search(r"att\.[wagv][12]$", k)]
    lora_keys = [k for k in lora_keys if not re.match(r"blocks\.0\.att\.v[12]$", k)]  # unused in layer 0
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
        large_rows=rows,
        emb_params=tensors["emb.weight"].numel,
        emb_itemsize=tensors["emb.weight"].itemsize,
        lora_params=sum(tensors[k].numel for k in lora_keys),
        lora_bf16=bool(lora_keys) and all(tensors[k].dtype == torch.bfloat16 for k in lora_keys),
        file_bytes=p.stat().st_size,
    )
