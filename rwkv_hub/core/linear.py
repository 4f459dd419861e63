"""Matrix-vector products for each strategy, chosen for speed on the device.

Decoding one token reads every weight once, so the kernel's bandwidth sets the speed. On the CPU,
oneDNN's prepacked layout reads bf16 weights about twice as fast as `F.linear`, and the int8
weight-only kernel reads half the bytes; for many rows at once (prefill) plain GEMMs win.
"""

from __future__ import annotations

import threading
import warnings
from functools import cache

import torch
import torch.nn.functional as F

# Rows above which int8 weights are expanded to the compute dtype for a GEMM instead of the weight-only kernel.
INT8_GEMV_MAX_ROWS = 4
# Rows above which unpacked bf16 weights are widened to fp32 for the product (see DenseLinear).
WIDEN_MIN_ROWS = 4
WIDEN_BLOCK_FLOATS = 4 * 2**20  # 16 MB of fp32 weights widened at a time


def quantize_int8(w: torch.Tensor, rows_per_chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-row int8: w[o, i] ~= q[o, i] * scale[o].

    Works through the rows in chunks so that no full-size fp32 copy of a large matrix is ever made.
    """
    q = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    scale = torch.empty(w.shape[0], dtype=torch.float32, device=w.device)
    for lo in range(0, w.shape[0], rows_per_chunk):
        part = w[lo : lo + rows_per_chunk].float()
        sc = part.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        q[lo : lo + rows_per_chunk] = torch.round(part / sc[:, None]).clamp_(-127, 127).to(torch.int8)
        scale[lo : lo + rows_per_chunk] = sc
    return q, scale


@cache
def packing_works(dtype: torch.dtype) -> bool:
    """Whether oneDNN can prepack weights of `dtype` on this CPU. Its bf16 path needs AVX-512 (BW, VL,
    DQ) or AVX-NE-CONVERT and raises elsewhere (AVX2-only CPUs), so a tiny matrix is tried once."""
    if not (getattr(torch.backends, "mkldnn", None) and torch.backends.mkldnn.is_available()):
        return False
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(torch.ones(8, 8, dtype=dtype), 1)
        y = torch.ops.mkldnn._linear_pointwise(torch.ones(1, 8, dtype=dtype), packed, None, "none", [], "")
        return bool(y.shape == (1, 8) and float(y[0, 0]) == 8.0)
    except RuntimeError:
        return False


class Linear:
    """y = x @ W.T for W of shape (out, in); subclasses pick the kernel."""

    out_features: int
    in_features: int
    nbytes: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class DenseLinear(Linear):
    """Plain `F.linear`. bf16 weights on a CPU where oneDNN cannot pack them (AVX2 without AVX-512) make
    slow bf16 GEMMs: for many rows (prefill) the matrix is widened to fp32 for the product instead, a
    block of rows at a time into one scratch buffer per thread (about 16 MB), which is reused: fresh
    blocks for every product would be kept by the C allocator and grow the process by hundreds of MB."""

    def __init__(self, w: torch.Tensor):
        self.w = w.contiguous()
        self.out_features, self.in_features = w.shape
        self.nbytes = w.numel() * w.element_size()
        self.widen = w.device.type == "cpu" and w.dtype == torch.bfloat16

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.widen and x.numel() // x.shape[-1] > WIDEN_MIN_ROWS:
            xf = x.float()
            out = torch.empty(*x.shape[:-1], self.out_features, dtype=x.dtype, device=x.device)
            step = max(1, WIDEN_BLOCK_FLOATS // self.in_features)
            scratch = _scratch(step * self.in_features)
            for lo in range(0, self.out_features, step):
                part = self.w[lo : lo + step]
                wide = scratch[: part.numel()].view(part.shape)
                wide.copy_(part)
                out[..., lo : lo + step] = F.linear(xf, wide)
            return out
        return F.linear(x, self.w)


_local = threading.local()


def _scratch(n: int) -> torch.Tensor:
    """This thread's fp32 scratch buffer of at least n floats (a normal tensor, not an inference one, so
    it can be written inside and outside `torch.inference_mode`)."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.numel() < n:
        with torch.inference_mode(False):
            buf = _local.buf = torch.empty(n, dtype=torch.float32)
    return buf


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


class DynamicInt8Linear(Linear):
    """int8 weights times int8-quantized activations (fbgemm, VNNI): fp32 in, fp32 out.

    fbgemm picks one quantization range per call for the whole input, which would make a row's result
    depend on the other rows in the batch (and on how a prompt is chunked). Each row is therefore
    scaled to a largest magnitude of 1 and a fixed [-1, 1] row is appended, so the range is always
    the same and every row is quantized on its own terms: results are identical alone or batched.
    """

    def __init__(self, w: torch.Tensor):
        self.out_features, self.in_features = w.shape
        q, scale = quantize_int8(w)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qt = torch._make_per_channel_quantized_tensor(
                q, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0
            )
            self.packed = torch.ops.quantized.linear_prepack(qt, None)
        self.nbytes = q.numel() + 8 * self.out_features
        self._op = torch.ops.quantized.linear_dynamic
        self._range_row = torch.zeros(1, self.in_features)
        self._range_row[0, 0], self._range_row[0, -1] = -1.0, 1.0
        # Without VNNI, fbgemm multiplies u8 x s8 pairs into saturating int16 sums; 7-bit activations
        # keep those sums in range (a full 8 bits loses most of the precision on AVX2-only CPUs).
        self._reduce_range = not _has_vnni()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        peak = x2.abs().amax(dim=1, keepdim=True).clamp_min_(1e-30)
        y = self._op(torch.cat([x2 / peak, self._range_row]), self.packed, self._reduce_range)
        return (y[:-1] * peak).view(*x.shape[:-1], self.out_features)


class RowChunkedLinear(Linear):
    """A very tall matrix (the head) as several row blocks, converted one block at a time at load.

    Converting a 65536-row head in one piece briefly holds the source, an fp32 or int8 copy and the
    packed result; in blocks the peak stays a few tens of MB above the final weights.
    """

    def __init__(self, parts: list[Linear]):
        self.parts = parts
        self.out_features = sum(p.out_features for p in parts)
        self.in_features = parts[0].in_features
        self.nbytes = sum(p.nbytes for p in parts)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(x) for p in self.parts], dim=-1)


@cache
def _has_vnni() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def dynamic_int8_available() -> bool:
    """True where PyTorch has the fbgemm/x86 quantized engine (x86 CPUs)."""
    return any(e in torch.backends.quantized.supported_engines for e in ("x86", "fbgemm"))


def make_linear(w: torch.Tensor, device: str, dtype: torch.dtype, int8: bool) -> Linear:
    """Convert one (out, in) weight for a strategy; the source tensor may be freed afterwards."""
    w = w.to(device)
    if int8 and device == "cpu" and dynamic_int8_available():
        return DynamicInt8Linear(w)
    if int8:
        return Int8Linear(w, dtype)
    w = w.to(dtype)
    if device == "cpu" and dtype in (torch.bfloat16, torch.float32) and packing_works(dtype):
        return PackedLinear(w)
    return DenseLinear(w)
