"""The training code of the built-in model: its network equals the official runtime, its hand-written
backward pass equals autograd, its corpus keeps the held-out modules out, and a few steps of the real
script make a checkpoint both runtimes load (the CI smoke test of the one-hour recipe)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import rel_err

import rwkv_hub
from rwkv_hub.core.synth import random_state_dict
from rwkv_hub.core.wkv import wkv7_steps as wkv7_torch
from rwkv_hub.training import corpus, wkv_autograd
from rwkv_hub.training.evaluate import first_statement_parses
from rwkv_hub.training.network import Network, forward, init_state_dict


def test_network_logits_equal_the_official_package(tmp_path, official_factory):
    sd = random_state_dict(n_layer=2, n_embd=128, vocab_size=256, head_size=32, dtype=torch.float32, seed=5)
    path = tmp_path / "net.pth"
    torch.save(sd, path)
    tokens = torch.randint(0, 256, (1, 48), generator=torch.Generator().manual_seed(1))
    expected, _ = official_factory(path).model.forward(tokens[0].tolist(), None, full_output=True)
    with torch.no_grad():
        ours = forward(dict(sd), tokens, head_size=32)[0]
    assert rel_err(ours, expected) < 1e-5


@pytest.mark.skipif(not wkv_autograd.native_available(), reason="no C compiler")
def test_native_wkv_gradients_equal_autograd_of_the_pytorch_loop():
    g = torch.Generator().manual_seed(0)
    b, t, h, n = 2, 37, 3, 16  # 37 steps: two whole 16-step chunks and a partial one

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    kk = torch.nn.functional.normalize(rand(b, t, h, n), dim=-1)
    inputs = [rand(b, t, h, n), torch.rand(b, t, h, n, generator=g) * 0.5 + 0.5, rand(b, t, h, n), rand(b, t, h, n)]
    inputs += [-kk, kk * torch.rand(b, t, h, n, generator=g)]
    ours = [x.clone().requires_grad_() for x in inputs]
    ref = [x.clone().requires_grad_() for x in inputs]
    dy = rand(b, t, h, n)
    y = wkv_autograd.wkv(*ours)
    y.backward(dy)
    y_ref = wkv7_torch(torch.zeros(b, h, n, n), *ref)[0]
    y_ref.backward(dy)
    assert rel_err(y, y_ref) < 1e-5
    for name, x, r in zip("rwkvab", ours, ref, strict=True):
        assert rel_err(x.grad, r.grad) < 1e-5, name


def test_a_training_step_lowers_the_loss():
    net = Network(init_state_dict(2, 64, 256, 32, seed=0), head_size=32)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    batch = torch.tensor([list(b"def f(x):\n    return x + 1\n" * 2)[:40]] * 2)
    losses = []
    for _ in range(8):
        logits = net(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


def test_held_out_modules_never_reach_the_training_files():
    names = {p.relative_to(corpus.stdlib_dir()).as_posix() for p in corpus.training_files()}
    held = {f"{m}.py" for m in corpus.HELD_OUT}
    assert len(corpus.held_out_files()) == len(corpus.HELD_OUT)
    assert not names & held
    assert not any("/test/" in f"/{n}" or n.startswith("test/") for n in names)
    assert "json/decoder.py" in names


def test_chat_and_instruction_samples_use_the_built_in_layouts():
    item = corpus.Documented("m", "f", "function", "(x)", "Return x.", "def f(x):\n    return x")
    rng = random.Random(0)
    turn = corpus.chat_turn(item, rng)
    assert turn.startswith("User: ") and "\n\nAssistant: Return x.\n\n" in turn and turn.endswith("\n\n")
    pair = corpus.instruction_pair(item, rng)
    assert pair.startswith("Instruction: ") and "\n\nInput: def f(x):" in pair and "\n\nResponse: " in pair


def test_summary_is_the_first_paragraph_on_one_line():
    assert corpus.summary("Do a thing\n  quickly.\n\nMore text.") == "Do a thing quickly."
    long = "word " * 200
    assert len(corpus.summary(long)) <= corpus.MAX_ANSWER + 3


def test_first_statement_check():
    prompt = 'def f(x):\n    """Add one."""\n'
    assert first_statement_parses(prompt, "    return x + 1\n    garbage (((\n")
    assert first_statement_parses(prompt, "    if x:\n        return 1\n")
    assert not first_statement_parses(prompt, "    return (x +\n")
    assert not first_statement_parses(prompt, "    # only a comment\n")
    assert not first_statement_parses(prompt, "  }}} nonsense\n")


def test_training_script_smoke_run(tmp_path, official_factory):
    out = tmp_path / "demo.pth"
    cmd = [sys.executable, "-m", "rwkv_hub.training", "--out", str(out), "--steps", "3", "--layers", "2"]
    cmd += ["--width", "64", "--ctx", "32", "--batch", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "step 2:" in done.stdout
    assert out.with_suffix(".tokenizer").read_text().strip() == "bytes"
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["recipe"]["steps"] == 3 and record["held_out"] == list(corpus.HELD_OUT)
    model = rwkv_hub.load(out, "cpu fp32")
    assert model.tokenizer.name == "bytes"
    ids = list(b"import os\n")
    ours, _ = model.forward(ids)
    theirs, _ = official_factory(out).forward(ids)
    assert rel_err(ours, theirs) < 1e-4


def test_training_script_rejects_bad_arguments(tmp_path):
    cmd = [sys.executable, "-m", "rwkv_hub.training", "--out", str(tmp_path / "x.pth"), "--width", "100"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "multiple of 64" in done.stderr and "Traceback" not in done.stderr
    assert not Path(tmp_path / "x.pth").exists()
