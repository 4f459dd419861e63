"""The feed-forward value matrix stored by pairs of inputs (PairedInt8Linear, rwkv_gemv_i8p in gemv.c): the
same bits as the plain int8 layout on every path, and chosen at load only where a layer's inputs are mostly
zero (core/sparse_ffn.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import random_tokens

import rwkv_hub
from rwkv_hub.core import linear, sparse_ffn
from rwkv_hub.core.builtin import builtin_model_path
from rwkv_hub.core.linear import INT8_KERNEL_MAX_ROWS, NativeInt8Linear, PairedInt8Linear
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
    assert paired.paired_ffn_layers == [0, 1, 2] and plain.paired_ffn_layers == []
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
    assert builtin.paired_ffn_layers == list(range(builtin.spec.n_layer))
    random = rwkv_hub.load(checkpoint_factory(**SHAPE), strategy="cpu bf16i8")
    fractions = sparse_ffn.zero_fractions(random)
    assert all(0.3 < f < 0.7 for f in fractions), fractions
    assert random.paired_ffn_layers == []
    shifted = rwkv_hub.load(
        write_random_checkpoint(tmp_path / "s.pth", **SHAPE, ffn_zero_share=0.9), strategy="cpu bf16i8"
    )
    fractions = sparse_ffn.zero_fractions(shifted)
    assert all(0.85 < f < 0.95 for f in fractions), fractions
    assert shifted.paired_ffn_layers == [0, 1, 2]


@needs_gemv
def test_other_strategies_keep_their_layout(checkpoint_factory):
    model = rwkv_hub.load(checkpoint_factory(**SHAPE), strategy="cpu fp32")
    assert not sparse_ffn.pairing_applies(model)
    assert model.paired_ffn_layers == []


@needs_gemv
@pytest.mark.skipif(not VNNI, reason="the paired layout is used only on CPUs with AVX-512 VNNI")
def test_a_failed_measurement_keeps_the_plain_layout(checkpoint_factory, monkeypatch, caplog):
    """Running out of memory in the calibration prompt must not fail the load: the plain layout stays."""

    def fail(model):
        raise RuntimeError("not enough memory")

    monkeypatch.setattr(sparse_ffn, "zero_fractions", fail)
    monkeypatch.setattr(sparse_ffn, "SPARSE_MIN", 0.0)
    model = rwkv_hub.load(checkpoint_factory(**SHAPE), strategy="cpu bf16i8")
    assert model.paired_ffn_layers == []
    assert not any(isinstance(b.ffn_value, PairedInt8Linear) for b in model.blocks)
    assert all(isinstance(b.ffn_value, NativeInt8Linear) for b in model.blocks)  # AmxInt8Linear is one
    assert "keeping the plain int8 layout" in caplog.text


@needs_gemv
@pytest.mark.skipif(not VNNI, reason="the paired layout is used only on CPUs with AVX-512 VNNI")
@pytest.mark.parametrize("generation", ["x060", "x052", "x040"])
def test_older_generations_decode_the_same_bits_paired(checkpoint_factory, monkeypatch, generation):
    """RWKV-4, 5 and 6 feed-forwards square a relu too, and their value matrices are paired the same way;
    their decode steps go through the Linear (no one-call layer): equal logits with either layout."""
    path = checkpoint_factory(n_layer=2, n_embd=128, vocab_size=512, generation=generation)
    runs = []
    for share in (0.0, 1.01):
        monkeypatch.setattr(sparse_ffn, "SPARSE_MIN", share)
        model = rwkv_hub.load(path, strategy="cpu bf16i8")
        assert model.paired_ffn_layers == ([0, 1] if share == 0.0 else [])
        logits, state = model.forward(random_tokens(9, 512, seed=3), None)
        run = [logits]
        for step in range(3):
            logits, state = model.forward([step + 5], state)
            run.append(logits)
        runs.append(run)
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)
