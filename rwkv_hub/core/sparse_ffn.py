"""Which layers' feed-forward value matrix is stored by pairs of inputs (`PairedInt8Linear`).

The value matrix multiplies relu(k)^2. In a trained model most of that is zero (89-95% in every layer of
the built-in model); with random weights about half. The paired int8 layout lets a decode step read only
the rows of the inputs that are not zero, which is faster where most are zero and slower where few are
(3072 x 768 on a 2-core Zen 4, against the plain layout: 2.2x faster with 90% zeros, 0.6x with 50%,
about even for 4 and 16 sequences with 90%). So at load the model runs a short fixed prompt (32 tokens), counts the
zeros each layer's value matrix receives, and pairs the layers where they reach SPARSE_MIN.

Only int8 weights in rwkv-hub's own kernel on CPUs with AVX-512 VNNI take it: the layouts give the same
bits, so the choice changes speed only.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from .linear import Linear, NativeInt8Linear, PairedInt8Linear, cpu_flags

if TYPE_CHECKING:
    from .model import Model

log = logging.getLogger(__name__)

SPARSE_MIN = 0.8  # fraction of zero inputs from which a layer's value matrix is paired
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


def pairing_applies(model: Model) -> bool:
    """Whether this model's value matrices could be paired: int8 on rwkv-hub's kernel with AVX-512 VNNI."""
    if not model.blocks or not all(isinstance(getattr(b, "ffn_value", None), NativeInt8Linear) for b in model.blocks):
        return False
    return {"avx512bw", "avx512_vnni"} <= cpu_flags()


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


def pair_sparse_ffns(model: Model) -> list[int]:
    """Store the value matrix of each layer whose inputs are mostly zero by pairs; returns those layers."""
    if not pairing_applies(model):
        return []
    try:
        fractions = zero_fractions(model)
    except RuntimeError as e:  # out of memory, say: the plain layout is as correct, only slower
        log.warning("could not measure the feed-forward inputs (%s); keeping the plain int8 layout", e)
        return []
    paired = [i for i, f in enumerate(fractions) if f >= SPARSE_MIN]
    for i in paired:
        model.blocks[i].ffn_value = PairedInt8Linear(model.blocks[i].ffn_value)
    return paired
