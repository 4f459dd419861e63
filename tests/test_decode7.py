"""The CPU decode step in C (decode7.c) against the PyTorch blocks it replaces, on the same model.

Three ways to run a decode step: the whole layer in one C call (weights that gemv.c multiplies: fp32,
bf16 (in AMX's tile order where the CPU has AMX) and int8 where PyTorch has no fast kernel for them), the
strategy's own products with the small work in C, and plain PyTorch (GPUs, machines without a compiler).
They must agree: logits and every part of the new state, for several sequences at once and over several
steps.
"""

from __future__ import annotations

import pytest
import torch
from conftest import random_tokens, record_figure, rel_err

import rwkv_hub
from rwkv_hub.core import decode7
from rwkv_hub.core.linear import (
    AMX_KERNEL_MAX_ROWS,
    BF16_KERNEL_MAX_ROWS,
    F32_KERNEL_MAX_ROWS,
    INT8_KERNEL_MAX_ROWS,
    amx_bf16_works,
    cpu_int8_kernel,
    packs,
)

SHAPE = dict(n_layer=3, n_embd=128, vocab_size=512, head_size=64)
STEPS = 6
# The paths differ only in the order of float sums. In fp32 that stays near 1e-7. bf16 rounds activations
# before each product, and a sum that lands on the edge of a bf16 step rounds the other way on one path:
# on a 2-core Zen 4 one such input to the head moved the logits by 0.0044 of their largest (the states
# still agreed to 2e-7). int8 as in test_runtime_int8 (four steps of a 15-bit activation level, 1/16383).
TOLERANCE = {"cpu fp32": 1e-5, "cpu bf16": 2e-2, "cpu bf16i8": 4 / 16383}

pytestmark = pytest.mark.skipif(
    not decode7.available(torch.device("cpu"), 64), reason="no C compiler: decoding runs in PyTorch"
)


def fused_expected(strategy: str) -> int:
    """The batch limit of the one-call layer on this CPU (0 where some product is not gemv.c's)."""
    if strategy == "cpu bf16i8":
        return INT8_KERNEL_MAX_ROWS if cpu_int8_kernel() == "native" else 0
    if strategy == "cpu bf16" and amx_bf16_works():  # every matrix of SHAPE fits AMX's tiles
        return AMX_KERNEL_MAX_ROWS
    if strategy == "cpu bf16":
        return 0 if packs(torch.bfloat16) else BF16_KERNEL_MAX_ROWS
    return F32_KERNEL_MAX_ROWS


def decode(model: rwkv_hub.Model, streams: int, mode: str, monkeypatch) -> list[tuple[torch.Tensor, dict]]:
    """Prefill `streams` prompts, then STEPS decode steps of all of them; logits and states per step."""
    with monkeypatch.context() as m:
        if mode == "pytorch":
            m.setattr(decode7, "available", lambda device, head_size: False)
        elif mode == "stepwise":
            m.setattr(model._decoder, "fused_max_rows", 0)
        prompts = [random_tokens(3 + 4 * b, SHAPE["vocab_size"], seed=b) for b in range(streams)]
        logits, states = model.forward_batch(prompts, [model.new_state() for _ in prompts])
        state = rwkv_hub.State.stack(states)
        out = []
        for step in range(STEPS):
            toks = [[(7 * step + 13 * b) % SHAPE["vocab_size"]] for b in range(streams)]
            logits, state = model.forward_batch(toks, state)
            out.append((logits, {k: v.clone() for k, v in state.tensors().items()}))
        return out


@pytest.mark.parametrize("strategy", list(TOLERANCE))
@pytest.mark.parametrize("streams", [1, 3])
def test_c_decode_matches_pytorch_blocks(checkpoint_factory, model_factory, monkeypatch, strategy, streams) -> None:
    model = model_factory(checkpoint_factory(**SHAPE), strategy)
    assert model._decoder.fused_max_rows == fused_expected(strategy)
    reference = decode(model, streams, "pytorch", monkeypatch)
    modes = ["stepwise"] + (["fused"] if model._decoder.fused_max_rows else [])
    runs = {mode: decode(model, streams, mode, monkeypatch) for mode in modes}
    for mode in modes:
        worst = worst_error(runs[mode], reference)
        record_figure(f"{strategy}, {streams} streams: C decode ({mode}) vs PyTorch, max relative error", worst)
        assert worst <= TOLERANCE[strategy], f"{strategy} {mode}: relative error {worst:.3g} vs PyTorch blocks"
    if "fused" in runs:
        # Up to 16 rows the stepwise products are gemv.c's too, on the same inputs (bf16 activations
        # rounded to bf16 by Python there and by decode7.c in the fused layer), so no rounding flips apart.
        worst = worst_error(runs["fused"], runs["stepwise"])
        assert worst <= 1e-5, f"{strategy}: fused vs stepwise relative error {worst:.3g}"


def worst_error(runs: list[tuple[torch.Tensor, dict]], reference: list[tuple[torch.Tensor, dict]]) -> float:
    worst = 0.0
    for (logits, state), (want, want_state) in zip(runs, reference, strict=True):
        worst = max(worst, rel_err(logits, want))
        for name, tensor in state.items():
            worst = max(worst, rel_err(tensor, want_state[name]))
    return worst


def test_batches_past_the_fused_limit_decode_each_row_as_alone(checkpoint_factory, model_factory) -> None:
    """bf16 fuses up to 16 rows where gemv.c reads its weights; 17 streams take the stepwise path, whose
    products are GEMMs. With fp32 activations (AVX2) rows must match each stream alone to float precision.
    Where a bf16 GEMM exists the activations are bf16 and the GEMM rounds its outputs to bf16 while gemv.c
    keeps fp32 sums, so they agree to bf16's precision (0.0067 on a 2-core Zen 4)."""
    model = model_factory(checkpoint_factory(**SHAPE), "cpu bf16")
    tol = 1e-5 if model.dtype == torch.float32 else 2e-2
    streams = BF16_KERNEL_MAX_ROWS + 1
    prompts = [random_tokens(2 + b % 5, SHAPE["vocab_size"], seed=40 + b) for b in range(streams)]
    _, states = model.forward_batch(prompts, [model.new_state() for _ in prompts])
    logits, _ = model.forward_batch([[b] for b in range(streams)], rwkv_hub.State.stack(states))
    worst = 0.0
    for b in (0, streams // 2, streams - 1):
        alone, _ = model.forward(prompts[b] + [b], None)
        worst = max(worst, rel_err(logits[b], alone))
    assert worst <= tol, f"row vs alone relative error {worst:.3g}"
