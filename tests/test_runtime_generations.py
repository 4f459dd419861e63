"""RWKV-6, RWKV-5.2/5.1/5.0 and RWKV-4 in the batched runtime compute what BlinkDL's `rwkv` package computes.

conftest.py imports the official package with RWKV_V7_ON=1, which makes `rwkv.model.RWKV` the RWKV-7-only
class, so the v4-v6 reference runs in a subprocess without it (and without JIT or CUDA). The reference
reads the same bf16 file cast to fp32: the official loader applies the embedding's layer norm in the
file's dtype (bf16, an error of ~3e-3), while rwkv-hub does it in fp32 whatever the file holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import random_tokens, record_figure, rel_err

import rwkv_hub
from rwkv_hub.core import rwkv4, rwkv56
from rwkv_hub.core.state import State, StateShape
from rwkv_hub.core.synth import random_state_dict, write_random_checkpoint

TOL = 1e-4  # against the official package at "cpu fp32"
SELF_TOL = 1e-5  # the same computation in another batch layout: only float rounding differs
LOW_PRECISION_TOL = {"cpu bf16": 0.05, "cpu bf16i8": 0.2, "cpu fp32i8": 0.2}
VOCAB = 1000
SHAPES = {"L2-C128": dict(n_layer=2, n_embd=128), "L3-C256": dict(n_layer=3, n_embd=256)}
GENERATIONS = ("x060", "x052", "x051", "x050", "x040")
PREFILL = random_tokens(48, VOCAB, seed=1)
DECODE = random_tokens(8, VOCAB, seed=2)

# Runs each scenario (a list of token lists fed in turn from an empty state) in the official package and
# saves, per scenario, the logits after every call and the final state.
REFERENCE = """
import json, sys, torch
torch.set_num_threads(1)
from rwkv.model import RWKV
job = json.loads(sys.argv[1])
sd = torch.load(job["path"], map_location="cpu", weights_only=True)
torch.save({k: v.float() for k, v in sd.items()}, job["fp32"])
model = RWKV(job["fp32"], "cpu fp32", verbose=False)
out = []
for calls in job["scenarios"]:
    state, logits = None, []
    for toks in calls:
        y, state = model.forward(toks, state)
        logits.append(y.float().clone())
    out.append((logits, [t.clone() for t in state]))
torch.save(out, job["out"])
"""

_worst = {"err": 0.0}


def check(ours: torch.Tensor, ref: torch.Tensor, tol: float = TOL, what: str = "logits") -> float:
    err = rel_err(ours, ref)
    if tol == TOL and _worst["err"] < err <= tol:
        _worst["err"] = err
        record_figure("x040-x060 fp32 vs official: max relative error", err)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"
    return err


def official(path: Path, scenarios: list[list[list[int]]]) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """The official package's logits and final state for each scenario, run in a clean subprocess."""
    job = {"path": str(path), "fp32": str(path.with_name(path.stem + "-fp32.pth")), "scenarios": scenarios}
    job["out"] = str(path.with_name(path.stem + "-reference.pt"))
    env = {k: v for k, v in os.environ.items() if k != "RWKV_V7_ON"}
    env.update(RWKV_JIT_ON="0", RWKV_CUDA_ON="0")
    subprocess.run([sys.executable, "-c", REFERENCE, json.dumps(job)], env=env, check=True, timeout=300)
    return torch.load(job["out"], weights_only=True)


@pytest.fixture(scope="module", params=[(g, s) for g in GENERATIONS for s in SHAPES], ids=lambda p: f"{p[0]}-{p[1]}")
def case(request, tmp_path_factory):
    """(model at cpu fp32, checkpoint path, official results of [prefill + decode steps, one token])."""
    gen, shape = request.param
    path = tmp_path_factory.mktemp("v56") / f"{gen}-{shape}.pth"
    write_random_checkpoint(path, vocab_size=VOCAB, generation=gen, **SHAPES[shape])
    ref = official(path, [[PREFILL, *([t] for t in DECODE)], [[7]]])
    return rwkv_hub.load(path, "cpu fp32"), path, ref


def test_generation_is_detected(case) -> None:
    model, path, _ = case
    assert model.spec.generation == path.stem.split("-")[0]
    assert model.state_shape.generation == model.spec.generation
    assert model.spec.vocab_size == VOCAB
    assert model.spec.head_size == (model.spec.n_embd if model.spec.generation == "x040" else 64)


def test_prefill_and_every_decode_step_match_official(case) -> None:
    model, _, ref = case
    want, _ = ref[0]
    ours, state = model.forward(PREFILL)
    check(ours, want[0], what="prefill")
    for step, tok in enumerate(DECODE):
        ours, state = model.forward(tok, state)
        check(ours, want[step + 1], what=f"decode step {step}")


def test_first_token_from_empty_state_matches_official(case) -> None:
    model, _, ref = case
    ours, _ = model.forward(7)
    check(ours, ref[1][0][0])


def test_state_matches_official_state(case) -> None:
    """Token shifts equal; the WKV matrices are the official ones transposed (ours are [value, key]); RWKV-4's
    a, b, p rows are the official package's aa, bb, pp."""
    model, _, ref = case
    _, state = model.forward([*PREFILL, *DECODE])
    want = ref[0][1]
    per = 5 if model.spec.generation == "x040" else 3
    for i in range(model.spec.n_layer):
        theirs = want[per * i : per * (i + 1)]
        check(state.att_x[i][0], theirs[0], what=f"layer {i} att_x")
        wkv = torch.stack(theirs[1:4]) if per == 5 else theirs[1].transpose(-1, -2)
        check(state.wkv[i][0], wkv, what=f"layer {i} wkv")
        check(state.ffn_x[i][0], theirs[-1], what=f"layer {i} ffn_x")


def test_batch_rows_equal_single_runs(case) -> None:
    model, _, _ = case
    seqs = [random_tokens(n, VOCAB, seed=10 + n) for n in (13, 1, 30)]
    batched, states = model.forward_batch(seqs, [model.new_state() for _ in seqs])
    nxt, _ = model.forward_batch([[5], [6, 7], [8]], states)
    for b, toks in enumerate(seqs):
        alone, st = model.forward(toks)
        check(batched[b], alone, tol=SELF_TOL, what=f"row {b}")
        alone, _ = model.forward([[5], [6, 7], [8]][b], st)
        check(nxt[b], alone, tol=SELF_TOL, what=f"row {b}, next call")


def test_saved_state_continues_identically(case, tmp_path) -> None:
    model, _, _ = case
    _, state = model.forward(PREFILL[:20])
    state.save(tmp_path / "s.safetensors")
    loaded = model.load_state(tmp_path / "s.safetensors")
    a, _ = model.forward(PREFILL[20:], state)
    b, _ = model.forward(PREFILL[20:], loaded)
    assert torch.equal(a, b)


def test_state_of_another_generation_is_refused(case) -> None:
    model, _, _ = case
    s = model.spec
    other = StateShape("x070" if s.generation != "x070" else "x060", s.n_layer, s.n_embd, s.n_head, s.head_size)
    with pytest.raises(rwkv_hub.StateError):
        model.forward([1], State.zeros(other))


@pytest.mark.parametrize("strategy", list(LOW_PRECISION_TOL))
def test_low_precision_strategies_stay_close_to_fp32(case, strategy) -> None:
    model, path, _ = case
    if model.spec.n_layer != 2:
        pytest.skip("one shape is enough for the loose bounds")
    low = rwkv_hub.load(path, strategy)
    want, state = model.forward(PREFILL)
    ours, low_state = low.forward(PREFILL)
    err = check(ours, want, tol=LOW_PRECISION_TOL[strategy], what=strategy)
    record_figure(f"{model.spec.generation} {strategy} vs fp32: relative error", err)
    ours, _ = low.forward(DECODE[0], low_state)
    want, _ = model.forward(DECODE[0], state)
    check(ours, want, tol=LOW_PRECISION_TOL[strategy], what=f"{strategy} decode")


def test_fp16_rescaling_leaves_results_unchanged(case, monkeypatch) -> None:
    """The power-of-two scaling applied under fp16 strategies, forced on at fp32 every layer: no effect."""
    model, path, _ = case
    module = rwkv4 if model.spec.generation == "x040" else rwkv56
    convert = module.convert_block
    monkeypatch.setattr(rwkv56, "RESCALE_LAYER", 1)
    monkeypatch.setattr(module, "convert_block", lambda *a: convert(*a[:-1], True))
    scaled = rwkv_hub.load(path, "cpu fp32")
    assert scaled.blocks[-1].out_scale == 2.0 ** (model.spec.n_layer - 1)
    check(scaled.forward(PREFILL)[0], model.forward(PREFILL)[0], tol=SELF_TOL, what="rescaled")


# --- checkpoints that must be refused, with the reason ------------------------------------------------


def save(sd: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save(sd, path)
    return path


def load_error(path: Path) -> str:
    with pytest.raises(rwkv_hub.CheckpointError) as info:
        rwkv_hub.load(path)
    return str(info.value)


def test_missing_x060_tensor_is_named(tmp_path) -> None:
    sd = random_state_dict(n_layer=2, n_embd=128, vocab_size=VOCAB, generation="x060")
    del sd["blocks.1.att.time_decay_w2"]
    msg = load_error(save(sd, tmp_path / "partial.pth"))
    assert "RWKV-6" in msg and "blocks.1.att.time_decay_w2" in msg


def test_wrong_x052_shape_is_named(tmp_path) -> None:
    sd = random_state_dict(n_layer=2, n_embd=128, vocab_size=VOCAB, generation="x052")
    sd["blocks.1.ffn.receptance.weight"] = torch.zeros(128, 64)
    assert "blocks.1.ffn.receptance.weight" in load_error(save(sd, tmp_path / "bad.pth"))


@pytest.mark.parametrize("gen", ["x051", "x050"])
def test_a_v5_file_that_stores_the_bonus_itself_runs_as_the_official_package_runs_it(tmp_path, gen) -> None:
    """RWKV-5.0/5.1 files keep the log of the bonus (`time_first`); one holding `time_faaaa` (the bonus) is
    read as the official package reads it."""
    sd = random_state_dict(n_layer=2, n_embd=128, vocab_size=VOCAB, generation=gen)
    for i in range(2):
        sd[f"blocks.{i}.att.time_faaaa"] = torch.exp(sd.pop(f"blocks.{i}.att.time_first").float()) * 0.5
    path = save(sd, tmp_path / f"{gen}-faaaa.pth")
    model = rwkv_hub.load(path, "cpu fp32")
    assert model.spec.generation == gen
    want = official(path, [[PREFILL]])[0][0][0]
    check(model.forward(PREFILL)[0], want, what="prefill")


def test_missing_x040_and_x051_tensors_are_named(tmp_path) -> None:
    sd = random_state_dict(n_layer=2, n_embd=128, vocab_size=VOCAB, generation="x040")
    del sd["blocks.1.att.time_first"]
    msg = load_error(save(sd, tmp_path / "v4.pth"))
    assert "RWKV-4" in msg and "blocks.1.att.time_first" in msg
    sd = random_state_dict(n_layer=2, n_embd=128, vocab_size=VOCAB, generation="x051")
    sd["blocks.1.att.time_decay"] = torch.zeros(3)
    assert "blocks.1.att.time_decay" in load_error(save(sd, tmp_path / "v51.pth"))


def test_rwkv4_has_no_state_tuning(tmp_path) -> None:
    from rwkv_hub.core.sessions import load_tuned_state

    torch.save({"blocks.0.att.time_state": torch.zeros(3, 128)}, tmp_path / "persona.pth")
    with pytest.raises(rwkv_hub.StateError, match="RWKV-4"):
        load_tuned_state(tmp_path / "persona.pth", StateShape("x040", 1, 128, 1, 128))


def test_chunked_recurrence_equals_the_token_loop(monkeypatch) -> None:
    """Mixed decay strengths (w from ~1 down to exp(-400)), a length that is not a multiple of the chunk.

    Both are held to the float64 loop: fp32 rounding alone stays near 1e-7, while summing the exponents
    as differences of prefix sums lost up to 1.6e-5 where a strong decay cancelled against itself."""
    g = torch.Generator().manual_seed(0)
    r, k, v = (torch.randn(2, 3 * rwkv56.CHUNK + 5, 2, 64, generator=g) for _ in range(3))
    log_w = -torch.exp(torch.rand(r.shape, generator=g) * 12 - 6)
    s0 = torch.randn(2, 2, 64, 64, generator=g)
    chunked = rwkv56.wkv56(s0, r, log_w, k, v)
    monkeypatch.setattr(rwkv56, "CHUNK", 10**9)
    looped = rwkv56.wkv56(s0, r, log_w, k, v)
    exact = rwkv56.wkv56(*(t.double() for t in (s0, r, log_w, k, v)))
    for ours in (chunked, looped):
        check(ours[0], exact[0], tol=2e-6, what="outputs")
        check(ours[1], exact[1], tol=2e-6, what="state")


def test_a_v6_state_tuned_file_starts_where_the_official_package_starts(tmp_path) -> None:
    """A state-tuning file (`blocks.{i}.att.time_state`, as RWKV-PEFT writes it) read by `load_tuned_state`
    gives the logits the official package gives with the same tensors merged into the model."""
    from rwkv_hub.core.sessions import load_tuned_state

    path = tmp_path / "x060.pth"
    write_random_checkpoint(path, vocab_size=VOCAB, generation="x060", n_layer=2, n_embd=128)
    model = rwkv_hub.load(path, "cpu fp32")
    g = torch.Generator().manual_seed(5)
    shape = (model.spec.n_head, model.spec.head_size, model.spec.head_size)
    tuned = {f"blocks.{i}.att.time_state": torch.randn(*shape, generator=g) * 0.5 for i in range(2)}
    torch.save(tuned, tmp_path / "persona.pth")
    merged = tmp_path / "x060-tuned.pth"
    torch.save(torch.load(path, weights_only=True) | tuned, merged)
    want = official(merged, [[PREFILL[:8]]])[0][0][0]
    initial = load_tuned_state(tmp_path / "persona.pth", model.state_shape)
    ours, _ = model.forward(PREFILL[:8], initial)
    check(ours, want, what="logits after a tuned start")
    plain, _ = model.forward(PREFILL[:8])
    assert rel_err(plain, want) > 10 * TOL  # the tuned state made a difference the test can see
