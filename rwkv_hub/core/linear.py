"""Matrix products for each strategy, chosen for speed on the device.

Decoding one token reads every weight once, so the kernel's bandwidth sets the speed. On the CPU the C
kernels in gemv.c read fp32, bf16 and int8 weights as stored, at close to memory bandwidth. For many rows
at once (prefill) GEMMs win: oneDNN's on the same plain weights, and for int8 oneDNN's int8 GEMM where
VNNI or AMX makes it fast. CPUs with AMX are the exception: bf16 and int8 weights in AMX's tile order,
which gemv.c's AMX kernels multiply for any number of rows (`AmxBf16Linear`, `AmxInt8Linear`).
"""

from __future__ import annotations

import itertools
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F

from .native import load_gemv

C_BF16, C_INT8, C_F32 = 0, 1, 2  # gemv.c's weight formats (GEMV_BF16, GEMV_INT8, GEMV_F32)
C_BF16_RX = 3  # bf16 weights times inputs rounded to bf16, as a bf16 GEMM takes them (GEMV_BF16_RX)
C_INT8_PAIRS = 4  # int8 weights stored by pairs of inputs, for mostly-zero inputs (GEMV_INT8_PAIRS)
C_BF16_AMX = 5  # bf16 weights in AMX tile order times inputs rounded to bf16 (GEMV_BF16_AMX)
C_INT8_AMX = 6  # int8 weights in AMX tile order, GEMV_INT8's arithmetic (GEMV_INT8_AMX)
# fp32 / bf16 weights stored by input, W^T (in, out), for mostly-zero inputs (GEMV_F32_BYIN, GEMV_BF16_BYIN), and
# bf16 by input times inputs rounded to bf16 (GEMV_BF16_BYIN_RX)
C_F32_BYIN, C_BF16_BYIN, C_BF16_BYIN_RX = 7, 8, 9
# Each bf16 kind's twin that rounds its inputs to bf16 first (`rounding_kind`).
_ROUNDING_KINDS = {C_BF16: C_BF16_RX, C_BF16_BYIN: C_BF16_BYIN_RX}
C_KINDS = {torch.bfloat16: C_BF16, torch.float32: C_F32}
# Rows above which int8 weights are expanded to the compute dtype for a GEMM instead of the weight-only kernel.
INT8_GEMV_MAX_ROWS = 4
# The C kernels are faster than a GEMM on weights widened to fp32 up to about this many rows (measured at
# 0.19B shapes on an AVX2 CPU: bf16 breaks even near 32 rows, int8 near 512); more rows widen a block of
# weights at a time.
BF16_KERNEL_MAX_ROWS = 16
F32_KERNEL_MAX_ROWS = 16
INT8_KERNEL_MAX_ROWS = 256
# On CPUs with VNNI or AMX, oneDNN's int8 GEMM (`torch._int_mm`) beats the C kernel from this many rows
# (`int_mm_min_rows`). With AMX (a 2-core Xeon): 8 rows of a 3072x768 matrix 0.11 against 0.15 ms, 64 rows
# 4x faster. With VNNI alone (a 2-core Zen 4) the C kernel stays ahead to about 32 rows: at 8-16 rows it is
# 1.0-1.7x faster on 0.19B's matrices and 1.2-1.4x on the 65536-row head, at 32 rows 0.9-1.1x.
INT_MM_MIN_ROWS_AMX = 8
INT_MM_MIN_ROWS_VNNI = 32
# The most rows of a decode step that AmxBf16Linear takes in the one-call layer (decode7.c); its kernel
# itself takes any number.
AMX_KERNEL_MAX_ROWS = 64
C_MAX_ROWS = {
    C_BF16: BF16_KERNEL_MAX_ROWS,
    C_F32: F32_KERNEL_MAX_ROWS,
    C_INT8: INT8_KERNEL_MAX_ROWS,
    C_BF16_BYIN: BF16_KERNEL_MAX_ROWS,
    C_F32_BYIN: F32_KERNEL_MAX_ROWS,
}
# fp32 and bf16 matrices from this size take the by-input layout for mostly-zero inputs (ByInputLinear): it
# pays by skipping memory reads, and smaller ones stay in cache. The built-in model's (0.5 MiB in bf16)
# gained nothing for one stream and lost 11% for 16 on a 2-core Zen 4; 0.19B's (4.5 MiB) gained 12-17% and 1-4%.
BYIN_MIN_BYTES = 2 * 2**20
WIDEN_BLOCK_FLOATS = 4 * 2**20  # 16 MB of fp32 weights widened at a time
SPLIT_MIN_BYTES = 256 * 2**10  # a C product reading this many weight bytes is split between threads
X_LEVELS = 16383.0  # the activations' levels per sign in the C int8 kernel (X_LEVELS in gemv.c)


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-row int8: w[o, i] ~= q[o, i] * scale[o].

    On the CPU gemv.c does it where it is built (`rwkv_quantize_w`, the same bits as `quantize_int8_torch`)
    in two passes over each row and no copy: loading 0.19B at cpu bf16i8 took 0.33 instead of 0.54 s,
    0.45B 1.2 instead of 2.5 s (the second load in a process, so the file was in the page cache).
    """
    lib = load_gemv() if w.device.type == "cpu" and w.dtype in (torch.float32, torch.bfloat16) else None
    if lib is None or w.dim() != 2:
        return quantize_int8_torch(w)
    w = w.contiguous()
    q = torch.empty(w.shape, dtype=torch.int8)
    scale = torch.empty(w.shape[0], dtype=torch.float32)
    lib.rwkv_quantize_w(w.data_ptr(), int(w.dtype == torch.bfloat16), q.data_ptr(), scale.data_ptr(), *w.shape)
    return q, scale


def quantize_int8_torch(w: torch.Tensor, rows_per_chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize_int8` in PyTorch operations (GPUs, no C compiler): scale = max|w[o]| / 127 and
    q = round(w / scale), in fp32. Works through the rows in chunks so that no full-size fp32 copy of a
    large matrix is ever made."""
    q = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    scale = torch.empty(w.shape[0], dtype=torch.float32, device=w.device)
    for lo in range(0, w.shape[0], rows_per_chunk):
        part = w[lo : lo + rows_per_chunk].float()
        sc = part.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        q[lo : lo + rows_per_chunk] = torch.round(part / sc[:, None]).clamp_(-127, 127).to(torch.int8)
        scale[lo : lo + rows_per_chunk] = sc
    return q, scale


@cache
def _onednn_linear_works(dtype: torch.dtype, packed: bool) -> bool:
    """Whether oneDNN's linear runs on this CPU for `dtype`, on prepacked weights or on weights as stored.
    Its bf16 path needs AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT and raises elsewhere (AVX2-only CPUs), so a
    tiny product is tried once."""
    if not (getattr(torch.backends, "mkldnn", None) and torch.backends.mkldnn.is_available()):
        return False
    try:
        w = torch.ones(5, 8, dtype=dtype)
        if packed:
            w = torch.ops.mkldnn._reorder_linear_weight(w, 1)
        y = torch.ops.mkldnn._linear_pointwise(torch.ones(3, 8, dtype=dtype), w, None, "none", [], "")
        return bool(y.shape == (3, 5) and float(y[2, 4]) == 8.0)
    except RuntimeError:
        return False


def packing_works(dtype: torch.dtype) -> bool:
    """Whether oneDNN can prepack weights of `dtype` on this CPU."""
    return _onednn_linear_works(dtype, True)


def onednn_f32_works() -> bool:
    """Whether oneDNN multiplies fp32 activations by fp32 weights as stored (no packed copy) on this CPU."""
    return _onednn_linear_works(torch.float32, False)


def rounding_kind(kind: int) -> int:
    """The gemv.c kind that multiplies like `kind` but on inputs rounded to bf16, as a bf16 GEMM takes them
    (`kind` itself where its inputs are already taken so, or are not bf16's to round)."""
    return _ROUNDING_KINDS.get(kind, kind)


def f32_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w.T for fp32 x and (out, in) fp32 w on any device. On the CPU oneDNN's GEMM reads w as stored and
    is faster than the MKL one behind `F.linear`: 190-215 against 130-170 GFLOP/s for a 0.19B layer's
    products at 256-512 rows on a 2-core AMD EPYC (Zen 4), the bulk of an fp32 prefill."""
    if x.device.type == "cpu" and onednn_f32_works():
        return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
    return F.linear(x, w)


@dataclass(frozen=True)
class CMatrix:
    """A matrix as gemv.c reads it, for C code that runs several products in one call (decode7.c)."""

    kind: int  # C_BF16, C_F32, C_INT8, C_INT8_PAIRS, C_F32_BYIN, C_BF16_BYIN, ...
    in_features: int
    out_features: int
    weight: int  # address of the (out, in) weights; (in, out) for the by-input kinds
    scale: int | None  # int8: address of the per-row scales
    max_rows: int  # the most rows of x for which the C kernel is the fastest choice


class Linear:
    """y = x @ W.T for W of shape (out, in); subclasses pick the kernel."""

    out_features: int
    in_features: int
    nbytes: int
    held: tuple[str, ...] = ()  # the attributes holding the weights as the kernels read them

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def move_weights(self, place: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace each held tensor by `place(tensor)`, an equal copy (the loader's huge pages, see
        `huge_pages`). Layouts that PyTorch owns (packed, fbgemm) hold none."""
        for name in self.held:
            setattr(self, name, place(getattr(self, name)))

    def c_matrix(self) -> CMatrix | None:
        """The weights in a form gemv.c multiplies, if they are kept so."""
        return None


class DenseLinear(Linear):
    """Weights as stored, multiplied by gemv.c on the CPU for up to a few rows (decoding, small batches:
    it reads them at close to memory bandwidth, where PyTorch's kernels reach half of it or less), and by
    a GEMM for more. Where oneDNN has no bf16 kernel (AVX2 without AVX-512) PyTorch's bf16 GEMM is slow,
    so longer inputs widen a bf16 matrix to fp32 a block at a time."""

    held = ("w",)

    def __init__(self, w: torch.Tensor):
        self.w = w.contiguous()
        self.out_features, self.in_features = w.shape
        self.nbytes = w.numel() * w.element_size()
        cpu = w.device.type == "cpu"
        self.widen = cpu and w.dtype == torch.bfloat16 and not packing_works(torch.bfloat16)
        self.kind = C_KINDS.get(w.dtype) if cpu and load_gemv() is not None else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind is not None and x.numel() // x.shape[-1] <= C_MAX_ROWS[self.kind]:
            kind = rounding_kind(self.kind) if x.dtype == torch.bfloat16 else self.kind
            return _gemv(x, self, kind, self.w, None)
        if self.widen:
            return _widened(x, self.out_features, self.in_features, lambda lo, hi, buf: buf.copy_(self.w[lo:hi]))
        return f32_linear(x, self.w) if self.w.dtype == torch.float32 else F.linear(x, self.w)

    def c_matrix(self) -> CMatrix | None:
        if self.kind is None:
            return None
        return CMatrix(self.kind, self.in_features, self.out_features, self.w.data_ptr(), None, C_MAX_ROWS[self.kind])


def _gemv(x: torch.Tensor, lin: Linear, kind: int, w: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """Rows of x times a matrix in gemv.c. Products that read enough weight bytes run on all of torch's
    threads (the kernel's OpenMP team is torch's). Returns fp32, which every caller widens to anyway."""
    xf = x.reshape(-1, lin.in_features).float().contiguous()
    y = torch.empty(xf.shape[0], lin.out_features, dtype=torch.float32)
    threads = torch.get_num_threads() if lin.nbytes >= SPLIT_MIN_BYTES else 1
    sc = None if scale is None else scale.data_ptr()
    load_gemv().rwkv_gemv(
        kind, w.data_ptr(), sc, xf.data_ptr(), y.data_ptr(), xf.shape[0], lin.in_features, lin.out_features, threads
    )
    return y.view(*x.shape[:-1], lin.out_features)


def _widened(x: torch.Tensor, n_out: int, n_in: int, fill: Callable[[int, int, torch.Tensor], object]) -> torch.Tensor:
    """x times a matrix that is widened to fp32 a block of rows at a time: `fill(lo, hi, buf)` writes rows
    [lo, hi) as fp32 into `buf`. The blocks go into one scratch buffer per thread (about 16 MB), which is
    reused: fresh blocks for every product would be kept by the C allocator and grow the process by
    hundreds of MB."""
    xf = x.float()
    out = torch.empty(*x.shape[:-1], n_out, dtype=torch.float32, device=x.device)
    step = max(1, WIDEN_BLOCK_FLOATS // n_in)
    scratch = _scratch(step * n_in)
    for lo in range(0, n_out, step):
        hi = min(n_out, lo + step)
        wide = scratch[: (hi - lo) * n_in].view(hi - lo, n_in)
        fill(lo, hi, wide)
        out[..., lo:hi] = F.linear(xf, wide)
    return out


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


def _claim_amx() -> None:
    """Ask Linux for the AMX registers, which a process must do before it first uses them (once is enough,
    asking again costs a system call); a kernel run without them would die of an illegal instruction."""
    lib = load_gemv()
    if lib is None or lib.rwkv_amx_enable() != 1:
        raise RuntimeError("AMX is not available here: check amx_bf16_works() / amx_int8_works() first")


class AmxBf16Linear(Linear):
    """bf16 weights in the order AMX's tiles read them, multiplied by gemv.c's AMX kernel for any number of
    rows: one decode step and a 512-token prompt alike, and each row gets the same bits alone or batched.
    Unlike oneDNN's prepacked weights, C code reads them, so a decode step runs all its layers in one C call
    (decode7.c) as it does with the other kernels' weights."""

    held = ("tiles",)

    def __init__(self, w: torch.Tensor):
        _claim_amx()
        self.out_features, self.in_features = w.shape
        self.nbytes = w.numel() * w.element_size()
        blocks = w.contiguous().view(self.out_features // 16, 16, self.in_features // 32, 16, 2)
        self.tiles = blocks.permute(0, 2, 3, 1, 4).contiguous()  # [out/16][in/32][16 pairs][16 outputs][2]

    @staticmethod
    def fits(w: torch.Tensor) -> bool:
        """Whether the tiles take a matrix of this shape."""
        return w.shape[0] % 16 == 0 and w.shape[1] % 32 == 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.bfloat16:
            return _gemv(x, self, C_BF16_AMX, self.tiles, None)
        xb = x.reshape(-1, self.in_features).contiguous()
        y = torch.empty(xb.shape[0], self.out_features, dtype=torch.float32)
        threads = torch.get_num_threads() if self.nbytes >= SPLIT_MIN_BYTES else 1
        load_gemv().rwkv_gemv_amx_bf16(
            self.tiles.data_ptr(),
            xb.data_ptr(),
            y.data_ptr(),
            xb.shape[0],
            self.in_features,
            self.out_features,
            threads,
        )
        return y.view(*x.shape[:-1], self.out_features)

    def c_matrix(self) -> CMatrix | None:
        w = self.tiles.data_ptr()
        return CMatrix(C_BF16_AMX, self.in_features, self.out_features, w, None, AMX_KERNEL_MAX_ROWS)


AMX_BF16_KERNEL, AMX_INT8_KERNEL = 1, 2  # rwkv_amx_kernels' bits in gemv.c


def _amx_ready(flag: str, kernel: int) -> bool:
    """Whether the CPU reports `flag`, this build of gemv.c has the `kernel` bit's AMX kernel, and Linux
    lends this process the tiles."""
    lib = load_gemv()
    return (
        flag in cpu_flags() and lib is not None and bool(lib.rwkv_amx_kernels() & kernel) and lib.rwkv_amx_enable() == 1
    )


@cache
def amx_int8_works() -> bool:
    """Whether gemv.c's AMX int8 kernel runs here and gives NativeInt8Linear's bits on a small product."""
    if not _amx_ready("amx_int8", AMX_INT8_KERNEL):
        return False
    w = torch.arange(48 * 128, dtype=torch.float32).remainder_(11).sub_(5).view(48, 128)
    x = torch.arange(3 * 128, dtype=torch.float32).remainder_(7).sub_(3).view(3, 128)
    return bool(torch.equal(AmxInt8Linear(w)(x), NativeInt8Linear(w)(x)))


@cache
def amx_bf16_works() -> bool:
    """Whether gemv.c's AMX kernel runs here: a CPU with AMX-BF16, a build that has the kernel, Linux's
    permission to use the tiles, and a small product that comes out right."""
    if not _amx_ready("amx_bf16", AMX_BF16_KERNEL):
        return False
    w = torch.arange(48 * 64, dtype=torch.float32).remainder_(7).sub_(3).view(48, 64).bfloat16()
    x = torch.arange(3 * 64, dtype=torch.float32).remainder_(5).sub_(2).view(3, 64)
    return bool(torch.equal(AmxBf16Linear(w)(x), x @ w.float().t()))


class Int8Linear(Linear):
    """int8 weights with a per-row scale; bf16/fp16/fp32 activations."""

    held = ("q", "scale")

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


class NativeInt8Linear(Linear):
    """int8 weights with one scale per output row, kept as stored, multiplied in C (gemv.c) with
    activations rounded to 15 bits per row and exact integer sums, so a row gives the same result alone or
    in a batch. Long prompts (more than INT8_KERNEL_MAX_ROWS rows) widen blocks of the weights to fp32 for
    a GEMM on the same rounded activations instead.

    Used on x86 CPUs without VNNI, where fbgemm's int8 kernel needs 7-bit activations to stay exact and
    a packed copy of the weights about 11% larger than them."""

    kind = C_INT8  # the C kernel's weight format
    held = ("q", "scale")

    def __init__(self, w: torch.Tensor):
        self.q, self.scale = quantize_int8(w)
        self.out_features, self.in_features = self.q.shape
        self.nbytes = self.q.numel() + 4 * self.out_features

    @property
    def c_weights(self) -> torch.Tensor:
        """The weights as the C kernel of `kind` reads them."""
        return self.q

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows >= int_mm_min_rows() and int_mm_works():
            return self._int_mm(x)
        if rows > INT8_KERNEL_MAX_ROWS:
            return _widened(_as_15_bits(x), self.out_features, self.in_features, self._dequantize)
        return _gemv(x, self, self.kind, self.c_weights, self.scale)

    def c_matrix(self) -> CMatrix | None:
        w, scale = self.c_weights.data_ptr(), self.scale.data_ptr()
        return CMatrix(self.kind, self.in_features, self.out_features, w, scale, INT8_KERNEL_MAX_ROWS)

    def _int_mm(self, x: torch.Tensor) -> torch.Tensor:
        """The C kernel's arithmetic on oneDNN's int8 GEMM: each 15-bit activation is split into a high and
        a low byte (`rwkv_quantize_x_bytes`), both are multiplied by the int8 weights with exact int32 sums,
        and the sums are joined into the same exact total the kernel keeps, so both give the same bits. The
        int32 sums of both halves are a transient twice the size of the output."""
        xf = x.reshape(-1, self.in_features).float().contiguous()
        rows = xf.shape[0]
        halves = torch.empty(2 * rows, self.in_features, dtype=torch.int8)
        xs = torch.empty(rows)
        lib = load_gemv()
        lib.rwkv_quantize_x_bytes(xf.data_ptr(), halves.data_ptr(), xs.data_ptr(), rows, self.in_features)
        sums = torch._int_mm(halves, self._int_mm_weights())
        y = torch.empty(rows, self.out_features)
        lib.rwkv_join_bytes(
            sums.data_ptr(), self.scale.data_ptr(), xs.data_ptr(), y.data_ptr(), rows, self.out_features
        )
        return y.view(*x.shape[:-1], self.out_features)

    def _int_mm_weights(self) -> torch.Tensor:
        """W^T, (in, out), as the int8 GEMM takes it."""
        return self.q.t()

    def _dequantize(self, lo: int, hi: int, buf: torch.Tensor) -> None:
        buf.copy_(self.q[lo:hi])
        buf.mul_(self.scale[lo:hi, None])


class AmxInt8Linear(NativeInt8Linear):
    """NativeInt8Linear's weights in the order AMX's int8 tiles read them, [out/16][in/64][16][16][4], for
    gemv.c's AMX kernel (`amx_i8_rows`) at any number of rows: the same exact integer sums, so the same
    bits as NativeInt8Linear on every path, where its loops are bound by their multiply-adds from a few rows
    of x on."""

    kind = C_INT8_AMX
    held = ("tiles", "scale")

    def __init__(self, w: torch.Tensor):
        _claim_amx()
        q, self.scale = quantize_int8(w)
        self.out_features, self.in_features = q.shape
        self.nbytes = q.numel() + 4 * self.out_features
        self.tiles = (
            q.view(self.out_features // 16, 16, self.in_features // 64, 16, 4).permute(0, 2, 3, 1, 4).contiguous()
        )

    @staticmethod
    def fits(w: torch.Tensor) -> bool:
        """Whether the tiles take a matrix of this shape."""
        return w.shape[0] % 16 == 0 and w.shape[1] % 64 == 0

    @property
    def q(self) -> torch.Tensor:
        """The weights as (out, in) int8 rows: a fresh copy."""
        return self.tiles.permute(0, 3, 1, 2, 4).reshape(self.out_features, self.in_features)

    @property
    def c_weights(self) -> torch.Tensor:
        return self.tiles

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _gemv(x, self, self.kind, self.tiles, self.scale)


class PairedInt8Linear(NativeInt8Linear):
    """NativeInt8Linear's weights stored by pairs of inputs, (ceil(in / 2), out, 2), for inputs that are
    mostly zero, as a trained model's feed-forward gives its second matrix: the C kernel reads only the pairs
    whose inputs are not both zero (`rwkv_gemv_i8p` in gemv.c). Same integer sums and the same bits as
    NativeInt8Linear on every path; with dense inputs the C kernel is slower (see `core/sparse_ffn.py` for
    when it is used)."""

    kind = C_INT8_PAIRS
    held = ("qp", "scale")

    def __init__(self, native: NativeInt8Linear):
        q = native.q
        if q.shape[1] % 2:
            q = torch.cat([q, q.new_zeros(q.shape[0], 1)], dim=1)
        self.qp = q.view(q.shape[0], -1, 2).transpose(0, 1).contiguous()
        self.scale = native.scale
        self.out_features, self.in_features = native.out_features, native.in_features
        self.nbytes = self.qp.numel() + 4 * self.out_features

    @property
    def q(self) -> torch.Tensor:
        """The weights as (out, in) int8 rows: a view of a fresh copy."""
        return self._int_mm_weights().t()

    def _int_mm_weights(self) -> torch.Tensor:
        """W^T, (in, out), copied out of the pairs for a prompt's GEMM (2.4 MB per 0.19B layer)."""
        return self._unpaired(self.qp)

    def _unpaired(self, qp: torch.Tensor) -> torch.Tensor:
        """W^T, (in, n), of the pairs `qp` (ceil(in / 2), n, 2), copied by `rwkv_unpair_i8`: row by row of pairs,
        where PyTorch's strided copy moves two bytes at a time (20x slower)."""
        qp = qp.contiguous()
        wt = torch.empty(self.in_features, qp.shape[1], dtype=torch.int8)
        load_gemv().rwkv_unpair_i8(qp.data_ptr(), wt.data_ptr(), self.in_features, qp.shape[1])
        return wt

    @property
    def c_weights(self) -> torch.Tensor:
        return self.qp

    def _dequantize(self, lo: int, hi: int, buf: torch.Tensor) -> None:
        buf.copy_(self._unpaired(self.qp[:, lo:hi]).t())
        buf.mul_(self.scale[lo:hi, None])


class ByInputLinear(Linear):
    """DenseLinear's fp32 or bf16 weights stored by input, W^T (in, out), for inputs that are mostly zero: the
    C kernel reads only the weight rows of the inputs that are not zero (`byin_gemv` in gemv.c). On a
    3072 x 768 matrix of 0.19B (a 2-core Zen 4, the matrix in cache), against DenseLinear's kernel: with 90%
    zeros 5.1x (fp32) and 3.6x (bf16) faster for one row of x, 2.2x and 1.6x for 16; with 80%, 3.0x and
    2.3x for one, 1.3x and 1.1x for 16; with half, 1.6-1.8x for one and 0.4-0.6x for 16. Prompts multiply
    on oneDNN's GEMM, which reads the transposed weights as fast in fp32 and 2-5% slower in bf16 (512
    rows: 5.9 against 5.75 ms), or, with `prompts`, on the C kernel too. See `core/sparse_ffn.py` for when
    each is used."""

    held = ("wt",)
    prompts = False  # whether inputs of any number of rows go to the C kernel (for the sparsest inputs)

    def __init__(self, dense: DenseLinear):
        self.wt = dense.w.t().contiguous()
        self.out_features, self.in_features = dense.out_features, dense.in_features
        self.nbytes = dense.nbytes
        self.kind = C_BF16_BYIN if self.wt.dtype == torch.bfloat16 else C_F32_BYIN

    @staticmethod
    def takes(lin: Linear) -> bool:
        """Whether `lin` can be stored by input: plain fp32 or bf16 weights on gemv.c, in a GEMM's dtype, at
        least BYIN_MIN_BYTES of them."""
        return isinstance(lin, DenseLinear) and lin.kind is not None and not lin.widen and lin.nbytes >= BYIN_MIN_BYTES

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.prompts or x.numel() // x.shape[-1] <= C_MAX_ROWS[self.kind]:
            kind = rounding_kind(self.kind) if x.dtype == torch.bfloat16 else self.kind
            return _gemv(x, self, kind, self.wt, None)
        return f32_linear(x, self.wt.t()) if self.wt.dtype == torch.float32 else x @ self.wt

    def c_matrix(self) -> CMatrix | None:
        return CMatrix(self.kind, self.in_features, self.out_features, self.wt.data_ptr(), None, C_MAX_ROWS[self.kind])


def _as_15_bits(x: torch.Tensor) -> torch.Tensor:
    """x rounded per row to the 15-bit levels of the C kernel (`rwkv_quantize_x` in gemv.c, the same arithmetic), so
    that a long prompt's GEMM sees the activations the kernel would."""
    x = x.float()
    peak = x.abs().amax(dim=-1, keepdim=True)
    step = torch.where(peak > 0, peak / X_LEVELS, torch.ones_like(peak))
    v = x * (1.0 / step)
    return torch.trunc(v + torch.copysign(torch.full_like(v, 0.5), v)) * step


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

    def move_weights(self, place: Callable[[torch.Tensor], torch.Tensor]) -> None:
        for part in self.parts:
            part.move_weights(place)


def join_row_blocks(blocks: Iterator[Linear], rows: int, empty: Callable[..., torch.Tensor] = torch.empty) -> Linear:
    """One Linear of `rows` output rows from the row blocks of a tall matrix (the head), converted one at a
    time at load. Blocks that gemv.c reads as stored (`NativeInt8Linear`, `DenseLinear`) are copied into one
    matrix as they come, so the peak stays one block above the final size and a decode step multiplies the
    head in one C call: eight calls on 8192-row blocks of a 65536 x 768 int8 head took 5-14% longer than one
    (2-core Zen 4), and a whole 0.19B step about 9% longer. `empty` (called as `torch.empty`) allocates that
    matrix: the loader's `huge_pages.empty` puts it in 2 MB pages. Other layouts (packed, AMX tiles, GPU) stay
    blocks (`RowChunkedLinear`)."""
    first = next(blocks)
    whole: NativeInt8Linear | DenseLinear
    if type(first) is NativeInt8Linear:
        whole = NativeInt8Linear.__new__(NativeInt8Linear)
        whole.q = empty((rows, first.in_features), dtype=torch.int8)
        whole.scale = empty((rows,), dtype=torch.float32)
        whole.out_features, whole.in_features = rows, first.in_features
        whole.nbytes = whole.q.numel() + 4 * rows
        names = ("q", "scale")
    elif type(first) is DenseLinear and first.w.device.type == "cpu":
        whole = DenseLinear(empty((rows, first.in_features), dtype=first.w.dtype))
        names = ("w",)
    else:
        return RowChunkedLinear([first, *blocks])
    lo, rest = 0, itertools.chain([first], blocks)
    del first
    for block in rest:
        for name in names:
            getattr(whole, name)[lo : lo + block.out_features] = getattr(block, name)
        lo += block.out_features
        del block  # before the next block is converted
    if lo != rows:
        raise ValueError(f"row blocks hold {lo} rows, expected {rows}")
    return whole


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as /proc/cpuinfo names them (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return frozenset()


def _has_vnni() -> bool:
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


@cache
def int_mm_works() -> bool:
    """Whether `torch._int_mm` (int8 x int8 -> exact int32) is fast here, which needs VNNI or AMX, and gives
    exact sums (tried once on a small product)."""
    if not (_has_vnni() and hasattr(torch, "_int_mm")):
        return False
    try:
        a = torch.arange(-64, 64, dtype=torch.int8).view(8, 16)
        b = torch.arange(127, -129, -2, dtype=torch.int16).to(torch.int8).view(8, 16)
        return bool(torch.equal(torch._int_mm(a, b.t()), a.int() @ b.int().t()))
    except RuntimeError:
        return False


@cache
def int_mm_min_rows() -> int:
    """Rows of x from which NativeInt8Linear multiplies on oneDNN's int8 GEMM (where `int_mm_works`)."""
    return INT_MM_MIN_ROWS_AMX if "amx_int8" in cpu_flags() else INT_MM_MIN_ROWS_VNNI


def dynamic_int8_available() -> bool:
    """True where PyTorch has the fbgemm/x86 quantized engine (x86 CPUs)."""
    return any(e in torch.backends.quantized.supported_engines for e in ("x86", "fbgemm"))


@cache
def cpu_int8_kernel() -> str:
    """How int8 strategies multiply on this CPU: "native" (gemv.c wherever a C compiler is found, with
    `torch._int_mm` for many rows where VNNI makes it fast), else "fbgemm" (PyTorch's dynamic int8 engine on
    x86) or "weight-only" (PyTorch's int8 weight-only kernel)."""
    if load_gemv() is not None:
        return "native"
    return "fbgemm" if dynamic_int8_available() else "weight-only"


def make_linear(w: torch.Tensor, device: str, dtype: torch.dtype, int8: bool) -> Linear:
    """Convert one (out, in) weight for a strategy; the source tensor may be freed afterwards."""
    w = w.to(device)
    if int8 and device == "cpu" and cpu_int8_kernel() == "fbgemm":
        return DynamicInt8Linear(w)
    if int8 and device == "cpu" and cpu_int8_kernel() == "native":
        return AmxInt8Linear(w) if AmxInt8Linear.fits(w) and amx_int8_works() else NativeInt8Linear(w)
    if int8:
        return Int8Linear(w, dtype)
    w = w.to(dtype)
    if device == "cpu" and dtype == torch.bfloat16 and AmxBf16Linear.fits(w) and amx_bf16_works():
        return AmxBf16Linear(w)
    if device == "cpu" and packs(dtype):
        return PackedLinear(w)
    return DenseLinear(w)


def packs(dtype: torch.dtype) -> bool:
    """Whether CPU weights of `dtype` are prepacked for oneDNN rather than kept as stored for gemv.c.

    gemv.c decodes faster than the packed layout: fp32 0.19B 108 against 163 us for a 768x768 matrix;
    bf16 on a 2-core Zen 4 91 against 52 tok/s for a whole 0.19B step. Prompts lose nothing, since oneDNN's
    GEMMs read plain weights as fast (`f32_linear`, and `F.linear` for bf16). The exception is bf16 with
    AMX, whose packed products of a batch far outrun gemv.c's loops (16 streams of 0.19B on a 2-core Xeon,
    487 against about 320 tok/s): packed where `AmxBf16Linear`, which is faster still, does not take the
    shape."""
    if dtype not in (torch.bfloat16, torch.float32) or not packing_works(dtype):
        return False
    if load_gemv() is None:
        return True
    return dtype == torch.bfloat16 and "amx_bf16" in cpu_flags()
