"""The matrix kernels: bf16 weights widened to fp32 for many-row products on CPUs without bf16 packing."""

from __future__ import annotations

import torch

from rwkv_hub.core.linear import WIDEN_BLOCK_FLOATS, WIDEN_MIN_ROWS, DenseLinear


def test_widened_bf16_products_equal_fp32_products_of_the_same_weights():
    g = torch.Generator().manual_seed(0)
    rows = WIDEN_BLOCK_FLOATS // 64 + 100  # more than one block of rows
    w = torch.randn(rows, 64, generator=g).bfloat16()
    lin = DenseLinear(w)
    assert lin.widen
    x = torch.randn(2, WIDEN_MIN_ROWS + 3, 64, generator=g).bfloat16()
    y = lin(x)
    assert y.dtype == torch.bfloat16 and y.shape == (2, WIDEN_MIN_ROWS + 3, rows)
    assert torch.equal(y, torch.nn.functional.linear(x.float(), w.float()).bfloat16())
    one = x[:, :1]  # a decode step keeps the bf16 kernel
    assert torch.allclose(lin(one).float(), y[:, :1].float(), rtol=0.02, atol=0.05)
    assert not DenseLinear(w.float()).widen
