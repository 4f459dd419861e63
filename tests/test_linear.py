"""The matrix kernels: bf16 weights widened to fp32 for many-row products on CPUs without bf16 packing, and
the C matrix-vector kernels (gemv.c) for decoding, against PyTorch's products of the same weights."""

from __future__ import annotations

import pytest
import torch

from rwkv_hub.core import linear
from rwkv_hub.core.linear import (
    BF16_KERNEL_MAX_ROWS,
    INT8_KERNEL_MAX_ROWS,
    WIDEN_BLOCK_FLOATS,
    AmxBf16Linear,
    DenseLinear,
    NativeInt8Linear,
    quantize_int8,
)
from rwkv_hub.core.native import load_gemv

needs_gemv = pytest.mark.skipif(load_gemv() is None, reason="no C compiler")
X_BLOCK = 64  # rows of x per pass over the weights in gemv.c


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def test_widened_bf16_products_equal_fp32_products_of_the_same_weights(monkeypatch):
    """Where oneDNN has no bf16 GEMM (AVX2), many rows widen the weights to fp32 blocks instead."""
    g = torch.Generator().manual_seed(0)
    rows = WIDEN_BLOCK_FLOATS // 64 + 100  # more than one block of rows
    w = torch.randn(rows, 64, generator=g).bfloat16()
    assert DenseLinear(w).widen == (not linear.packing_works(torch.bfloat16))
    monkeypatch.setattr(linear, "packing_works", lambda dtype: False)
    lin = DenseLinear(w)
    assert lin.widen
    x = torch.randn(2, BF16_KERNEL_MAX_ROWS + 3, 64, generator=g).bfloat16()
    y = lin(x)
    assert y.shape == (2, BF16_KERNEL_MAX_ROWS + 3, rows)
    assert torch.equal(y, torch.nn.functional.linear(x.float(), w.float()))
    one = x[:, :1]  # a decode step takes the matrix-vector kernel
    assert rel(lin(one), y[:, :1]) < 1e-5
    assert not DenseLinear(w.float()).widen


@pytest.mark.parametrize(
    "x",
    [torch.randn(40, 24).t(), torch.randn(2, 30, 48), torch.randn(30, 96)[:, ::2], torch.randn(0, 48)],
    ids=["transposed", "3-d", "strided", "empty"],
)
def test_f32_linear_equals_the_fp32_product_for_any_input_layout(x):
    """oneDNN's GEMM (where PyTorch has it) takes the weights as stored and inputs of any layout."""
    w = torch.randn(70, x.shape[-1], generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        y = linear.f32_linear(x, w)
    want = (x.double() @ w.double().t()).float()
    assert y.shape == want.shape and y.dtype == torch.float32
    if x.numel():
        assert rel(y, want) < 1e-6
    assert DenseLinear(w)(x).shape == want.shape


# Shapes with every remainder the kernels handle: columns not a multiple of 4 (the row-group unit), inputs
# not a multiple of 8 or 16 (the vector widths), 800 inputs (a multiple of 32 but not 64: the int8 AVX2
# loop where AVX-512 VNNI takes the others), and one over SPLIT_MIN_BYTES (split between threads).
SHAPES = [(5, 8), (7, 24), (64, 40), (130, 768), (36, 800), (3000, 2048)]


@needs_gemv
@pytest.mark.parametrize(("n_out", "n_in"), SHAPES)
@pytest.mark.parametrize("rows", [1, 2, 3, BF16_KERNEL_MAX_ROWS, BF16_KERNEL_MAX_ROWS - 1, BF16_KERNEL_MAX_ROWS - 2])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_dense_matrix_vector_kernel_equals_fp32_product_of_the_same_weights(n_out, n_in, rows, dtype):
    """Two or more rows take the AVX-512 register blocks where the CPU has them (four weight rows by two to
    four rows of x; dense_row for one row and for weight rows short of a block); each row still gets the
    bits it gets alone. bf16 inputs to bf16 weights take the AVX-512 BF16 tiles where the CPU has them
    (rx_rows), with the same rule."""
    g = torch.Generator().manual_seed(n_out + rows)
    w = torch.randn(n_out, n_in, generator=g).to(dtype)
    x = torch.randn(rows, n_in, generator=g)
    lin = DenseLinear(w)
    assert lin.kind is not None
    want = torch.nn.functional.linear(x, w.float())
    assert rel(lin(x.bfloat16()), torch.nn.functional.linear(x.bfloat16().float(), w.float())) < 1e-5
    assert rel(lin(x), want) < 1e-5  # an fp32 input is read in full
    for xi in (x, x.bfloat16()):
        for r in range(rows):  # each row alone gives the same numbers, to the bit
            assert torch.equal(lin(xi[r : r + 1])[0], lin(xi)[r])


@needs_gemv
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("n_out", "n_in"), [(768, 768), (300, 1001), (7, 5)])
def test_c_weight_quantization_gives_the_pytorch_bits(dtype, n_out, n_in):
    """gemv.c's quantizer against the PyTorch one: rows of every magnitude, an all-zero row, and a row whose
    scale is exactly 1 so that halves must round to even (0.5 -> 0, 1.5 -> 2, -2.5 -> -2)."""
    g = torch.Generator().manual_seed(n_in)
    w = torch.randn(n_out, n_in, generator=g) * torch.logspace(-6, 3, n_out)[:, None]
    w[0] = 0.0
    w[1] = 0.0
    w[1, :5] = torch.tensor([127.0, 0.5, 1.5, -2.5, -127.0])[:n_in]
    w = w.to(dtype)
    q, scale = quantize_int8(w)
    want_q, want_scale = linear.quantize_int8_torch(w)
    assert torch.equal(q, want_q) and torch.equal(scale, want_scale)
    assert q[1, :5].tolist() == [127, 0, 2, -2, -127][:n_in]


@needs_gemv
@pytest.mark.parametrize(("n_out", "n_in"), SHAPES)
@pytest.mark.parametrize("rows", [1, 2, 3, 4])
def test_int8_kernel_equals_the_dequantized_product(n_out, n_in, rows):
    """15-bit activations and exact integer sums: within 1e-4 of fp32 with the same int8 weights, and the
    same numbers for a row whatever rows come with it (2 to 4 rows meet four weight rows at a time in
    i8_block4_vnni where the CPU has VNNI and the width is a multiple of 64)."""
    g = torch.Generator().manual_seed(n_out)
    w = torch.randn(n_out, n_in, generator=g)
    x = torch.randn(rows, n_in, generator=g)
    lin = NativeInt8Linear(w)
    q, scale = quantize_int8(w)
    want = torch.nn.functional.linear(x, q.float() * scale[:, None])
    assert rel(lin(x), want) < 1e-4
    copies = X_BLOCK // rows + 2  # more rows than one block of the kernel, fewer than INT8_KERNEL_MAX_ROWS
    many = lin(x.repeat(copies, 1))
    assert torch.equal(many, lin(x).repeat(copies, 1))  # exact integer sums: identical rows
    assert torch.equal(lin(x[:1])[0], lin(x)[0])
    long = lin(x.repeat(INT8_KERNEL_MAX_ROWS // rows + 1, 1))  # a long prompt: a GEMM, same activations
    assert rel(long, lin(x).repeat(INT8_KERNEL_MAX_ROWS // rows + 1, 1)) < 1e-5
    assert lin.nbytes == n_out * n_in + 4 * n_out


@needs_gemv
@pytest.mark.parametrize("n_in", [16384 + 48, 16384 + 64])
@pytest.mark.parametrize("rows", [1, 4])
def test_int8_sums_do_not_overflow_at_the_extremes(n_in, rows):
    """Every weight at +127 and every activation at the top of its range, over a long row (one row at a
    time, and four weight rows by four rows of x where the width takes the VNNI blocks)."""
    w = torch.ones(8, n_in)
    lin = NativeInt8Linear(w)
    x = torch.ones(rows, n_in)
    assert rel(lin(x), torch.full((rows, 8), float(n_in))) < 1e-6
    assert rel(lin(-x), torch.full((rows, 8), -float(n_in))) < 1e-6


@needs_gemv
@pytest.mark.skipif(not linear.int_mm_works(), reason="no VNNI or AMX: many rows stay in the C kernel")
def test_many_int8_rows_take_the_int8_gemm_and_give_the_kernel_s_bits(monkeypatch):
    """From `int_mm_min_rows()` rows the product is oneDNN's int8 GEMM on the activations' two bytes; joined, its
    integer sums give the C kernel's result to the bit, extreme activations (+-16383 levels) included."""
    g = torch.Generator().manual_seed(7)
    w = torch.randn(200, 768, generator=g)
    x = torch.randn(linear.int_mm_min_rows() + 3, 768, generator=g) * 5
    x[0, :] = 0.0
    x[1, :7] = torch.tensor([1e4, -1e4, 3.0, -3.0, 0.5, -0.5, 1e-30])
    lin = NativeInt8Linear(w)
    calls = []
    real = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: calls.append(a.shape) or real(a, b))
    many = lin(x)
    assert calls == [(2 * x.shape[0], 768)]
    one_by_one = torch.cat([lin(x[r : r + 1]) for r in range(x.shape[0])])
    fewer = lin(x[: linear.int_mm_min_rows() - 1])
    assert len(calls) == 1  # single rows, and one row fewer than the limit, stay in the C kernel
    assert torch.equal(many, one_by_one)
    assert torch.equal(fewer, many[: linear.int_mm_min_rows() - 1])


def test_int8_kernel_choice_is_reported():
    assert linear.cpu_int8_kernel() in ("fbgemm", "native", "weight-only")


@pytest.mark.skipif(not linear.amx_bf16_works(), reason="no AMX-BF16 here (or no kernel built for it)")
@pytest.mark.parametrize(("n_out", "n_in"), [(16, 32), (48, 800), (768, 768), (3072, 768), (768, 3072)])
@pytest.mark.parametrize("rows", [1, 3, 16, 17, 64, 100, 512])
def test_amx_kernel_equals_the_bf16_product_and_gives_each_row_its_bits_alone(n_out, n_in, rows):
    """AMX tiles on weights in tile order: 1-16 rows take one tile of sums, 64 rows four, the rest are
    remainders; long inputs go through the weights a chunk of output rows at a time. Within float
    rounding of the float64 product of the same bf16 values, fp32 and bf16 inputs give the same bits, and
    a row alone gives the bits it gets in any batch. bf16 strategies take this layout where it runs."""
    g = torch.Generator().manual_seed(n_out * 7 + rows)
    w = torch.randn(n_out, n_in, generator=g).bfloat16()
    x = torch.randn(rows, n_in, generator=g)
    lin = AmxBf16Linear(w)
    want = torch.nn.functional.linear(x.bfloat16().double(), w.double())
    got = lin(x)
    assert rel(got, want) < 1e-6
    assert torch.equal(lin(x.bfloat16()), got)
    for r in sorted({0, rows // 2, rows - 1}):
        assert torch.equal(lin(x[r : r + 1])[0], got[r])
    assert linear.make_linear(w, "cpu", torch.bfloat16, int8=False).__class__ is AmxBf16Linear


@pytest.mark.skipif(not linear.amx_int8_works(), reason="no AMX-INT8 here (or no kernel built for it)")
@pytest.mark.parametrize(("n_out", "n_in"), [(16, 64), (48, 832), (768, 768), (3072, 768), (768, 3072)])
@pytest.mark.parametrize("rows", [1, 3, 16, 17, 32, 33, 100, 256])
def test_amx_int8_kernel_gives_the_int8_kernel_s_bits(n_out, n_in, rows):
    """AMX tiles on int8 weights in tile order, x as the two bytes of its 15-bit levels: the same exact
    integer sums as gemv.c's int8 loops, so the same bits for every row count (1-16 rows take one tile of
    sums, 32 and more two, the rest are remainders), and the same weights back out of the tiles."""
    g = torch.Generator().manual_seed(n_out * 5 + rows)
    w = torch.randn(n_out, n_in, generator=g)
    x = torch.randn(rows, n_in, generator=g)
    amx, native = linear.AmxInt8Linear(w), NativeInt8Linear(w)
    assert torch.equal(amx.q, native.q) and torch.equal(amx.scale, native.scale)
    want = linear._gemv(x, native, native.kind, native.c_weights, native.scale)
    assert torch.equal(amx(x), want)
    assert torch.equal(amx(x[rows - 1 :])[0], want[rows - 1])
    assert linear.make_linear(w, "cpu", torch.bfloat16, int8=True).__class__ is linear.AmxInt8Linear


@needs_gemv
@pytest.mark.parametrize("strategy", ["cpu fp32", "cpu bf16", "cpu bf16i8"])
def test_a_head_loaded_in_row_blocks_gives_the_logits_of_one_loaded_whole(checkpoint_factory, monkeypatch, strategy):
    """A tall head is converted a block of rows at a time; where gemv.c reads the blocks as stored they are
    joined into one matrix (one C call per decode step), which must give the bits the unblocked head gives."""
    import rwkv_hub
    from rwkv_hub.core import model as model_module

    path = checkpoint_factory(n_layer=1, n_embd=128, vocab_size=500, head_size=64)
    whole = rwkv_hub.load(path, strategy=strategy)
    monkeypatch.setattr(model_module, "HEAD_BLOCK_ROWS", 96)  # 5 blocks of 96 rows and one of 20
    blocked = rwkv_hub.load(path, strategy=strategy)
    assert type(blocked.head) is type(whole.head)  # joined, not a RowChunkedLinear
    assert blocked.head.nbytes == whole.head.nbytes
    for tokens in ([3], [5, 6, 7, 8], list(range(40))):
        assert torch.equal(blocked.forward(tokens)[0], whole.forward(tokens)[0])


def test_row_blocks_of_other_layouts_stay_blocks():
    """Layouts gemv.c does not read as stored (here the GPU's int8 form) keep their blocks, in order."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(70, 32, generator=g)
    blocks = [linear.Int8Linear(w[lo : lo + 32], torch.float32) for lo in range(0, 70, 32)]
    joined = linear.join_row_blocks(iter(blocks), 70)
    assert isinstance(joined, linear.RowChunkedLinear)
    x = torch.randn(9, 32, generator=g)
    assert torch.equal(joined(x), torch.cat([b(x) for b in blocks], dim=-1))


@needs_gemv
def test_joined_row_blocks_must_add_up_to_the_rows_asked_for():
    w = torch.randn(40, 16)
    blocks = iter([DenseLinear(w[:24]), DenseLinear(w[24:])])
    with pytest.raises(ValueError, match="hold 40 rows, expected 48"):
        linear.join_row_blocks(blocks, 48)
