"""Which layers' feed-forward value matrix is stored for mostly-zero inputs: by pairs of inputs for int8
(`PairedInt8Linear`), by input for fp32 and bf16 (`ByInputLinear`).

The value matrix multiplies relu(k)^2. In a trained model most of that is zero (89-95% in every layer of
the built-in model); with random weights about half. Both layouts let a decode step read only the weight
rows of the inputs that are not zero, which is faster where most are zero and slower where few are
(3072 x 768 on a 2-core Zen 4, against the plain layout, int8: 2.2x faster with 90% zeros, 0.6x with 50%,
1.9-2.3x for 4 and 16 sequences with 90% in cache; fp32 and bf16: 3.6-5.1x with 90% zeros, 1.6-2.2x for 16
sequences, 2.3-3.0x and 1.1-1.3x with 80%, 1.6-1.8x and 0.4-0.6x with half). So at load the model
runs a short fixed prompt (32 tokens), counts the zeros each layer's value matrix receives, and changes
the layout of the layers where they reach SPARSE_MIN.

Only matrices in rwkv-hub's own kernels take it (int8 on CPUs with AVX-512 VNNI; fp32, and bf16 where
oneDNN multiplies bf16, on any CPU with a C compiler). The int8 layouts give the same bits; the float
ones sum the same terms in another order, so a step's logits move by rounding only (the tests bound it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from .linear import ByInputLinear, Linear, NativeInt8Linear, PairedInt8Linear, cpu_flags

if TYPE_CHECKING:
    from .model import Model

log = logging.getLogger(__name__)

SPARSE_MIN = 0.8  # fraction of zero inputs from which a layer's value matrix changes layout
# ... and from which a matrix by input multiplies prompts in the C kernel too (ByInputLinear.prompts). 512
# rows of a 3072 x 768 matrix on a 2-core Zen 4 against oneDNN's GEMM: fp32 with 80% zeros 0.9x, 85%
# 1.1x, 90% 1.8x, 95% 2.8x; bf16, whose GEMM is twice as fast, 0.95x at 90% and 1.3x at 95%, though a
# whole 0.19B prompt with 91% zeros ran 1-5% faster (three sets of alternated runs).
PROMPT_SPARSE_MIN = {torch.float32: 0.88, torch.bfloat16: 0.9}
# A fixed prompt: byte-like tokens (printable ASCII in the World and byte vocabularies). 32 tokens give
# 32 x 4C inputs per layer to count, and keep the prompt's memory and time at load small.
CALIBRATION_TOKENS = tuple(range(32, 64))


class _ZeroCounter(Linear):
    """Passes products through to `inner` and counts the zeros among their inputs."""

    def __init__(self, inner: Linear):
        self.inner = inner
        self.out_features, self.in_features, self.nbytes = inner.out_features, inner.in_features, inner.nbytes
        self.zeros = 0
        self.total = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.zeros += int((x == 0).sum())
        self.total += x.numel()
        return self.inner(x)


def _sparse_layout(lin: Linear) -> Callable[[Linear], Linear] | None:
    """The layout for mostly-zero inputs that `lin` can take here, if any."""
    if isinstance(lin, NativeInt8Linear) and type(lin) is not PairedInt8Linear:
        return PairedInt8Linear if {"avx512bw", "avx512_vnni"} <= cpu_flags() else None
    return ByInputLinear if ByInputLinear.takes(lin) else None


def sparse_layout_applies(model: Model) -> bool:
    """Whether this model's value matrices could take a layout for mostly-zero inputs."""
    return bool(model.blocks) and all(_sparse_layout(getattr(b, "ffn_value", None)) for b in model.blocks)


def zero_fractions(model: Model) -> list[float]:
    """Each layer's fraction of zero inputs to its value matrix over CALIBRATION_TOKENS."""
    counters = [_ZeroCounter(b.ffn_value) for b in model.blocks]
    for block, counter in zip(model.blocks, counters, strict=True):
        block.ffn_value = counter
    try:
        model.forward([t % model.spec.vocab_size for t in CALIBRATION_TOKENS], None)
    finally:
        for block, counter in zip(model.blocks, counters, strict=True):
            block.ffn_value = counter.inner
    return [c.zeros / c.total if c.total else 0.0 for c in counters]


def store_sparse_ffns(model: Model) -> list[int]:
    """Store the value matrix of each layer whose inputs are mostly zero for them; returns those layers."""
    if not sparse_layout_applies(model):
        return []
    try:
        fractions = zero_fractions(model)
    except RuntimeError as e:  # out of memory, say: the plain layout is as correct, only slower
        log.warning("could not measure the feed-forward inputs (%s); keeping the plain layout", e)
        return []
    sparse = [i for i, f in enumerate(fractions) if f >= SPARSE_MIN]
    for i in sparse:
        blk = model.blocks[i]
        blk.ffn_value = _sparse_layout(blk.ffn_value)(blk.ffn_value)
        if isinstance(blk.ffn_value, ByInputLinear):
            blk.ffn_value.prompts = fractions[i] >= PROMPT_SPARSE_MIN[blk.ffn_value.wt.dtype]
    return sparse
