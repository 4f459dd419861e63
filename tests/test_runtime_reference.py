"""rwkv-hub's fp32 runtime computes what BlinkDL's official `rwkv` package computes, on the same files.

Every comparison uses max|ours - ref| / max|ref| over a logits vector (or a state tensor), bound 1e-4.
Checkpoints are random-weight files of the official layout, of several depths and widths.
"""

from __future__ import annotations

import pytest
import torch
from conftest import needs_cuda, random_tokens, record_figure, rel_err

import rwkv_hub

TOL = 1e-4  # the acceptance bound against the official package at "cpu fp32"
SELF_TOL = 1e-5  # the same computation in a different batch or chunk layout: only float rounding differs

SHAPES = {
    "L2-C128": dict(n_layer=2, n_embd=128, vocab_size=512, head_size=64),
    "L3-C256": dict(n_layer=3, n_embd=256, vocab_size=1000, head_size=64),
    "L1-C64-N32": dict(n_layer=1, n_embd=64, vocab_size=300, head_size=32),
}
SMALL = SHAPES["L2-C128"]

# Worst relative error seen against the official package, over the passing checks of this module.
_worst = {"err": 0.0}


def check(ours: torch.Tensor, ref: torch.Tensor, tol: float = TOL, what: str = "logits") -> float:
    err = rel_err(ours, ref)
    if tol == TOL and _worst["err"] < err <= tol:  # the figure is the worst passing error; failures report their own
        _worst["err"] = err
        record_figure("fp32 vs official: max relative error", err)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"
    return err


@pytest.fixture(scope="module", params=list(SHAPES))
def pair(request, checkpoint_factory, official_factory, model_factory):
    """(our model at cpu fp32, the official model) on one random checkpoint."""
    path = checkpoint_factory(**SHAPES[request.param])
    return model_factory(path), official_factory(path)


def official_state(state: rwkv_hub.State) -> list[torch.Tensor]:
    """Our state (batch 1) in the official package's layout: per layer [att_x (C), wkv (H, N, N), ffn_x (C)]."""
    assert state.batch_size == 1
    t = state.tensors()
    n_layer = len(t) // 3
    return [t[f"{i}.{part}"][0] for i in range(n_layer) for part in ("att_x", "wkv", "ffn_x")]


# --- one sequence -------------------------------------------------------------------------------------


def test_prefill_logits_match_official(pair) -> None:
    model, ref = pair
    toks = random_tokens(48, model.spec.vocab_size, seed=1)
    ours, _ = model.forward(toks, model.new_state())
    want, _ = ref.forward(toks)
    assert ours.dtype == torch.float32
    assert ours.shape == (model.spec.vocab_size,)
    check(ours, want)


def test_first_token_from_empty_state_matches_official(pair) -> None:
    model, ref = pair
    ours, _ = model.forward(7, None)
    want, _ = ref.forward([7])
    check(ours, want)


def test_every_decode_step_matches_official(pair) -> None:
    model, ref = pair
    toks = random_tokens(32, model.spec.vocab_size, seed=2)
    ours, state = model.forward(toks, None)
    want, ref_state = ref.forward(toks)
    check(ours, want, what="prefill")
    for step in range(10):
        tok = int(want.argmax())  # greedy on the reference, the same token fed to both
        ours, state = model.forward([tok], state)
        want, ref_state = ref.forward([tok], ref_state)
        check(ours, want, what=f"decode step {step}")


def test_decode_with_int_token_equals_list_of_one(pair) -> None:
    model, _ = pair
    _, state = model.forward(random_tokens(9, model.spec.vocab_size, seed=3), None)
    a, sa = model.forward(5, state)
    b, sb = model.forward([5], state)
    assert torch.equal(a, b)
    c, _ = model.forward(6, sa)
    d, _ = model.forward(6, sb)
    assert torch.equal(c, d)


def test_state_tensors_match_official_state(pair) -> None:
    """Not just the logits: each layer's token-shift rows and WKV matrices equal the official state."""
    model, ref = pair
    toks = random_tokens(40, model.spec.vocab_size, seed=4)
    _, state = model.forward(toks, None)
    _, ref_state = ref.forward(toks)
    for tok in (3, 1, 4):
        _, state = model.forward([tok], state)
        _, ref_state = ref.forward([tok], ref_state)
    ours = official_state(state)
    assert len(ours) == len(ref_state) == 3 * model.spec.n_layer
    for i, (a, b) in enumerate(zip(ours, ref_state, strict=True)):
        assert a.dtype == torch.float32
        check(a, b, what=f"layer {i // 3} state part {('att_x', 'wkv', 'ffn_x')[i % 3]}")


def test_continuing_from_official_state_matches_official(pair) -> None:
    """Our decode step from a state the official package produced: the two state layouts mean the same."""
    model, ref = pair
    toks = random_tokens(20, model.spec.vocab_size, seed=5)
    _, ref_state = ref.forward(toks)
    _, state = model.forward(toks, None)
    parts = state.tensors()
    names = [f"{i}.{p}" for i in range(model.spec.n_layer) for p in ("att_x", "wkv", "ffn_x")]
    with torch.inference_mode():  # the runtime's tensors are inference tensors; `state` is ours alone here
        for name, t in zip(names, ref_state, strict=True):
            parts[name].copy_(t.view_as(parts[name]))
    ours, _ = model.forward([11, 12], state)
    want, _ = ref.forward([11, 12], ref_state)
    check(ours, want)


def test_prefill_in_pieces_equals_prefill_at_once(pair) -> None:
    model, ref = pair
    toks = random_tokens(45, model.spec.vocab_size, seed=6)
    whole, _ = model.forward(toks, None)
    _, s = model.forward(toks[:17], None)
    _, s = model.forward(toks[17:18], s)
    pieces, _ = model.forward(toks[18:], s)
    check(pieces, whole, tol=SELF_TOL, what="17 + 1 + 27 tokens vs 45 at once")
    want, _ = ref.forward(toks)
    check(pieces, want)


def test_prefill_longer_than_chunk_matches_official(pair) -> None:
    model, ref = pair
    n = 2 * model.prefill_chunk + 88  # spans two chunk boundaries, ending mid-chunk
    toks = random_tokens(n, model.spec.vocab_size, seed=7)
    ours, state = model.forward(toks, None)
    want, ref_state = ref.forward(toks)
    check(ours, want, what=f"{n}-token prefill")
    for tok in (1, 2, 3):
        ours, state = model.forward([tok], state)
        want, ref_state = ref.forward([tok], ref_state)
        check(ours, want, what=f"decode after a {n}-token prefill")


def test_forward_every_gives_every_position_of_the_official_full_output(pair) -> None:
    model, ref = pair
    toks = random_tokens(model.prefill_chunk + 40, model.spec.vocab_size, seed=8)  # crosses a chunk boundary
    start, _ = model.forward(toks[:5], None)
    ours, state = model.forward_every(toks[5:], model.forward(toks[:5], None)[1])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        want, _ = ref.model.forward(toks, None, full_output=True)
    finally:
        torch.set_num_threads(threads)
    assert ours.shape == (len(toks) - 5, model.spec.vocab_size)
    check(ours, want[5:], what="every position")
    check(start, want[4], what="position before the continued part")
    last, _ = model.forward(toks, None)
    assert rel_err(ours[-1], last) < SELF_TOL
    nxt, _ = model.forward([1], state)
    nxt_ref, _ = model.forward(toks + [1], None)
    assert rel_err(nxt, nxt_ref) < SELF_TOL


# --- checkpoint variants ------------------------------------------------------------------------------


def test_safetensors_checkpoint_gives_the_same_logits_as_pth(checkpoint_factory, model_factory, official_factory):
    pth = checkpoint_factory(**SMALL, fmt="pth")
    st = checkpoint_factory(**SMALL, fmt="safetensors")
    a, b = model_factory(pth), model_factory(st)
    assert a.spec == b.spec
    toks = random_tokens(30, SMALL["vocab_size"], seed=8)
    la, sa = a.forward(toks, None)
    lb, sb = b.forward(toks, None)
    assert torch.equal(la, lb), f"differ by {(la - lb).abs().max().item()}"
    la, _ = a.forward([9], sa)
    lb, _ = b.forward([9], sb)
    assert torch.equal(la, lb)
    want, _ = official_factory(pth).forward(toks + [9])
    check(lb, want)


def test_checkpoint_with_layer0_value_mix_matches_official(checkpoint_factory, model_factory, official_factory):
    """Some exported files carry unused v0/v1/v2 tensors in layer 0; they load and are ignored, as officially."""
    path = checkpoint_factory(**SMALL, layer0_v=True)
    model, ref = model_factory(path), official_factory(path)
    toks = random_tokens(25, SMALL["vocab_size"], seed=9)
    ours, state = model.forward(toks, None)
    want, ref_state = ref.forward(toks)
    check(ours, want)
    ours, _ = model.forward([4], state)
    want, _ = ref.forward([4], ref_state)
    check(ours, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32-file", "fp16-file"])
def test_checkpoint_stored_in_other_dtypes_matches_official(dtype, checkpoint_factory, model_factory, official_factory):
    path = checkpoint_factory(**SMALL, dtype=dtype, seed=3)
    toks = random_tokens(20, SMALL["vocab_size"], seed=10)
    ours, _ = model_factory(path).forward(toks, None)
    want, _ = official_factory(path).forward(toks)
    check(ours, want)


@pytest.mark.parametrize(("n_embd", "head_size"), [(64, 16), (256, 128), (512, 512)])
def test_other_head_sizes_match_official_or_are_refused(checkpoint_factory, official_factory, n_embd, head_size):
    """Released RWKV-7 models use head size 64; any other must either compute correctly or be refused clearly."""
    path = checkpoint_factory(n_layer=1, n_embd=n_embd, vocab_size=300, head_size=head_size)
    try:
        model = rwkv_hub.load(path)
    except rwkv_hub.CheckpointError as e:
        assert str(head_size) in str(e), str(e)
        return
    toks = random_tokens(20, 300, seed=11)
    ours, state = model.forward(toks, None)
    want, ref_state = official_factory(path).forward(toks)
    check(ours, want, what=f"head size {head_size}, prefill")
    ours, _ = model.forward([1], state)
    want, _ = official_factory(path).forward([1], ref_state)
    check(ours, want, what=f"head size {head_size}, decode")


def test_pytorch_wkv_path_matches_official(pair, monkeypatch) -> None:
    """The PyTorch recurrence (GPUs, CPUs without a C compiler) against the reference, with the C kernel off."""
    from rwkv_hub.core import decode7, rwkv7

    record_figure("CPU WKV kernel in the other tests", "native C" if rwkv7.load_decode7() else "PyTorch")
    monkeypatch.setattr(rwkv7, "load_decode7", lambda: None)
    monkeypatch.setattr(decode7, "available", lambda device, head_size: False)
    model, ref = pair
    v = model.spec.vocab_size
    seqs = [random_tokens(n, v, seed=80 + n) for n in (300, 1, 17)]
    logits, states = model.forward_batch(seqs, [model.new_state() for _ in seqs])
    refs = [ref.forward(s) for s in seqs]
    for b in range(3):
        check(logits[b], refs[b][0], what=f"row {b}")
    logits, _ = model.forward_batch([[5], [6], [7]], states)
    for b in range(3):
        want, _ = ref.forward([5 + b], refs[b][1])
        check(logits[b], want, what=f"decode row {b}")


# --- batches ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lengths", [(5, 1, 17), (8, 8, 8), (1, 1), (3, 3, 1, 2)], ids=str)
def test_forward_batch_rows_equal_each_sequence_run_alone(pair, lengths) -> None:
    model, ref = pair
    v, n = model.spec.vocab_size, len(lengths)
    seqs = [random_tokens(k, v, seed=20 + 7 * b + k) for b, k in enumerate(lengths)]
    logits, states = model.forward_batch(seqs, [model.new_state() for _ in seqs])
    assert logits.shape == (n, v) and logits.dtype == torch.float32
    assert isinstance(states, list) and len(states) == n
    alone = [model.forward(s, None) for s in seqs]
    refs = [ref.forward(s) for s in seqs]
    for b in range(n):
        check(logits[b], alone[b][0], tol=SELF_TOL, what=f"row {b} vs alone")
        check(logits[b], refs[b][0], what=f"row {b} vs official")
    # Decode steps after that, one token per sequence, batched again.
    alone_states = [a[1] for a in alone]
    ref_states = [r[1] for r in refs]
    for step in range(3):
        toks = [[int(refs[b][0].argmax())] for b in range(n)]
        logits, states = model.forward_batch(toks, states)
        for b in range(n):
            lone, alone_states[b] = model.forward(toks[b], alone_states[b])
            refs[b] = ref.forward(toks[b], ref_states[b])
            ref_states[b] = refs[b][1]
            check(logits[b], lone, tol=SELF_TOL, what=f"step {step} row {b} vs alone")
            check(logits[b], refs[b][0], what=f"step {step} row {b} vs official")


def test_forward_batch_with_different_histories_and_lengths(pair) -> None:
    """Rows start from different states (one empty) and read different numbers of new tokens."""
    model, ref = pair
    v = model.spec.vocab_size
    prefixes = [random_tokens(n, v, seed=30 + n) for n in (12, 0, 3)]
    news = [random_tokens(n, v, seed=40 + n) for n in (1, 6, 9)]
    starts = [model.forward(p, None)[1] if p else model.new_state() for p in prefixes]
    logits, _ = model.forward_batch(news, starts)
    for b in range(3):
        want, _ = ref.forward(prefixes[b] + news[b])
        check(logits[b], want, what=f"row {b}")


def test_forward_batch_with_prompts_longer_than_a_chunk(checkpoint_factory, model_factory, official_factory):
    """Sequences finish in different chunks, so later chunks run on a subset of rows and merge back."""
    path = checkpoint_factory(**SMALL)
    model, ref = model_factory(path), official_factory(path)
    v = SMALL["vocab_size"]
    seqs = [random_tokens(n, v, seed=50 + n) for n in (600, 2, 300)]
    logits, states = model.forward_batch(seqs, [model.new_state() for _ in seqs])
    ref_states = []
    for b, s in enumerate(seqs):
        want, rs = ref.forward(s)
        ref_states.append(rs)
        check(logits[b], want, what=f"row {b} ({len(s)} tokens)")
    logits, _ = model.forward_batch([[1], [2], [3]], states)
    for b in range(3):
        want, _ = ref.forward([b + 1], ref_states[b])
        check(logits[b], want, what=f"decode row {b}")


def test_forward_batch_of_many_sequences(checkpoint_factory, model_factory, official_factory):
    """Enough sequences that one pass holds fewer than a chunk's tokens of each: rows still run independently."""
    path = checkpoint_factory(**SMALL)
    model, ref = model_factory(path), official_factory(path)
    v = SMALL["vocab_size"]
    g = torch.Generator().manual_seed(5)
    lengths = [1, 300, 2, 171, 64, 1, 230, 9, 120, 33, 256, 200, 3, 90, 17, 150, 1, 45, 70, 190]
    seqs = [torch.randint(0, v, (n,), generator=g).tolist() for n in lengths]
    starts = [model.forward([b % v], None)[1] for b in range(len(seqs))]
    logits, states = model.forward_batch(seqs, starts)
    nxt, _ = model.forward_batch([[b] for b in range(len(seqs))], states)
    for b, s in enumerate(seqs):
        alone, alone_state = model.forward(s, starts[b])
        check(logits[b], alone, tol=SELF_TOL, what=f"row {b} ({len(s)} tokens) vs alone")
        check(nxt[b], model.forward([b], alone_state)[0], tol=SELF_TOL, what=f"row {b} decode vs alone")
    for b in (1, 3, 10):
        want, _ = ref.forward([b % v] + seqs[b])
        check(logits[b], want, what=f"row {b} vs official")


def test_forward_batch_of_one_equals_forward(pair) -> None:
    model, _ = pair
    toks = random_tokens(13, model.spec.vocab_size, seed=60)
    a, _ = model.forward(toks, None)
    b, states = model.forward_batch([toks], [model.new_state()])
    assert b.shape == (1, model.spec.vocab_size) and len(states) == 1
    check(b[0], a, tol=SELF_TOL)


# --- bf16 ---------------------------------------------------------------------------------------------


def test_bf16_logits_are_close_to_fp32(checkpoint_factory, model_factory) -> None:
    worst, agree, total = 0.0, 0, 0
    for shape in SHAPES.values():
        path = checkpoint_factory(**shape)
        f32, b16 = model_factory(path, "cpu fp32"), model_factory(path, "cpu bf16")
        toks = random_tokens(48, shape["vocab_size"], seed=70)
        la, sa = f32.forward(toks, None)
        lb, sb = b16.forward(toks, None)
        for _ in range(11):
            assert lb.dtype == torch.float32
            worst = max(worst, rel_err(lb, la))
            agree += int(la.argmax() == lb.argmax())
            total += 1
            tok = int(la.argmax())
            la, sa = f32.forward([tok], sa)
            lb, sb = b16.forward([tok], sb)
    record_figure("bf16 vs fp32: max relative error", worst)
    record_figure("bf16 vs fp32: top-1 agreement", f"{agree}/{total}")
    assert worst <= 3e-2, f"bf16 relative error {worst:.3g}"
    assert agree >= 0.9 * total, f"top-1 agreement {agree}/{total}"


def test_bf16_batch_rows_agree_with_each_sequence_run_alone(checkpoint_factory, model_factory) -> None:
    model = model_factory(checkpoint_factory(**SMALL), "cpu bf16")
    v = SMALL["vocab_size"]
    seqs = [random_tokens(n, v, seed=90 + n) for n in (5, 1, 300, 17)]
    logits, states = model.forward_batch(seqs, [model.new_state() for _ in seqs])
    nxt, _ = model.forward_batch([[1], [2], [3], [4]], states)
    worst = 0.0
    for b, s in enumerate(seqs):
        alone, alone_state = model.forward(s, None)
        worst = max(worst, rel_err(logits[b], alone), rel_err(nxt[b], model.forward([b + 1], alone_state)[0]))
    record_figure("bf16: batch row vs run alone, max relative error", worst)
    assert worst <= 2e-2, f"bf16 batch row vs alone relative error {worst:.3g}"


# --- CUDA (skipped on machines without a GPU) -----------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize(("strategy", "tol"), [("cuda fp16", 3e-2), ("cuda bf16", 3e-2), ("cuda fp16i8", 0.15)])
def test_cuda_strategies_are_close_to_cpu_fp32(checkpoint_factory, model_factory, tmp_path, strategy, tol) -> None:
    path = checkpoint_factory(**SMALL)
    cpu, gpu = model_factory(path), model_factory(path, strategy)
    v = SMALL["vocab_size"]
    seqs = [random_tokens(n, v, seed=110 + n) for n in (5, 1, 300)]
    logits, states = gpu.forward_batch(seqs, [gpu.new_state() for _ in seqs])
    assert logits.dtype == torch.float32 and logits.shape == (3, v)
    nxt, _ = gpu.forward_batch([[1], [2], [3]], states)
    worst = 0.0
    for b, s in enumerate(seqs):
        alone, cpu_state = cpu.forward(s, None)
        worst = max(worst, rel_err(logits[b], alone), rel_err(nxt[b], cpu.forward([b + 1], cpu_state)[0]))
    record_figure(f"{strategy} vs cpu fp32: max relative error", worst)
    assert worst <= tol, f"{strategy}: relative error {worst:.3g} > {tol}"
    # A state made on the GPU is saved, and continues on the CPU.
    states[2].save(tmp_path / "gpu.state")
    moved = cpu.load_state(tmp_path / "gpu.state")
    ours, _ = cpu.forward([3], moved)
    want, _ = cpu.forward(seqs[2] + [3], None)
    assert rel_err(ours, want) <= tol
