"""Matrix-vector products for each strategy, chosen for speed on the device.

Decoding one token reads every weight once, so the kernel's bandwidth sets the speed. On the CPU,
oneDNN's prepacked layout reads bf16 weights about twice as fast as `F.linear`, and the int8
weight-only kernel reads half the bytes; for many rows at once (prefill) plain GEMMs win.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Rows above which int8 weights are expanded to the compute dtype for a GEMM instead of the weight-only kernel.
INT8_GEMV_MAX_ROWS = 4


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-row int8: w[o, i] ~= q[o, i] * scale[o]."""
    w = w.float()
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale


def _mkldnn_ok() -> bool:
    return bool(getattr(torch.backends, "mkldnn", None) and torch.backends.mkldnn.is_available())


class Linear:
    """y = x @ W.T for W of shape (out, in); subclasses pick the kernel."""

    out_features: int
    in_features: int
    nbytes: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class DenseLinear(Linear):
    def __init__(self, w: torch.Tensor):
        self.w = w.contiguous()
        self.out_features, self.in_features = w.shape
        self.nbytes = w.numel() * w.element_size()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.w)


class PackedLinear(Linear):
    """oneDNN prepacked weights on the CPU: the fastest bf16/fp32 GEMV on x86."""

    def __init__(self, w: torch.Tensor):
        self.out_features, self.in_features = w.shape
        self.nbytes = w.numel() * w.element_size()
        self.dtype = w.dtype
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), 1)
        self._op = torch.ops.mkldnn._linear_pointwise

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._op(x, self.packed, None, "none", [], "")


class Int8Linear(Linear):
    """int8 weights with a per-row scale; bf16/fp16/fp32 activations."""

    def __init__(self, w: torch.Tensor, dtype: torch.dtype):
        q, scale = quantize_int8(w)
        self.q = q
        self.dtype = dtype
        self.scale = scale.to(dtype)
        self.out_features, self.in_features = q.shape
        self.nbytes = q.numel() + self.scale.numel() * self.scale.element_size()
        self.cpu = q.device.type == "cpu"

    def dequantize(self) -> torch.Tensor:
        return self.q.to(self.dtype) * self.scale[:, None]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if self.cpu and rows <= INT8_GEMV_MAX_ROWS:
            return torch._weight_int8pack_mm(x.reshape(rows, -1), self.q, self.scale).view(*x.shape[:-1], -1)
        return F.linear(x, self.q.to(x.dtype)) * self.scale


def make_linear(w: torch.Tensor, device: str, dtype: torch.dtype, int8: bool) -> Linear:
    """Convert one (out, in) weight for a strategy; the source tensor may be freed afterwards."""
    w = w.to(device)
    if int8:
        return Int8Linear(w, dtype)
    w = w.to(dtype)
    if device == "cpu" and dtype in (torch.bfloat16, torch.float32) and _mkldnn_ok():
        return PackedLinear(w)
    return DenseLinear(w)
