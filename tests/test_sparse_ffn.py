"""The feed-forward value matrix stored for mostly-zero inputs (core/sparse_ffn.py): by pairs of inputs for
int8 (PairedInt8Linear, rwkv_gemv_i8p in gemv.c), the same bits as the plain int8 layout on every path; by
input for fp32 and bf16 (ByInputLinear, byin_gemv), the same products summed in another order, checked
against float64 sums and the official package. Either is chosen at load only where a layer's inputs are
mostly zero."""

from __future__ import annotations

import pytest
import torch
from conftest import random_tokens, rel_err

import rwkv_hub
from rwkv_hub.core import linear, sparse_ffn
from rwkv_hub.core.builtin import builtin_model_path
from rwkv_hub.core.linear import (
    F32_KERNEL_MAX_ROWS,
    INT8_KERNEL_MAX_ROWS,
    ByInputLinear,
    DenseLinear,
    NativeInt8Linear,
    PairedInt8Linear,
)
from rwkv_hub.core.native import load_gemv
from rwkv_hub.core.synth import write_random_checkpoint

needs_gemv = pytest.mark.skipif(load_gemv() is None, reason="no C compiler")
VNNI = {"avx512bw", "avx512_vnni"} <= linear.cpu_flags()
SHAPE = dict(n_layer=3, n_embd=128, vocab_size=512, head_size=64)


def relu_squared(rows: int, n_in: int, zero_share: float, seed: int) -> torch.Tensor:
    """Inputs as a feed-forward gives them: relu(k)^2 with about `zero_share` of them zero."""
    g = torch.Generator().manual_seed(seed)
    shift = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(zero_share)).item() if zero_share else -10.0
    return torch.relu(torch.randn(rows, n_in, generator=g) - shift) ** 2


@needs_gemv
@pytest.mark.parametrize(("n_out", "n_in"), [(768, 3072), (300, 1001), (70, 100), (16, 48)])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 9, 16, INT8_KERNEL_MAX_ROWS + 5])
def test_paired_layout_gives_the_plain_layout_s_bits(n_out, n_in, rows):
    """Every rows-of-x path (the C kernel with one to four rows at a time, oneDNN's int8 GEMM from
    `int_mm_min_rows()` on VNNI CPUs), sparse and dense inputs, odd widths (a zero-padded last pair) and widths
    that leave outputs past the 16-wide register blocks."""
    native = NativeInt8Linear(torch.randn(n_out, n_in, generator=torch.Generator().manual_seed(n_in)))
    paired = PairedInt8Linear(native)
    assert torch.equal(paired.q, native.q)
    for zero_share in (0.9, 0.5, 0.0):
        x = relu_squared(rows, n_in, zero_share, seed=rows)
        assert torch.equal(paired(x), native(x)), f"{zero_share:.0%} zeros"
    assert torch.equal(paired(torch.zeros(rows, n_in)), torch.zeros(rows, n_out))


@needs_gemv
def test_paired_layout_widens_the_same_weights_for_long_prompts(monkeypatch):
    """Without an int8 GEMM, prompts longer than the C kernel's limit multiply widened weights."""
    monkeypatch.setattr(linear, "int_mm_works", lambda: False)
    native = NativeInt8Linear(torch.randn(200, 301, generator=torch.Generator().manual_seed(1)))
    x = relu_squared(INT8_KERNEL_MAX_ROWS + 3, 301, 0.8, seed=2)
    assert torch.equal(PairedInt8Linear(native)(x), native(x))


@needs_gemv
@pytest.mark.parametrize("rows", [1, 4])
def test_paired_sums_do_not_overflow_at_the_extremes(rows):
    """Every weight at +-127 and every input at the top of its 15-bit range, over more pairs than the int32
    sums take before they move to int64."""
    n_in = 16384 + 49
    w = torch.ones(40, n_in)
    w[1::2] = -1.0
    paired = PairedInt8Linear(NativeInt8Linear(w))
    want = torch.tensor([float(n_in), -float(n_in)]).repeat(20).expand(rows, 40)
    assert torch.allclose(paired(torch.ones(rows, n_in)), want, rtol=1e-6)


@needs_gemv
@pytest.mark.skipif(not VNNI, reason="the paired layout is used only on CPUs with AVX-512 VNNI")
@pytest.mark.parametrize("streams", [1, 3])
def test_a_model_decodes_the_same_bits_with_either_layout(checkpoint_factory, monkeypatch, streams):
    """Prefill and decode steps (the one-call layer, value matrices in pairs) against the same model with
    none paired: equal logits and states, bit for bit."""
    path = checkpoint_factory(**SHAPE)
    monkeypatch.setattr(sparse_ffn, "SPARSE_MIN", 0.0)
    paired = rwkv_hub.load(path, strategy="cpu bf16i8")
    monkeypatch.setattr(sparse_ffn, "SPARSE_MIN", 1.01)
    plain = rwkv_hub.load(path, strategy="cpu bf16i8")
    assert paired.sparse_ffn_layers == [0, 1, 2] and plain.sparse_ffn_layers == []
    assert isinstance(paired.blocks[0].ffn_value, PairedInt8Linear)
    assert paired._decoder.fused_max_rows == INT8_KERNEL_MAX_ROWS
    prompts = [random_tokens(5 + 3 * b, SHAPE["vocab_size"], seed=b) for b in range(streams)]
    results = []
    for model in (paired, plain):
        logits, states = model.forward_batch(prompts, [model.new_state() for _ in prompts])
        state = rwkv_hub.State.stack(states)
        run = [logits]
        for step in range(4):
            logits, state = model.forward_batch([[(11 * step + b) % 512] for b in range(streams)], state)
            run += [logits, *state.tensors().values()]
        results.append(run)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@needs_gemv
@pytest.mark.skipif(not VNNI, reason="the paired layout is used only on CPUs with AVX-512 VNNI")
def test_only_mostly_zero_feed_forwards_are_paired(checkpoint_factory, tmp_path):
    """The trained built-in model's value matrices get mostly zeros (89-95%): all are paired. Random weights
    give about half: none is. Random weights with the keys shifted as synth's ffn_zero_share does: all."""
    builtin = rwkv_hub.load(builtin_model_path(), strategy="cpu bf16i8")
    assert builtin.sparse_ffn_layers == list(range(builtin.spec.n_layer))
    random = rwkv_hub.load(checkpoint_factory(**SHAPE), strategy="cpu bf16i8")
    fractions = sparse_ffn.zero_fractions(random)
    assert all(0.3 < f < 0.7 for f in fractions), fractions
    assert random.sparse_ffn_layers == []
    shifted = rwkv_hub.load(
        write_random_checkpoint(tmp_path / "s.pth", **SHAPE, ffn_zero_share=0.9), strategy="cpu bf16i8"
    )
    fractions = sparse_ffn.zero_fractions(shifted)
    assert all(0.85 < f < 0.95 for f in fractions), fractions
    assert shifted.sparse_ffn_layers == [0, 1, 2]


@needs_gemv
def test_random_weights_keep_the_plain_float_layout(checkpoint_factory, monkeypatch):
    """fp32 can take the by-input layout, but random weights give its value matrices only about half zeros."""
    monkeypatch.setattr(linear, "BYIN_MIN_BYTES", 0)
    model = rwkv_hub.load(checkpoint_factory(**SHAPE), strategy="cpu fp32")
    assert sparse_ffn.sparse_layout_applies(model)
    assert model.sparse_ffn_layers == []
    assert all(type(b.ffn_value) is DenseLinear for b in model.blocks)


@needs_gemv
def test_only_plain_float_weights_in_the_c_kernel_go_by_input(monkeypatch):
    """Weights that the C kernel does not read (on a GPU, say: kind None) or that are widened for prompts (bf16
    where oneDNN has no bf16 GEMM) keep their layout, and so do matrices under BYIN_MIN_BYTES, which stay in
    cache (the built-in model's, whose 16 streams it slowed)."""
    assert not ByInputLinear.takes(DenseLinear(torch.randn(8, 16)))
    assert ByInputLinear.takes(DenseLinear(torch.randn(linear.BYIN_MIN_BYTES // 4 // 64, 64)))
    builtin = rwkv_hub.load(builtin_model_path(), strategy="cpu fp32")
    assert not sparse_ffn.sparse_layout_applies(builtin) and builtin.sparse_ffn_layers == []
    monkeypatch.setattr(linear, "BYIN_MIN_BYTES", 0)
    dense = DenseLinear(torch.randn(8, 16))
    assert ByInputLinear.takes(dense)
    dense.kind = None
    assert not ByInputLinear.takes(dense)
    widened = DenseLinear(torch.randn(8, 16).bfloat16())
    widened.widen = True
    assert not ByInputLinear.takes(widened)
    assert not ByInputLinear.takes(NativeInt8Linear(torch.randn(8, 16)))


def _float64_product(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (x.double() @ w.double().t()).float()


@needs_gemv
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("n_out", "n_in"), [(768, 3072), (300, 1001), (70, 2100), (16, 48)])
@pytest.mark.parametrize("rows", [1, 2, 5, 16, F32_KERNEL_MAX_ROWS + 3])
def test_by_input_layout_gives_the_product(dtype, n_out, n_in, rows):
    """The C kernel (up to 16 rows: outputs in blocks of 256 and 16 and a plain tail, inputs listed 1024 at
    a time, which 2100 and 3072 cross) and oneDNN's GEMM on the transposed weights (more rows): within 1e-5
    of the float64 product, sparse and dense inputs. bf16 inputs are rounded to bf16, as the GEMM takes
    them; fp32 inputs to bf16 weights in the C kernel are not."""
    w = torch.randn(n_out, n_in, generator=torch.Generator().manual_seed(n_in)).to(dtype)
    dense = DenseLinear(w)
    if dense.widen:  # ByInputLinear.takes refuses it: prompts widen the plain layout's weights to fp32 here
        pytest.skip("bf16 is widened for prompts on this CPU: the plain layout stays")
    lin = ByInputLinear(dense)
    assert lin.wt.shape == (n_in, n_out) and lin.nbytes == w.numel() * w.element_size()
    # A GEMM returns its input's dtype, as DenseLinear's does: bf16 outputs are rounded to bf16.
    tol = 1e-5 if rows <= F32_KERNEL_MAX_ROWS or dtype == torch.float32 else 2**-8
    for zero_share in (0.9, 0.5, 0.0):
        x = relu_squared(rows, n_in, zero_share, seed=rows).to(dtype)
        y = lin(x)
        assert y.dtype == dense(x).dtype
        assert rel_err(y.float(), _float64_product(x, w)) < tol, f"{zero_share:.0%} zeros"
    lin.prompts = True  # every row count in the C kernel, with fp32 sums
    for zero_share in (0.9, 0.0):
        x = relu_squared(rows, n_in, zero_share, seed=rows).to(dtype)
        y = lin(x)
        assert y.dtype == torch.float32 and rel_err(y, _float64_product(x, w)) < 1e-5
    lin.prompts = False
    if dtype == torch.bfloat16 and rows <= F32_KERNEL_MAX_ROWS:
        x = relu_squared(rows, n_in, 0.9, seed=7)
        assert rel_err(lin(x), _float64_product(x, w)) < 1e-5  # fp32 inputs: not rounded
        rounded = linear._gemv(x, lin, linear.C_BF16_BYIN_RX, lin.wt, None)  # as the decode layer asks
        assert rel_err(rounded, _float64_product(x.bfloat16(), w)) < 1e-5
        assert not torch.equal(rounded, lin(x))
    assert torch.equal(lin(torch.zeros(rows, n_in, dtype=dtype)), torch.zeros(rows, n_out))


@needs_gemv
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("n_out", "n_in"), [(300, 1100), (768, 3072)])
def test_a_row_by_input_gets_the_same_bits_alone_or_batched(dtype, n_out, n_in):
    """A sequence's result must not depend on the others decoded with it (fp32 batches of 8 rows and more
    take the inputs in chunks of another size than one row alone)."""
    w = torch.randn(n_out, n_in, generator=torch.Generator().manual_seed(3)).to(dtype)
    lin = ByInputLinear(DenseLinear(w))
    x = relu_squared(F32_KERNEL_MAX_ROWS, n_in, 0.9, seed=4).to(dtype)
    x[3] = 0.0
    batched = lin(x)
    for r in range(x.shape[0]):
        assert torch.equal(lin(x[r : r + 1]), batched[r : r + 1]), f"row {r}"


@needs_gemv
@pytest.mark.parametrize("strategy", ["cpu fp32", "cpu bf16"])
def test_a_trained_model_s_feed_forwards_go_by_input(strategy, monkeypatch):
    """The built-in model's value matrices get 85-95% zeros: all of them take the by-input layout, and a
    prefill and decode steps of three streams (the one-call layer) agree with the plain layout's. (Its
    matrices are under BYIN_MIN_BYTES, so by default they stay plain.)"""
    monkeypatch.setattr(linear, "BYIN_MIN_BYTES", 0)
    model = rwkv_hub.load(builtin_model_path(), strategy=strategy)
    weights = torch.bfloat16 if "bf16" in strategy else torch.float32  # the activations may be fp32 either way
    if not ByInputLinear.takes(DenseLinear(torch.zeros(16, 16, dtype=weights))):
        pytest.skip("bf16 is widened for prompts on this CPU: the plain layout stays")
    assert model.sparse_ffn_layers == list(range(model.spec.n_layer))
    assert all(isinstance(b.ffn_value, ByInputLinear) for b in model.blocks)
    monkeypatch.setattr(sparse_ffn, "SPARSE_MIN", 1.01)
    plain = rwkv_hub.load(builtin_model_path(), strategy=strategy)
    assert plain.sparse_ffn_layers == []
    # bf16: other sums round other activations to bf16, and the prompts' kernel keeps float32 sums where the
    # GEMM rounds them to bf16: bf16's precision, as between a row decoded alone and in a GEMM (strategies.md)
    tol = 1e-5 if strategy == "cpu fp32" else 1e-2
    prompts = [random_tokens(9 + b, model.spec.vocab_size, seed=b) for b in range(3)]
    states = [[m.new_state() for _ in prompts] for m in (model, plain)]
    for step in range(4):
        (a, sa), (b, sb) = (m.forward_batch(prompts, s) for m, s in zip((model, plain), states, strict=True))
        states = [sa, sb]
        assert rel_err(a, b) <= tol, f"step {step}"
        prompts = [[int(t)] for t in b.argmax(dim=-1)]
    assert model._decoder.fused_max_rows == F32_KERNEL_MAX_ROWS


@needs_gemv
@pytest.mark.parametrize("prompts", [True, False])
def test_by_input_model_matches_the_official_package(tmp_path, official_factory, monkeypatch, prompts):
    """fp32 on a checkpoint whose feed-forward inputs are 90% zero (every value matrix by input; prompts in
    the C kernel too, or on the GEMM): prefill, ten greedy decode steps (the one-call layer) and a batch of
    three, each within the reference bound."""
    monkeypatch.setattr(linear, "BYIN_MIN_BYTES", 0)
    monkeypatch.setattr(sparse_ffn, "PROMPT_SPARSE_MIN", {torch.float32: 0.0 if prompts else 1.01})
    path = write_random_checkpoint(tmp_path / "z.pth", **SHAPE, ffn_zero_share=0.9)
    model, ref = rwkv_hub.load(path, strategy="cpu fp32"), official_factory(path)
    assert model.sparse_ffn_layers == [0, 1, 2]
    assert all(b.ffn_value.prompts == prompts for b in model.blocks)
    toks = random_tokens(40, SHAPE["vocab_size"], seed=5)
    ours, state = model.forward(toks, None)
    want, ref_state = ref.forward(toks)
    assert rel_err(ours, want) <= 1e-4
    for _ in range(10):
        tok = int(want.argmax())
        ours, state = model.forward([tok], state)
        want, ref_state = ref.forward([tok], ref_state)
        assert rel_err(ours, want) <= 1e-4
    prompts = [random_tokens(n, SHAPE["vocab_size"], seed=n) for n in (1, 6, 3)]
    logits, _ = model.forward_batch(prompts, [model.new_state() for _ in prompts])
    for row, p in zip(logits, prompts, strict=True):
        assert rel_err(row, ref.forward(p)[0]) <= 1e-4


@needs_gemv
@pytest.mark.skipif(not VNNI, reason="the paired layout is used only on CPUs with AVX-512 VNNI")
def test_a_failed_measurement_keeps_the_plain_layout(checkpoint_factory, monkeypatch, caplog):
    """Running out of memory in the calibration prompt must not fail the load: the plain layout stays."""

    def fail(model):
        raise RuntimeError("not enough memory")

    monkeypatch.setattr(sparse_ffn, "zero_fractions", fail)
    monkeypatch.setattr(sparse_ffn, "SPARSE_MIN", 0.0)
    model = rwkv_hub.load(checkpoint_factory(**SHAPE), strategy="cpu bf16i8")
    assert model.sparse_ffn_layers == []
    assert not any(isinstance(b.ffn_value, PairedInt8Linear) for b in model.blocks)
    assert all(isinstance(b.ffn_value, NativeInt8Linear) for b in model.blocks)  # AmxInt8Linear is one
    assert "keeping the plain layout" in caplog.text


def _older_generation_runs(path, strategy: str, layout: type, monkeypatch) -> list[list[torch.Tensor]]:
    """The logits of a prefill and three decode steps, with every value matrix in `layout`, then with none."""
    runs = []
    for share in (0.0, 1.01):
        monkeypatch.setattr(sparse_ffn, "SPARSE_MIN", share)
        model = rwkv_hub.load(path, strategy=strategy)
        assert model.sparse_ffn_layers == ([0, 1] if share == 0.0 else [])
        assert isinstance(model.blocks[0].ffn_value, layout) == (share == 0.0)
        logits, state = model.forward(random_tokens(9, 512, seed=3), None)
        run = [logits]
        for step in range(3):
            logits, state = model.forward([step + 5], state)
            run.append(logits)
        runs.append(run)
    return runs


@needs_gemv
@pytest.mark.skipif(not VNNI, reason="the paired layout is used only on CPUs with AVX-512 VNNI")
@pytest.mark.parametrize("generation", ["x060", "x052", "x040"])
def test_older_generations_decode_the_same_bits_paired(checkpoint_factory, monkeypatch, generation):
    """RWKV-4, 5 and 6 feed-forwards square a relu too, and their value matrices are paired the same way;
    their decode steps go through the Linear (no one-call layer): equal logits with either layout."""
    path = checkpoint_factory(n_layer=2, n_embd=128, vocab_size=512, generation=generation)
    for a, b in zip(*_older_generation_runs(path, "cpu bf16i8", PairedInt8Linear, monkeypatch), strict=True):
        assert torch.equal(a, b)


@needs_gemv
@pytest.mark.parametrize("generation", ["x060", "x052", "x040"])
def test_older_generations_decode_by_input_within_rounding(checkpoint_factory, monkeypatch, generation):
    """RWKV-4, 5 and 6 value matrices take the by-input layout too, multiplied through the Linear: fp32
    prefill and decode steps within 1e-5 of the plain layout."""
    monkeypatch.setattr(linear, "BYIN_MIN_BYTES", 0)
    path = checkpoint_factory(n_layer=2, n_embd=128, vocab_size=512, generation=generation)
    for a, b in zip(*_older_generation_runs(path, "cpu fp32", ByInputLinear, monkeypatch), strict=True):
        assert rel_err(a, b) <= 1e-5
